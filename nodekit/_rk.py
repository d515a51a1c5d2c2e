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
  product per step. With `dense=True` each accepted step's start state and polynomial
  coefficients are kept as well (a `max_steps` buffer, only then) for
  `Solution.evaluate`, and the backward pass takes their cotangents too.

The gradient is that of the discretised solve with the step sizes held fixed — what
Diffrax computes too (its PID controller stops gradients through the error estimate).
Gradients with respect to `ts` are those of the exact solution (`dy(t_j)/dt_j =
f(t_j, y_j)`, and the continuous sensitivity for `ts[0]`), accurate to the tolerance.
The step-size controller is Diffrax's default PID (integral) rule with the same
constants, so accepted steps match Diffrax's to within 2 % (measured: README, Speed);
the first step is chosen by Hairer's rule (one evaluation), where Diffrax 0.7.2 always
tries 0.01, so the rejected steps differ (1-9x fewer here at tight tolerances).

The engine is chosen by `odeint(..., engine="auto")` (see `SolveSettings.integrator`); the
training loop uses it by default (`solver.engine` in a config) and `engine="diffrax"`
opts out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
# accepted step counts match theirs.
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
    t_reached: jax.Array


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


class Dense(NamedTuple):
    """Dense output of the forward solve (`dense=True`): every accepted step's start
    state `DY[j]` and its polynomial coefficients `DP[j]` (`(P, n)`: `y(T_j + theta H_j) =
    DY[j] + sum_p theta^(p+1) DP[j, p]`)."""

    DY: jax.Array
    DP: jax.Array


