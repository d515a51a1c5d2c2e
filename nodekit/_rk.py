"""nodekit's own adaptive Runge–Kutta engine for the common training solve.

`odeint` solves with Diffrax. For the case that dominates training — an explicit
adaptive 5(4) pair (`dopri5`, `tsit5`), outputs at `ts`, backpropagation through the
solver (`adjoint="recursive"`) or the continuous adjoint (`"backsolve"`, see
`_backsolve`) — this module does the same arithmetic in a leaner program:

- the forward solve is one `lax.while_loop` over steps, run without any automatic
  differentiation inside it; each accepted step stores its `(t, h)`, and its start
  state `y` in a ring of `S ~ sqrt(max_steps)` states, plus every `S`-th state;
- the gradient is a `jax.custom_vjp`: one reverse loop over the accepted steps, each
  re-forming the step's stages and taking their VJP once (Diffrax's checkpointed loop
  re-runs each step's body twice in the backward pass). States older than the ring
  are replayed from the nearest stored one along the stored step sizes, so a solve of
  at most `S` steps recomputes nothing and a longer one at most one forward pass. (A
  buffer of `max_steps` states, zeroed on every call, cost ~15 % of the spiral step at
  `max_steps=4096` and 70 % at 32768.)
- outputs at `ts` come from the pair's dense output (Dopri5's quartic through
  Shampine's midpoint, Tsitouras' quartic for Tsit5), formed as one small matrix
  product per step.

The gradient is that of the discretised solve with the step sizes held fixed — what
Diffrax computes too (its PID controller stops gradients through the error estimate).
Gradients with respect to `ts` are those of the exact solution (`dy(t_j)/dt_j =
f(t_j, y_j)`, and the continuous sensitivity for `ts[0]`), accurate to the tolerance.
The step-size controller is Diffrax's default PID (integral) rule with the same
constants, and the first step is chosen by Hairer's rule, so step counts match
Diffrax's to within a step or so.

The engine is chosen by `odeint(..., engine="auto")` (see `_odeint.engine_for`); the
training loop uses it by default (`solver.engine` in a config) and `engine="diffrax"`
opts out.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._errors import RESULT_NAMES


class Pair(NamedTuple):
    """An explicit embedded Runge–Kutta pair with FSAL and a dense output.

    `a` is the full (stages x stages) strictly lower-triangular matrix; `e` the error
    weights (`b - b_hat`); `dense[i, p]` the coefficient of theta**(p + 1) in the
    dense-output weight of stage `i`, so that `y(t + theta h) = y + h * sum_i
    w_i(theta) k_i`."""

    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    e: np.ndarray
    dense: np.ndarray
    error_order: int


def _pair(c, a_lower, b, e, dense: np.ndarray, error_order: int) -> Pair:
    s = len(b)
    a = np.zeros((s, s))
    for i, row in enumerate(a_lower):
        a[i + 1, : len(row)] = row
    return Pair(np.asarray(c, float), a, np.asarray(b, float), np.asarray(e, float), dense,
                error_order)


# Dormand & Prince (1980): the fifth-order solution `b` (also the last row of `a`: FSAL)
# and, for the error estimate, the embedded fourth-order weights `b_hat` that Diffrax and
# torchdiffeq use (not the paper's 5179/57600, ...: this estimate is 2/3 of that one), so
# step counts match theirs.
_DOPRI5_C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
_DOPRI5_B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
_DOPRI5_A = [
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    _DOPRI5_B[:6],
]
_DOPRI5_B_HAT = [1951 / 21600, 0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
_DOPRI5_E = np.subtract(_DOPRI5_B, _DOPRI5_B_HAT)

# Tsitouras (2011), Table 1 (the coefficients to double precision).
_TSIT5_C = [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1]
_TSIT5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
            -3.290069515436081, 2.324710524099774, 0]
_TSIT5_A = [
    [0.161],
    [-0.008480655492356989, 0.335480655492357],
    [2.8971530571054935, -6.359448489975075, 4.3622954328695815],
    [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
    [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383],
    _TSIT5_B[:6],
]
_TSIT5_E = [0.0017800110522257773, 0.0008164344596567463, -0.007880878010261994,
            0.1447110071732629, -0.5823571654525552, 0.45808210592918686,
            -0.015151515151515152]  # b - b_hat


def _dopri5_dense(b: np.ndarray) -> np.ndarray:
    """Shampine's dense output for Dopri5: the quartic through y0, y1, the field at
    both ends and the midpoint value `y0 + h * sum_i m_i k_i`."""
    m = np.array([6025192743 / 30085553152, 0, 51252292925 / 65400821598,
                  -2691868925 / 45128329728, 187940372067 / 1594534317056,
                  -1776094331 / 19743644256, 11237099 / 235043384]) / 2
    first, last = np.eye(7)[0], np.eye(7)[6]
    # p(theta) = y0 + sum_p C_p theta^p with C_1 = h f0 and C_2..C_4 fixed by
    # p(1) = y1, p'(1) = h f1, p(1/2) = y_mid; written per stage weight.
    c1 = first
    c2 = last - 4 * first - 5 * b + 16 * m
    c3 = 5 * first - 3 * last + 14 * b - 32 * m
    c4 = 2 * (last - first) - 8 * b + 16 * m
    return np.stack([c1, c2, c3, c4], axis=1)


def _tsit5_dense() -> np.ndarray:
    """Tsitouras' (2011) continuous extension of Tsit5, expanded into powers of theta."""
    P = np.polynomial.Polynomial
    x = P([0, 1])
    w = [
        -1.0530884977290216 * x * (x - 1.3299890189751412)
        * (x**2 - 1.4364028541716351 * x + 0.7139816917074209),
        0.1017 * x**2 * (x**2 - 2.1966568338249754 * x + 1.2949852507374631),
        2.490627285651252793 * x**2 * (x**2 - 2.38535645472061657 * x + 1.57803468208092486),
        -16.54810288924490272 * (x - 1.21712927295533244) * (x - 0.61620406037800089) * x**2,
        47.37952196281928122 * (x - 1.203071208372362603) * (x - 0.658047292653547382) * x**2,
        -34.87065786149660974 * (x - 1.2) * (x - 0.666666666666666667) * x**2,
        2.5 * (x - 1) * (x - 0.6) * x**2,
    ]
    return np.stack([np.pad(p.coef, (0, 5 - len(p.coef)))[1:] for p in w])


