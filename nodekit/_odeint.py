"""`odeint`: a functional ODE solve. Checks the arguments (`nodekit._checks`), resolves
the solver settings (`nodekit._settings.SolveSettings`), picks the integrator from what
the caller asked (`choose_integrator`) and hands the solve to it: nodekit's own engine
(`nodekit._rk`) or Diffrax (`nodekit._diffrax_solve`, imported only then). The
integrator and the reason for it are recorded in `SolveStats`."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from ._checks import (
    TS_RULE,
    check_choice,
    check_field,
    check_order,
    check_rtol_resolvable,
    check_state,
    check_times,
    field_name as field_name,
    is_concrete,
    state_dtype,
    times_in_order,
    unexpected_keywords,
)
from ._errors import RESULT_NAMES, InputError, SolverError, solver_failure_message
from ._settings import (
    ADJOINTS as ADJOINTS,
    CHECKPOINT_BUDGET_BYTES as CHECKPOINT_BUDGET_BYTES,
    DEFAULT,
    ENGINES as ENGINES,
    SOLVERS as SOLVERS,
    SolveSettings,
    auto_checkpoints as auto_checkpoints,
    choose_integrator,
)

_EVENT = RESULT_NAMES.index("event_occurred")
_UNORDERED = RESULT_NAMES.index("unordered_times")


class SolveStats(eqx.Module):
    """Statistics of one solve (arrays, so they work under `jit` and `vmap`), and which
    integrator ran it.

    **Fields:**

    - `nfe`: vector-field evaluations in the forward solve, exact on both integrators for
      explicit methods (stages per attempted step, an FSAL solver's first evaluation,
      and on the engine the one evaluation that chooses the first step; Diffrax 0.7.2
      makes none for that). Implicit methods: stage evaluations, not counting the extra
      evaluations inside Newton iterations.
    - `num_steps`: attempted steps; `num_accepted`, `num_rejected`.
    - `result`: the result code (0 success; Diffrax's numbering, see
      `nodekit._odeint.result_name`); `failed` says whether it is a failure (an event
      ending the solve is not).
    - `t_reached`: the time the solve reached (the end time, the event time, or where
      it failed).
    - `integrator`: `"nodekit"` (the engine) or `"diffrax"` (static: a Python string,
      also under `jit`); `reason`: why that integrator (see `SolveSettings.integrator`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    ys, stats = nodekit.odeint(lambda t, y, args: -y, jnp.ones(1), jnp.linspace(0, 1, 3),
                               return_stats=True)
    print(int(stats.nfe), int(stats.num_accepted), stats.integrator)
    ```
    """

    nfe: Int[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    num_accepted: Int[Array, "*batch"]
    num_rejected: Int[Array, "*batch"]
    result: Int[Array, "*batch"]
    t_reached: Float[Array, "*batch"] | None = None
    integrator: str = eqx.field(static=True, default="none")
    reason: str = eqx.field(static=True, default="")

    @property
    def failed(self) -> jax.Array:
        return (self.result != 0) & (self.result != _EVENT)


def result_name(code: int) -> str:
    """The result name for an integer result code (`0 -> 'successful'`)."""
    return RESULT_NAMES[int(code)]


def get_solver(name: str):
    """A Diffrax solver instance from its nodekit name (see `SOLVERS`)."""
    return SOLVERS[check_choice("solver", name, list(SOLVERS))].cls()


def engine_for(engine: str, *, solver: str, adjoint: str, dt0, integrals, checkpoints,
               max_steps: int, y0) -> tuple[str, str]:
    """Which integrator runs one solve of `y0`, and why: `("nodekit" | "diffrax",
    reason)`. The older keyword form (the config's check of `solver.engine: nodekit`
    uses it); see `SolveSettings.integrator`. Raises `InputError` for
    `engine="nodekit"` with settings the engine cannot run."""
    settings = SolveSettings(solver=solver, adjoint=adjoint, dt0=dt0, checkpoints=checkpoints,
                             max_steps=max_steps, engine=engine)
    return choose_integrator(settings, y0, integrals=integrals)


_RECORDED: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "nodekit_recorded_integrators", default=None)


@contextlib.contextmanager
def record_integrators() -> Iterator[list[tuple[str, str]]]:
    """Collect `(integrator, reason)` of every solve run or traced inside the block (in
    this thread or task: a context variable, nothing process-wide). The training loop
    traces its step inside one to write the integrator into the run's files."""
    out: list[tuple[str, str]] = []
    token = _RECORDED.set(out)
    try:
        yield out
    finally:
        _RECORDED.reset(token)


def summarise_integrators(recorded) -> tuple[str, str]:
    """One `(name, reason)` for a program's solves: the integrator, or `"a+b"` when
    solves differ, with each distinct reason once; `("none", ...)` without a solve."""
    pairs = list(dict.fromkeys((str(w), str(r)) for w, r in recorded))
    if not pairs:
        return "none", "no ODE solve in the training step"
    names = list(dict.fromkeys(w for w, _ in pairs))
    return "+".join(names), "; ".join(f"{w}: {r}" if len(names) > 1 else r for w, r in pairs)


def _raise_on_failure(ys, stats: SolveStats, message_kwargs: dict, t_span):
    result = stats.result
    if is_concrete(result):
        codes = np.atleast_1d(np.asarray(result))
        bad = (codes != 0) & (codes != _EVENT)
        if bad.any():
            i = int(np.argmax(bad))
            t = None
            if stats.t_reached is not None and is_concrete(stats.t_reached):
                t = float(np.atleast_1d(np.asarray(stats.t_reached))[i])
            span = None
            if t_span is not None and all(is_concrete(x) for x in t_span):
                span = (float(t_span[0]), float(t_span[1]))
            raise SolverError(solver_failure_message(
                result_name(codes[i]), t_reached=t, t_span=span, **message_kwargs),
                status="solver_failure")
        return ys
    messages = [solver_failure_message(n, **message_kwargs) + (
        " (Under jit the time reached is not in this message: pass throw=False and "
        "return_stats=True, and read stats.t_reached.)" if n not in ("unordered_times",) else "")
        for n in RESULT_NAMES]
    failed = (result != 0) & (result != _EVENT)
    leaves, treedef = jax.tree_util.tree_flatten(ys)
    leaves[0] = eqx.branched_error_if(leaves[0], failed, result, messages)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def odeint(
    func: Callable[[Any, Any, Any], Any],
    y0: PyTree[ArrayLike],
    ts: Float[ArrayLike, " times"],
    *,
    settings: SolveSettings | None = None,
    solver: str = DEFAULT,
    rtol: float = DEFAULT,
    atol: float = DEFAULT,
    dt0: float | None = DEFAULT,
    adjoint: str = DEFAULT,
    max_steps: int = DEFAULT,
    checkpoints: int | str | None = DEFAULT,
    engine: str = DEFAULT,
    args: PyTree[Any] = None,
    event: Callable[[Any, Any, Any], Any] | None = None,
    return_stats: bool = False,
    throw: bool = True,
    check: bool = True,
    **unexpected,
):
    """Solve `dy/dt = func(t, y, args)` from `y0` at `ts[0]`, returning `y` at every `ts`.

    Like `torchdiffeq.odeint`, but the field takes `(t, y, args)` (Diffrax's order) and
    everything is differentiable, `jax.jit`-able and `jax.vmap`-able.

    **Arguments:**

    - `func`: the vector field `func(t, y, args) -> dy/dt`, same pytree/shape/dtype as `y`.
    - `y0`: the initial state (an array or any pytree of arrays, floating point; not
      half precision).
    - `ts`: 1-D times, non-decreasing (or non-increasing for a backward solve); `ts[0]`
      is the initial time; repeated times give the same state. Cast to the state's dtype
      (the solve runs in the state's dtype).
    - `settings`: a `SolveSettings` (the defaults when omitted). The keyword arguments
      `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`
      override single settings (see `SolveSettings` for each and its default: `tsit5`,
      `rtol=1e-6`, `atol=1e-8`, adaptive, `recursive`, `max_steps=4096`, `checkpoints=
      "auto"`, `engine="auto"`). `rtol` and `atol` are Python floats.
    - `args`: passed to `func` unchanged.
    - `event`: a condition `event(t, y, args) -> scalar`; the solve ends where it crosses
      zero, and the event time is returned (differentiable). Solved on Diffrax (the
      engine does not locate events); not with `adjoint="backsolve"`.
    - `return_stats`: also return a `SolveStats` (NFE, steps, result code, integrator).
    - `throw`: raise on solver failure with a message saying where and what to try. With
      `throw=False`, failures come back in `stats.result` (use it in batched training)
      and the outputs not reached are `inf`.
    - `check`: check the field against `y0` before compiling (signature, shapes, dtypes).

    The integrator (`engine`): `"auto"` solves with nodekit's own Runge–Kutta engine
    where it applies (`dopri5`/`tsit5`, adaptive, `adjoint` `"recursive"` or
    `"backsolve"`, no event) and with Diffrax otherwise; `"diffrax"` always uses Diffrax;
    `"nodekit"` insists on the engine. Both give the same solution to the tolerance and
    the same gradients; `stats.integrator` and `stats.reason` say which ran and why. A
    `jax.vmap` applied outside `odeint` is not seen: under `"auto"` each sample then runs
    on the engine (`NeuralODE.solve_batch(mode="vmap")` tells the solve it is one sample
    of a batch, and picks Diffrax there).

    **Returns:**

    `ys` with shape `(len(ts), *y0.shape)` (for pytrees, each leaf gains the leading
    axis); `(ys, stats)` with `return_stats=True`. With `event`: `(ys, t_event)` or
    `(ys, t_event, stats)`, where outputs after the event hold the state at the event
    and `t_event` is `ts[-1]` when no event occurred (`stats.result` is then 0, else
    `event_occurred`).

    **Raises:**

    `InputError` for bad arguments or a field that does not fit the state (before
    compiling); `SolverError` (or, inside `jit`, an `EquinoxRuntimeError` with the same
    message) when the solve fails and `throw=True`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    ts = jnp.linspace(0.0, 1.0, 11)
    ys = nodekit.odeint(lambda t, y, args: -y, jnp.array([1.0]), ts, solver="dopri5")
    assert abs(float(ys[-1, 0]) - 0.36788) < 1e-4   # exp(-1)
    ```
    """
    if unexpected:
        raise unexpected_keywords("odeint", unexpected, _ODEINT_KEYWORDS) from None
    settings = SolveSettings.resolve(settings, solver=solver, rtol=rtol, atol=atol, dt0=dt0,
                                     adjoint=adjoint, max_steps=max_steps,
                                     checkpoints=checkpoints, engine=engine)
    ys, stats, extras = solve(func, y0, ts, settings, args=args, throw=throw, check=check,
                              event=event)
    if event is not None:
        return (ys, extras["t_event"], stats) if return_stats else (ys, extras["t_event"])
    return (ys, stats) if return_stats else ys


_ODEINT_KEYWORDS = ("settings", "solver", "rtol", "atol", "dt0", "adjoint", "max_steps",
                    "checkpoints", "engine", "args", "event", "return_stats", "throw", "check")


def solve(func, y0, ts, settings: SolveSettings, *, args=None, throw: bool = True,
          check: bool = True, integrals: str | None = None, vmap_size: int | None = None,
          dense: bool = False, event=None, caller: str = "odeint", augment_dim: int = 0):
    """`odeint`'s body: `(ys, stats, extras)` with `extras` holding `t_event` and the
    dense output (`dense=True`).

    `integrals`: the state's last item holds running integrals `r` that must not steer
    the step size (the error norm is `state_norm`): for `"trapezoid"`, `y0` is `(y, r)`
    and `func` an augmented field (`(t, (y, r), args) -> (f, g)`, `(f, None)` for `(y,
    None)`), `y` is solved by the solver and `r` integrated by the trapezoid rule on its
    step grid (see `nodekit._quadrature`); for `"stages"`, `r` is an ordinary part of the
    state, integrated at every stage. `vmap_size`: the caller solves one sample of a
    per-sample batch of that size (`batch_mode="vmap"`; it steers the integrator and the
    memory rule). `caller` and `augment_dim` word the messages."""
    y0 = check_state(y0)
    dtype = state_dtype(y0)
    ts = check_times(ts, dtype, order=False)
    if settings.dt0 is None:
        check_rtol_resolvable(settings.rtol, dtype)
    if event is not None:
        if not callable(event):
            raise InputError(f"event must be a function cond(t, y, args) -> scalar, got "
                             f"{type(event).__name__}.")
        if settings.adjoint == "backsolve":
            raise InputError("an event needs adjoint='recursive' or 'direct' (the continuous "
                             "adjoint does not differentiate the event time).")
    if dense and settings.adjoint == "backsolve":
        raise InputError("dense output needs adjoint='recursive' or 'direct' (the continuous "
                         "adjoint keeps no steps to interpolate).")
    if check:
        check_field(func, ts[0], y0, args, caller=caller, augment_dim=augment_dim, times=ts)
    ts = check_order(ts)
    which, why = choose_integrator(settings, y0, vmap_size=vmap_size, integrals=integrals,
                                   dense=dense, event=event is not None)
    recorded = _RECORDED.get()
    if recorded is not None:
        recorded.append((which, why))
    if sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(y0)) == 0:
        return _empty(y0, ts, which, why, dense, event)
    checkpoints = settings.checkpoints
    if which == "diffrax" and checkpoints == "auto":
        checkpoints = auto_checkpoints(y0, settings.info, settings.max_steps,
                                       copies=vmap_size or 1)
    # An eager call goes through a compiled solve cached per field and shapes (as
    # Diffrax's `diffeqsolve`); inside a transform (jit, grad, vmap) the solve is traced
    # inline. (`throw` changes the compiled solve only for backsolve's backward check.)
    eager = all(is_concrete(x) for x in jax.tree_util.tree_leaves((y0, ts, args)))
    integrate = _integrate if eager else _integrate_inline
    ys, counts, extras = integrate(func, y0, ts, args, settings, which, checkpoints,
                                   integrals, dense, event,
                                   throw or settings.adjoint != "backsolve", is_concrete(ts))
    stats = SolveStats(**counts, integrator=which, reason=why)
    if throw:
        ys = _raise_on_failure(ys, stats, dict(solver=settings.solver, rtol=settings.rtol,
                                               atol=settings.atol,
                                               max_steps=settings.max_steps),
                               (ts[0], ts[-1]))
    return ys, stats, extras


def _integrate_inline(func, y0, ts, args, settings: SolveSettings, which: str, checkpoints,
                      integrals, dense: bool, event, throw: bool, checked: bool):
    """The solve itself, on the integrator chosen. `checked`: the order of `ts` was
    checked on the host; otherwise it is checked here, and a bad order is reported as a
    result code (no host callback)."""
    unordered = None
    if not checked:
        unordered = ~times_in_order(ts)
        ts = jnp.where(unordered, ts[0], ts)  # then nothing is solved
    if which == "nodekit":
        from ._rk import rk_solve

        ys, counts, dense_out = rk_solve(func, y0, ts, args, solver=settings.solver,
                                         rtol=settings.rtol, atol=settings.atol,
                                         max_steps=settings.max_steps,
                                         adjoint=settings.adjoint, dense=dense, throw=throw)
        counts = counts._asdict()
        extras = dict(t_event=None, dense=dense_out)
    else:
        from ._diffrax_solve import diffrax_solve

        ys, counts, extras = diffrax_solve(func, y0, ts, args, settings=settings,
                                           checkpoints=checkpoints, integrals=integrals,
                                           dense=dense, event=event, throw=throw)
    if unordered is not None:
        counts["result"] = jnp.where(unordered, jnp.int32(_UNORDERED), counts["result"])
    return ys, counts, extras


#: `_integrate_inline` compiled once per field and shapes, for eager calls.
_integrate = eqx.filter_jit(_integrate_inline)


def _empty(y0, ts, which, why, dense, event):
    """An empty state (a leaf of size 0 everywhere): nothing to solve."""
    ys = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[None], (ts.shape[0],) + x.shape),
                                y0)
    z = jnp.zeros((), jnp.int32)
    stats = SolveStats(nfe=z, num_steps=z, num_accepted=z, num_rejected=z, result=z,
                       t_reached=ts[-1], integrator=which, reason=why)
    dense_out = _Constant(y0) if dense else None
    return ys, stats, dict(t_event=ts[-1] if event is not None else None, dense=dense_out)


class _Constant(eqx.Module):
    """The dense output of a solve with nothing to solve."""

    y: Any

    def evaluate(self, t):
        return self.y


def odeint_step_quadrature(func, y0, ts, *, integrals: str = "trapezoid",
                           settings: SolveSettings | None = None, args=None,
                           return_stats: bool = False, throw: bool = True, check: bool = True,
                           vmap_size: int | None = None, **overrides):
    """`odeint` for an augmented state whose last item holds running integrals `r`,
    which never shrink the steps (the error norm sees the rest of the state alone):
    `integrals="trapezoid"` accumulates them once per solver step by the trapezoid rule
    (see `nodekit._quadrature`), `"stages"` integrates them with the solver's stages
    (worth it when the integrands reuse the field value the stages compute anyway).
    Settings as `odeint`'s."""
    settings = SolveSettings.resolve(settings, **overrides)
    ys, stats, _ = solve(func, y0, ts, settings, args=args, throw=throw, check=check,
                         integrals=integrals, vmap_size=vmap_size)
    return (ys, stats) if return_stats else ys


__all__ = ["odeint", "SolveStats", "SOLVERS", "ADJOINTS", "ENGINES", "TS_RULE"]