def _forward(f, pair: Pair, params, y0, ts, rtol, atol, max_steps: int, seg: int,
             store: bool = True, h0=None, dense: bool = False):
    """The adaptive solve on increasing `ts` (in the state's dtype). Returns `(ys, stats,
    steps, h_next, dense)`: the outputs at `ts`, statistics, the accepted steps (`Steps`,
    segments of `seg` steps; empty buffers, never written, with `store=False`), the step
    the controller would try next, and the dense output (`Dense`, or `None` without
    `dense`). `h0`: the first step to try (default: Hairer's rule, one extra
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
    P = pair.dense.shape[1]
    DY = jnp.zeros((max_steps * dense,) + y0.shape, dtype)
    DP = jnp.zeros((max_steps * dense, P) + y0.shape, dtype)
    b, e = jnp.asarray(pair.b, dtype), jnp.asarray(pair.e, dtype)
    dense_t = jnp.asarray(pair.dense.T, dtype)
    one = jnp.ones((), jnp.int32)

    def cond(c):
        t, _, _, h, _, _, _, _, _, _, _, n_acc, n_steps, bad, _ = c
        return (t < t1) & (n_steps < max_steps) & ~bad

    def body(c):
        t, y, k0, h, ys, T, H, Y, C, DY, DP, n_acc, n_steps, bad, _ = c
        h = jnp.minimum(h, t1 - t)
        K = _stages(f, pair, t, y, h, k0, params)
        y1 = y + h * jnp.tensordot(b, K, axes=1)
        err = h * jnp.tensordot(e, K, axes=1)
        scaled = _rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))))
        # a non-finite step (NaN anywhere in y1 or the error) is rejected and shrunk
        nonfinite = jnp.isnan(scaled) | ~jnp.isfinite(jnp.sum(y1))
        scaled = jnp.where(nonfinite, jnp.inf, scaled)
        accept = scaled < 1
        factor = SAFETY * (1 / scaled) ** (1.0 / pair.error_order)  # 1/0 = inf: grow
        factor = jnp.clip(factor, FACTOR_MIN, jnp.where(accept, FACTOR_MAX, SAFETY))
        save = _in_step(ts, t, h) & accept
        out = y[None] + h * (_dense_weights(pair, (ts - t) / h).astype(dtype) @ K)
        ys = jnp.where(save.reshape((-1,) + (1,) * y.ndim), out, ys)
        if store:  # out-of-bounds indices are dropped: a rejected step stores nothing
            T = T.at[jnp.where(accept, n_acc, max_steps)].set(t, mode="drop")
            H = H.at[jnp.where(accept, n_acc, max_steps)].set(h, mode="drop")
            Y = Y.at[jnp.where(accept, n_acc % seg, seg)].set(y, mode="drop")
            C = C.at[jnp.where(accept & (n_acc % seg == 0), n_acc // seg, n_seg)].set(
                y, mode="drop")
        if dense:
            DY = DY.at[jnp.where(accept, n_acc, max_steps)].set(y, mode="drop")
            DP = DP.at[jnp.where(accept, n_acc, max_steps)].set(h * (dense_t @ K), mode="drop")
        t_next = jnp.where(accept, t + h, t)
        bad = (t_next + h * factor <= t_next) | ~jnp.isfinite(h * factor)
        return (t_next, jnp.where(accept, y1, y), jnp.where(accept, K[-1], k0), h * factor,
                ys, T, H, Y, C, DY, DP, n_acc + jnp.where(accept, one, 0), n_steps + 1, bad,
                nonfinite)

    zero = jnp.zeros((), jnp.int32)
    init = (t0, y0, f0, h0, ys, T, H, Y, C, DY, DP, zero, zero, jnp.zeros((), bool),
            ~jnp.isfinite(jnp.sum(f0)))
    t, _, _, h_next, ys, T, H, Y, C, DY, DP, n_acc, n_steps, bad, nonfinite = \
        jax.lax.while_loop(cond, body, init)
    # outputs the solve did not reach (it failed first) are inf, as on Diffrax
    ys = jnp.where((ts > t).reshape((-1,) + (1,) * y0.ndim), jnp.inf, ys)
    # the steps collapse when the state turns non-finite (each attempt is rejected)
    result = jnp.where(t >= t1, _RESULT["successful"],
                       jnp.where(bad, jnp.where(nonfinite, _RESULT["nonfinite"],
                                                _RESULT["dt_min_reached"]),
                                 _RESULT["max_steps_reached"]))
    stages = len(pair.c)
    stats = EngineStats(nfe=1 + first + (stages - 1) * n_steps, num_steps=n_steps,
                        num_accepted=n_acc, num_rejected=n_steps - n_acc,
                        result=result.astype(jnp.int32), t_reached=t)
    return ys, stats, Steps(T, H, Y, C, n_acc), h_next, (Dense(DY, DP) if dense else None)


# ------------------------------------------------------------------ gradient


def _backward(f, pair: Pair, params, ctx, ts, steps: Steps, ys, ct_ys, times: bool = True,
              ct_dense: Dense | None = None):
    """Cotangents of `(params, y0, ts)` from those of `ys` (and of the dense output,
    `ct_dense`), by one reverse pass over the stored steps (`f` takes `(params, ctx)`;
    `ctx` is not differentiated). With `times=False` the cotangent of `ts` is None (not
    differentiated: no evaluations).

    Segments are visited last to first. The last one's states are stored; an earlier
    one's are recomputed from its first state along the stored step sizes (no step-size
    control: the same grid), so a solve of more than one segment costs one extra forward
    pass over its earlier steps, and one of at most `S` steps none."""
    T, H, Y, C, n_acc = steps
    seg = Y.shape[0]
    dtype = Y.dtype
    b = jnp.asarray(pair.b, dtype)
    dense_t = jnp.asarray(pair.dense.T, dtype)
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
                out = (y + h * jnp.tensordot(b, K, axes=1), h * (w @ K))
                return out + ((h * (dense_t @ K),) if ct_dense is not None else ())

            _, vjp = jax.vjp(step, y, params)
            ct_out = jnp.where(mask.reshape((-1,) + (1,) * y.ndim), ct_ys, 0)
            cts = (a, ct_out) + ((ct_dense.DP[start + j],) if ct_dense is not None else ())
            # out = y + h w K: y's share of the outputs' cotangent goes to `a` directly
            dy, dp = vjp(cts)
            dy = dy + jnp.sum(ct_out, axis=0)
            if ct_dense is not None:  # DY[j] is the step's start state itself
                dy = dy + ct_dense.DY[start + j]
            return dy, jax.tree_util.tree_map(jnp.add, gp, dp)

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
    """Cotangents of `(params, y0, ts)` by the continuous adjoint (`adjoint="backsolve"`),
    and the result code of the backward solve (0 when every interval succeeded).

    From the last output time back to the first, the state, its adjoint `a` and the
    parameters' adjoint `g` are solved together backwards by the same adaptive loop,
    one interval between output times at a time (`da/dt = -a df/dy`, `dg/dt = -a
    df/dp`), the step size carried from one interval to the next (guessing it afresh
    per interval cost an evaluation and a cautious first step each: 3.4x the recursive
    step on the base problem instead of 2.0x). At every output time the state restarts
    from the forward solution there (as torchdiffeq does) and that output's cotangent
    is added to `a`. Memory does not grow with the number of steps, and the parameters'
    adjoint is one for the whole state (the joint batch), not one per sample. Gradients
    are accurate to the tolerance; a failed interval (out of `max_steps`, non-finite)
    is reported in the code, never hidden."""
    flat_p, unravel_p = ravel_pytree(params)
    n, dtype = ys.shape[1], ys.dtype

    def augmented(v, z, pc):  # in reversed time v = -u
        fy, vjp = jax.vjp(lambda y, p: f(-v, y, (p, pc[1])), z[:n], pc[0])
        a_y, a_p = vjp(z[n: 2 * n])
        return jnp.concatenate([-fy, a_y, ravel_pytree(a_p)[0].astype(dtype)])

    def interval(k, c):
        i = ts.shape[0] - 1 - k  # from ts[i] back to ts[i - 1]
        a, g, h, code = c
        zs, st, _, h, _ = _forward(augmented, pair, (params, ctx), jnp.concatenate([ys[i], a, g]),
                                   jnp.stack([-ts[i], -ts[i - 1]]), rtol, atol, max_steps, 1,
                                   store=False, h0=h)
        code = jnp.where(code == 0, st.result, code)  # the first failure
        return zs[1, n: 2 * n] + ct_ys[i - 1], zs[1, 2 * n:], h, code

    # the step size carries over from one interval to the next (only the first is guessed)
    z_last = jnp.concatenate([ys[-1], ct_ys[-1], jnp.zeros(flat_p.shape, dtype)])
    h_first = _first_step(augmented, pair, -ts[-1], z_last,
                          augmented(-ts[-1], z_last, (params, ctx)), (params, ctx), rtol, atol)
    a, g, _, code = jax.lax.fori_loop(
        0, ts.shape[0] - 1, interval,
        (ct_ys[-1], jnp.zeros(flat_p.shape, dtype), h_first, jnp.zeros((), jnp.int32)))
    gp = unravel_p(g.astype(flat_p.dtype))
    return gp, a, _time_cotangents(f, params, ctx, ts, ys, ct_ys, a) if times else None, code


def refuse_failed_backward(grads, code, *, throw: bool, solver: str, max_steps: int):
    """Never a silently wrong gradient: where the backward solve failed (`code != 0`)
    the gradients become NaN (which a training step's non-finite guard reports), and
    with `throw` the solve raises (an `EquinoxRuntimeError` naming the failure; NaN
    instead when Equinox's `EQX_ON_ERROR=nan` is set, as the CLI does)."""
    from ._errors import backward_failure_message

    failed = code != 0
    grads = jax.tree_util.tree_map(
        lambda g: jnp.where(failed, jnp.full_like(g, jnp.nan), g) if eqx.is_inexact_array(g)
        else g, grads)
    if throw:
        messages = [backward_failure_message(name, solver=solver, max_steps=max_steps)
                    for name in RESULT_NAMES]
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        i = next(k for k, x in enumerate(leaves) if eqx.is_array(x))
        leaves[i] = eqx.branched_error_if(leaves[i], failed, code, messages)
        grads = jax.tree_util.tree_unflatten(treedef, leaves)
    return grads


# ------------------------------------------------------------------ dense output


class StateSpec(NamedTuple):
    """How a flat state vector unflattens into the caller's pytree (hashable, so it can
    be a static field)."""

    treedef: Any
    shapes: tuple

    @classmethod
    def of(cls, tree) -> "StateSpec":
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return cls(treedef, tuple(tuple(np.shape(x)) for x in leaves))

    def unflatten(self, flat):
        sizes = [int(np.prod(s)) for s in self.shapes]
        parts = jnp.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [flat]
        return jax.tree_util.tree_unflatten(
            self.treedef, [p.reshape(s) for p, s in zip(parts, self.shapes)])


class EngineDense(eqx.Module):
    """The engine's dense output: every accepted step's start state and polynomial
    coefficients (the pair's own interpolant: Shampine's quartic for Dopri5, Tsitouras'
    for Tsit5), evaluated at any time of the solved interval. Differentiable with
    respect to everything the solve depends on except `ts` (the step grid is held
    fixed), and with respect to the time asked for."""

    T: jax.Array
    H: jax.Array
    DY: jax.Array
    DP: jax.Array
    n: jax.Array
    y0: jax.Array
    sign: jax.Array
    spec: StateSpec = eqx.field(static=True)

    def evaluate(self, t):
        """The state at time `t` (a scalar); outside the solved interval the nearest
        step's polynomial extrapolates."""
        u = self.sign * jnp.asarray(t, self.T.dtype)
        n = self.n.astype(jnp.int32)
        starts = jnp.where(jnp.arange(self.T.shape[0], dtype=jnp.int32) < n, self.T, jnp.inf)
        i = jnp.searchsorted(starts, u, side="right").astype(jnp.int32) - 1
        i = jnp.clip(i, 0, jnp.maximum(n - 1, 0))
        h = jnp.where(self.n > 0, self.H[i], 1)
        theta = (u - self.T[i]) / h
        powers = jnp.stack([theta ** (p + 1) for p in range(self.DP.shape[1])])
        y = self.DY[i] + jnp.tensordot(powers.astype(self.DY.dtype), self.DP[i], axes=1)
        return self.spec.unflatten(jnp.where(self.n > 0, y, self.y0))


# ------------------------------------------------------------------ public entry


def flat_problem(func, y0, ts, args):
    """The solve rewritten over flat arrays in forward time, everything traced passed in
    as an argument (never a closure), so a custom VJP can be traced under any transform:
    returns `(f, floats, ctx, flat_y0, us, spec)` with `f(u, y, (floats, ctx))` the field
    on the flat state at `u = sign * t`, `floats` the differentiable arrays of
    `(func, args)` and `ctx = (other arrays, sign)`."""
    flat_y0, _ = ravel_pytree(y0)
    spec = StateSpec.of(y0)
    ts = ts.astype(flat_y0.dtype)
    sign = jax.lax.stop_gradient(jnp.where(ts[-1] >= ts[0], 1, -1).astype(ts.dtype))
    conv = eqx.filter_closure_convert(func, ts[0], y0, args)
    arrays, static = eqx.partition((conv, args), eqx.is_array)
    floats, others = eqx.partition(arrays, eqx.is_inexact_array)

    def f(u, y, p):
        pf, (other, sgn) = p
        # (JAX may hand a float leaf back as a Python-like literal: make it an array)
        pf = jax.tree_util.tree_map(jnp.asarray, pf)
        fn, a = eqx.combine(pf, other, static)
        out, _ = ravel_pytree(fn(sgn * u, spec.unflatten(y), a))
        return sgn * out.astype(y.dtype)

    return f, floats, (others, sign), flat_y0, sign * ts, spec


def rk_solve(func, y0, ts, args, *, solver: str, rtol: float, atol: float, max_steps: int,
             segment: int | None = None, adjoint: str = "recursive", dense: bool = False,
             throw: bool = True):
    """Solve `dy/dt = func(t, y, args)` with the engine; returns `(ys, EngineStats,
    dense_output)` (`EngineDense`, or `None` without `dense`).

    `func` may close over arrays (they are differentiated like explicit arguments),
    `y0` is any pytree of floating arrays of one dtype, `ts` is 1-D and monotonic
    (times equal to `ts[0]` return `y0`; `ts` is cast to the state's dtype). Failures
    come back in `stats.result` (Diffrax's codes). With `adjoint="recursive"` the
    gradient backpropagates through the solve, keeping the states of `segment` steps
    (default `segment_size(max_steps)`) and one state per segment (see `_backward`);
    with `"backsolve"` it is the continuous adjoint, solved backwards by the same loop
    (see `_backsolve`), and a failed backward solve gives NaN gradients (and an error
    with `throw`), never wrong ones."""
    pair = PAIRS[solver]
    seg = segment_size(max_steps) if segment is None else max(1, min(int(segment), max_steps))
    f, floats, ctx, flat_y0, us, spec = flat_problem(func, y0, ts, args)
    store = adjoint == "recursive"
    if dense and not store:
        raise ValueError("dense output needs adjoint='recursive'")  # refused by odeint

    def outputs(ys, steps, dense_out):
        extra = None
        if dense:
            extra = (jax.lax.stop_gradient(steps.T), jax.lax.stop_gradient(steps.H),
                     dense_out.DY, dense_out.DP, steps.n)
        return extra

    @jax.custom_vjp
    def solve(pf, ctx, y, us):
        ys, stats, steps, _, dense_out = _forward(f, pair, (pf, ctx), y, us, rtol, atol,
                                                  max_steps, seg, store=dense, dense=dense)
        return ys, stats, outputs(ys, steps, dense_out)

    times_perturbed = []

    def solve_fwd(pf, ctx, y, us):
        # (symbolic_zeros: each argument says whether it is differentiated)
        times_perturbed.append(us.perturbed)
        pf, ctx, y, us = jax.tree_util.tree_map(
            lambda x: x.value, (pf, ctx, y, us),
            is_leaf=lambda x: isinstance(x, jax.custom_derivatives.CustomVJPPrimal))
        ys, stats, steps, _, dense_out = _forward(f, pair, (pf, ctx), y, us, rtol, atol,
                                                  max_steps, seg, store=store, dense=dense)
        return (ys, stats, outputs(ys, steps, dense_out)), (pf, ctx, us, steps, ys)

    def materialise(ct, like):
        if isinstance(ct, jax.custom_derivatives.SymbolicZero):
            return jnp.zeros(like.shape, like.dtype)
        return ct

    def solve_bwd(res, cts):
        pf, ctx, us, steps, ys = res
        ct_ys = materialise(cts[0], ys)
        if adjoint == "backsolve":
            gp, a, ct_us, code = _backsolve(f, pair, pf, ctx, us, ys, ct_ys, rtol, atol,
                                            max_steps, times=times_perturbed[-1])
            gp, a, ct_us = refuse_failed_backward((gp, a, ct_us), code, throw=throw,
                                                  solver=solver, max_steps=max_steps)
        else:
            ct_dense = None
            if dense:
                _, _, ct_dy, ct_dp, _ = cts[2]
                n = flat_y0.shape[0]
                ct_dense = Dense(
                    materialise(ct_dy, jax.ShapeDtypeStruct((max_steps, n), flat_y0.dtype)),
                    materialise(ct_dp, jax.ShapeDtypeStruct(
                        (max_steps, pair.dense.shape[1], n), flat_y0.dtype)))
            gp, a, ct_us = _backward(f, pair, pf, ctx, us, steps, ys, ct_ys,
                                     times=times_perturbed[-1], ct_dense=ct_dense)
        return gp, None, a, ct_us

    solve.defvjp(solve_fwd, solve_bwd, symbolic_zeros=True)
    flat_ys, stats, extra = solve(floats, ctx, flat_y0, us)
    # integer statistics carry no tangent (Equinox's runtime checks read them under AD)
    stats = EngineStats(*(jax.lax.stop_gradient(x) for x in stats[:-1]),
                        jax.lax.stop_gradient(ctx[1] * stats.t_reached))
    dense_output = None
    if dense:
        T, H, DY, DP, n = extra
        dense_output = EngineDense(T, H, DY, DP, jax.lax.stop_gradient(n), flat_y0, ctx[1],
                                   spec)
    return jax.vmap(spec.unflatten)(flat_ys), stats, dense_output