PAIRS: dict[str, Pair] = {
    "dopri5": _pair(_DOPRI5_C, _DOPRI5_A, _DOPRI5_B, _DOPRI5_E,
                    _dopri5_dense(np.asarray(_DOPRI5_B, float)), 5),
    "tsit5": _pair(_TSIT5_C, _TSIT5_A, _TSIT5_B, _TSIT5_E, _tsit5_dense(), 5),
}

_RESULT = {name: i for i, name in enumerate(RESULT_NAMES)}
SAFETY, FACTOR_MIN, FACTOR_MAX = 0.9, 0.2, 10.0


class EngineStats(NamedTuple):
    nfe: jax.Array
    num_steps: jax.Array
    num_accepted: jax.Array
    num_rejected: jax.Array
    result: jax.Array


# ------------------------------------------------------------------ one step


def _stages(f, pair: Pair, t, y, h, k0, params):
    """The field at every stage of one step from `(t, y)` (rows of the result), given
    the first stage `k0`."""
    ks = [k0]
    for i in range(1, len(pair.c)):
        yi = y + h * sum(float(pair.a[i, j]) * ks[j] for j in range(i) if pair.a[i, j] != 0)
        ks.append(f(t + float(pair.c[i]) * h, yi, params))
    return jnp.stack(ks)


def _dense_weights(pair: Pair, theta):
    """(J, stages) dense-output weights at the fractions `theta` (J,) of a step."""
    powers = jnp.stack([theta ** (p + 1) for p in range(pair.dense.shape[1])], axis=-1)
    return powers @ jnp.asarray(pair.dense.T, theta.dtype)


def _in_step(ts, t, h):
    """Which save times the step (t, t + h] holds."""
    return (ts > t) & (ts <= t + h)


def _rms(x):
    return jnp.sqrt(jnp.mean(x * x))


def _first_step(f, pair: Pair, t0, y0, f0, params, rtol, atol):
    """Hairer's starting step (Diffrax's rule): one extra field evaluation."""
    scale = atol + jnp.abs(y0) * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    f1 = f(t0 + h0, y0 + h0 * f0, params)
    d2 = _rms((f1 - f0) / scale) / h0
    dmax = jnp.maximum(d1, d2)
    h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.where(dmax <= 1e-15, 1.0, dmax)) ** (1.0 / pair.error_order))
    return jnp.minimum(100 * h0, h1)


# ------------------------------------------------------------------ forward solve


def segment_size(max_steps: int) -> int:
    """Accepted steps per stored segment: the power of two nearest `sqrt(max_steps)`,
    which about minimises the states kept (`segment + max_steps / segment`)."""
    return max(1, min(max_steps, 2 ** round(np.log2(max(max_steps, 1)) / 2)))


def engine_states(max_steps: int) -> int:
    """How many states the engine keeps for the backward pass: one segment's, plus the
    first state of every segment."""
    seg = segment_size(max_steps)
    return seg + -(-max_steps // seg)


class Steps(NamedTuple):
    """What the forward solve keeps for the backward pass: every accepted step's start
    time `T` and size `H`; the start states of the current (last) segment of `S` steps
    in `Y` (step `j` at `j % S`); and every segment's first state in `C` (step `j` at
    `j // S`, for `j % S == 0`); `n` the number of accepted steps."""

    T: jax.Array
    H: jax.Array
    Y: jax.Array
    C: jax.Array
    n: jax.Array


def _forward(f, pair: Pair, params, y0, ts, rtol, atol, max_steps: int, seg: int,
             store: bool = True, h0=None):
    """The adaptive solve on increasing `ts`. Returns `(ys, stats, steps, h_next)`: the
    outputs at `ts`, statistics, the accepted steps (`Steps`, segments of `seg` steps;
    empty buffers, never written, with `store=False`) and the step the controller would
    try next. `h0`: the first step to try (default: Hairer's rule, one extra
    evaluation)."""
    dtype = y0.dtype
    t0, t1 = ts[0], ts[-1]
    f0 = f(t0, y0, params)
    first = h0 is None
    if first:
        h0 = _first_step(f, pair, t0, y0, f0, params, rtol, atol)
    # times equal to t0 (a zero-length solve, or repeats) keep y0; later ones are
    # written by the step that reaches them
    ys = jnp.where((ts <= t0).reshape((-1,) + (1,) * y0.ndim), y0[None], jnp.zeros((), dtype))
    n_seg = -(-max_steps // seg)
    T = jnp.zeros((max_steps * store,), ts.dtype)
    H = jnp.zeros((max_steps * store,), ts.dtype)
    Y = jnp.zeros((seg * store,) + y0.shape, dtype)
    C = jnp.zeros((n_seg * store,) + y0.shape, dtype)
    b, e = jnp.asarray(pair.b, dtype), jnp.asarray(pair.e, dtype)

    def cond(c):
        t, _, _, h, _, _, _, _, _, n_acc, n_steps, bad = c
        return (t < t1) & (n_steps < max_steps) & ~bad

    def body(c):
        t, y, k0, h, ys, T, H, Y, C, n_acc, n_steps, bad = c
        h = jnp.minimum(h, t1 - t)
        K = _stages(f, pair, t, y, h, k0, params)
        y1 = y + h * jnp.tensordot(b, K, axes=1)
        err = h * jnp.tensordot(e, K, axes=1)
        scaled = _rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))))
        # a non-finite step (NaN anywhere in y1 or the error) is rejected and shrunk
        scaled = jnp.where(jnp.isnan(scaled) | jnp.isnan(jnp.sum(y1)), jnp.inf, scaled)
        accept = scaled < 1
        factor = SAFETY * (1 / scaled) ** (1.0 / pair.error_order)  # 1/0 = inf: grow
        factor = jnp.clip(factor, FACTOR_MIN, jnp.where(accept, FACTOR_MAX, SAFETY))
        save = _in_step(ts, t, h) & accept
        dense = y[None] + h * (_dense_weights(pair, (ts - t) / h).astype(dtype) @ K)
        ys = jnp.where(save.reshape((-1,) + (1,) * y.ndim), dense, ys)
        if store:  # out-of-bounds indices are dropped: a rejected step stores nothing
            T = T.at[jnp.where(accept, n_acc, max_steps)].set(t, mode="drop")
            H = H.at[jnp.where(accept, n_acc, max_steps)].set(h, mode="drop")
            Y = Y.at[jnp.where(accept, n_acc % seg, seg)].set(y, mode="drop")
            C = C.at[jnp.where(accept & (n_acc % seg == 0), n_acc // seg, n_seg)].set(
                y, mode="drop")
        t_next = jnp.where(accept, t + h, t)
        bad = (t_next + h * factor <= t_next) | ~jnp.isfinite(h * factor)
        return (t_next, jnp.where(accept, y1, y), jnp.where(accept, K[-1], k0), h * factor,
                ys, T, H, Y, C, n_acc + accept, n_steps + 1, bad)

    init = (t0, y0, f0, h0, ys, T, H, Y, C, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.zeros((), bool))
    t, _, _, h_next, ys, T, H, Y, C, n_acc, n_steps, bad = jax.lax.while_loop(cond, body, init)
    result = jnp.where(t >= t1, _RESULT["successful"],
                       jnp.where(bad, _RESULT["nonfinite"], _RESULT["max_steps_reached"]))
    stages = len(pair.c)
    stats = EngineStats(nfe=1 + first + (stages - 1) * n_steps, num_steps=n_steps,
                        num_accepted=n_acc, num_rejected=n_steps - n_acc,
                        result=result.astype(jnp.int32))
    return ys, stats, Steps(T, H, Y, C, n_acc), h_next


# ------------------------------------------------------------------ gradient


def _backward(f, pair: Pair, params, ctx, ts, steps: Steps, ys, ct_ys, times: bool = True):
    """Cotangents of `(params, y0, ts)` from those of `ys`, by one reverse pass over the
    stored steps (`f` takes `(params, ctx)`; `ctx` is not differentiated). With
    `times=False` the cotangent of `ts` is None (not differentiated: no evaluations).

    Segments are visited last to first. The last one's states are stored; an earlier
    one's are recomputed from its first state along the stored step sizes (no step-size
    control: the same grid), so a solve of more than one segment costs one extra forward
    pass over its earlier steps, and one of at most `S` steps none."""
    T, H, Y, C, n_acc = steps
    seg = Y.shape[0]
    dtype = Y.dtype
    b = jnp.asarray(pair.b, dtype)
    zeros_p = jax.tree_util.tree_map(jnp.zeros_like, params)
    pc = (params, ctx)
    last = (n_acc - 1) // seg

    def replay(s, count):
        """The start states of segment `s`'s `count` steps, recomputed from `C[s]`."""
        def one(k, c):
            y, buf = c
            t, h = T[s * seg + k], H[s * seg + k]
            K = _stages(f, pair, t, y, h, f(t, y, pc), pc)
            return y + h * jnp.tensordot(b, K, axes=1), buf.at[k].set(y)

        return jax.lax.fori_loop(0, count, one, (C[s], jnp.zeros_like(Y)))[1]

    def segment(i, c):
        s = last - i
        start = s * seg
        count = jnp.minimum(seg, n_acc - start)
        states = jax.lax.cond(i == 0, lambda: Y, lambda: replay(s, count))

        def body(k, c):
            a, gp = c
            j = count - 1 - k
            t, h, y = T[start + j], H[start + j], states[j]
            mask = _in_step(ts, t, h)
            w = _dense_weights(pair, (ts - t) / h).astype(dtype)

            def step(y, p):
                pc = (p, ctx)
                K = _stages(f, pair, t, y, h, f(t, y, pc), pc)
                return y + h * jnp.tensordot(b, K, axes=1), h * (w @ K)

            _, vjp = jax.vjp(step, y, params)
            ct_dense = jnp.where(mask.reshape((-1,) + (1,) * y.ndim), ct_ys, 0)
            # dense = y + h w K: y's share of the dense output's cotangent goes to `a` directly
            dy, dp = vjp((a, ct_dense))
            return dy + jnp.sum(ct_dense, axis=0), jax.tree_util.tree_map(jnp.add, gp, dp)

        return jax.lax.fori_loop(0, count, body, c)

    a, gp = jax.lax.fori_loop(0, last + 1, segment, (jnp.zeros_like(ct_ys[0]), zeros_p))
    at_t0 = (ts <= ts[0]).reshape((-1,) + (1,) * (ct_ys.ndim - 1))
    a = a + jnp.sum(jnp.where(at_t0, ct_ys, 0), axis=0)  # outputs at t0 are y0 itself
    return gp, a, _time_cotangents(f, params, ctx, ts, ys, ct_ys, a) if times else None


def _time_cotangents(f, params, ctx, ts, ys, ct_ys, a):
    """Cotangents of `ts` given those of `ys` and `a`, the cotangent of `y0`: d y(t_j) /
    d t_j = f(t_j, y_j) and d y(t_j) / d t_0 = -(dy(t_j)/dy0) f(t_0, y_0)."""
    fs = jax.vmap(lambda t, y: f(t, y, (params, ctx)))(ts, ys)
    ct_ts = jnp.sum((ct_ys * fs).reshape(ts.shape[0], -1), axis=1)
    ct_ts = ct_ts.at[0].set(jnp.vdot(ct_ys[0], fs[0]) - jnp.vdot(a, fs[0]))
    return ct_ts.astype(ts.dtype)


def _backsolve(f, pair: Pair, params, ctx, ts, ys, ct_ys, rtol, atol, max_steps: int,
               times: bool = True):
    """Cotangents of `(params, y0, ts)` by the continuous adjoint (`adjoint="backsolve"`):
    from the last output time back to the first, the state, its adjoint `a` and the
    parameters' adjoint `g` are solved together backwards by the same adaptive loop,
    one interval between output times at a time (`da/dt = -a df/dy`, `dg/dt = -a
    df/dp`), the step size carried from one interval to the next (guessing it afresh
    per interval cost an evaluation and a cautious first step each: 3.4x the recursive
    step on the base problem instead of 2.0x). At every output time the state restarts
    from the forward solution there (as torchdiffeq does) and that output's cotangent
    is added to `a`. Memory does not grow with the number of steps, and the parameters'
    adjoint is one for the whole state (the joint batch), not one per sample. Gradients
    are accurate to the tolerance."""
    flat_p, unravel_p = ravel_pytree(params)
    n, dtype = ys.shape[1], ys.dtype

    def augmented(v, z, pc):  # in reversed time v = -u
        fy, vjp = jax.vjp(lambda y, p: f(-v, y, (p, pc[1])), z[:n], pc[0])
        a_y, a_p = vjp(z[n: 2 * n])
        return jnp.concatenate([-fy, a_y, ravel_pytree(a_p)[0].astype(dtype)])

    def interval(k, c):
        i = ts.shape[0] - 1 - k  # from ts[i] back to ts[i - 1]
        a, g, h = c
        zs, _, _, h = _forward(augmented, pair, (params, ctx), jnp.concatenate([ys[i], a, g]),
                               jnp.stack([-ts[i], -ts[i - 1]]), rtol, atol, max_steps, 1,
                               store=False, h0=h)
        return zs[1, n: 2 * n] + ct_ys[i - 1], zs[1, 2 * n:], h

    # the step size carries over from one interval to the next (only the first is guessed)
    z_last = jnp.concatenate([ys[-1], ct_ys[-1], jnp.zeros(flat_p.shape, dtype)])
    h_first = _first_step(augmented, pair, -ts[-1], z_last,
                          augmented(-ts[-1], z_last, (params, ctx)), (params, ctx), rtol, atol)
    a, g, _ = jax.lax.fori_loop(0, ts.shape[0] - 1, interval,
                                (ct_ys[-1], jnp.zeros(flat_p.shape, dtype), h_first))
    gp = unravel_p(g.astype(flat_p.dtype))
    return gp, a, _time_cotangents(f, params, ctx, ts, ys, ct_ys, a) if times else None


# ------------------------------------------------------------------ public entry


def rk_solve(func, y0, ts, args, *, solver: str, rtol: float, atol: float, max_steps: int,
             segment: int | None = None, adjoint: str = "recursive"):
    """Solve `dy/dt = func(t, y, args)` with the engine; returns `(ys, EngineStats)`.

    `func` may close over arrays (they are differentiated like explicit arguments),
    `y0` is any pytree of floating arrays of one dtype, `ts` is 1-D and monotonic
    (times equal to `ts[0]` return `y0`). Failures come back in `stats.result`
    (Diffrax's codes). With `adjoint="recursive"` the gradient backpropagates through
    the solve, keeping the states of `segment` steps (default `segment_size(max_steps)`)
    and one state per segment (see `_backward`); with `"backsolve"` it is the continuous
    adjoint, solved backwards by the same loop (see `_backsolve`)."""
    pair = PAIRS[solver]
    seg = segment_size(max_steps) if segment is None else max(1, min(int(segment), max_steps))
    flat_y0, unravel = ravel_pytree(y0)
    sign = jax.lax.stop_gradient(jnp.where(ts[-1] >= ts[0], 1.0, -1.0).astype(ts.dtype))
    conv = eqx.filter_closure_convert(func, ts[0], y0, args)
    arrays, static = eqx.partition((conv, args), eqx.is_array)
    floats, others = eqx.partition(arrays, eqx.is_inexact_array)
    # Time runs forwards inside the engine: u = sign * t. Everything traced goes in as
    # an argument (`floats` are differentiated; `ctx` holds integer arrays and the
    # sign), never as a closure, so the VJP can be traced later under any transform.
    us = sign * ts

    def f(u, y, p):
        pf, (other, sgn) = p
        # (JAX may hand a float leaf back as a Python-like literal: make it an array)
        pf = jax.tree_util.tree_map(jnp.asarray, pf)
        fn, a = eqx.combine(pf, other, static)
        out, _ = ravel_pytree(fn(sgn * u, unravel(y), a))
        return sgn * out.astype(y.dtype)

    @jax.custom_vjp
    def solve(pf, ctx, y, us):
        ys, stats, _, _ = _forward(f, pair, (pf, ctx), y, us, rtol, atol, max_steps, seg)
        return ys, stats

    times_perturbed = []

    def solve_fwd(pf, ctx, y, us):
        # (symbolic_zeros: each argument says whether it is differentiated)
        times_perturbed.append(us.perturbed)
        pf, ctx, y, us = jax.tree_util.tree_map(
            lambda x: x.value, (pf, ctx, y, us),
            is_leaf=lambda x: isinstance(x, jax.custom_derivatives.CustomVJPPrimal))
        ys, stats, steps, _ = _forward(f, pair, (pf, ctx), y, us, rtol, atol, max_steps, seg,
                                       store=adjoint == "recursive")
        return (ys, stats), (pf, ctx, us, steps, ys)

    def solve_bwd(res, cts):
        pf, ctx, us, steps, ys = res
        ct_ys = cts[0]
        if isinstance(ct_ys, jax.custom_derivatives.SymbolicZero):
            ct_ys = jnp.zeros(ct_ys.shape, ct_ys.dtype)
        if adjoint == "backsolve":
            gp, a, ct_us = _backsolve(f, pair, pf, ctx, us, ys, ct_ys, rtol, atol, max_steps,
                                      times=times_perturbed[-1])
        else:
            gp, a, ct_us = _backward(f, pair, pf, ctx, us, steps, ys, ct_ys,
                                     times=times_perturbed[-1])
        return gp, None, a, ct_us

    solve.defvjp(solve_fwd, solve_bwd, symbolic_zeros=True)
    flat_ys, stats = solve(floats, (others, sign), flat_y0, us)
    # integer statistics carry no tangent (Equinox's runtime checks read them under AD)
    stats = EngineStats(*(jax.lax.stop_gradient(x) for x in stats))
    return jax.vmap(unravel)(flat_ys), stats
