"""`odeint`: a functional ODE solve, with solvers, adjoints and controllers chosen by
name, solver statistics, and errors that say what to do. The solve runs on nodekit's own
engine (`nodekit._rk`) where it applies and on Diffrax otherwise (`nodekit._diffrax_solve`,
imported only then)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import (RESULT_NAMES, InputError, SolverError, solver_failure_message,
                      unknown_name_message)


class _SolverInfo(NamedTuple):
    class_name: str  # the Diffrax solver class (`RK4` is nodekit's), imported on use
    adaptive: bool  # has an embedded error estimate
    evals_per_step: int  # vector-field evaluations per attempted step
    fsal: bool  # first-same-as-last: one extra evaluation at the start

    @property
    def cls(self) -> type:
        from ._diffrax_solve import solver_class

        return solver_class(self.class_name)


#: Solvers by name. `adaptive` solvers accept `dt0=None` (PID step-size control). The
#: evaluation counts are those of the solvers' tableaux (checked against Diffrax's in
#: tests/test_odeint.py), written out so that naming a solver does not import Diffrax.
SOLVERS: dict[str, _SolverInfo] = {
    "euler": _SolverInfo("Euler", False, 1, False),
    "midpoint": _SolverInfo("Midpoint", True, 2, False),
    "heun": _SolverInfo("Heun", True, 2, False),
    "ralston": _SolverInfo("Ralston", True, 2, False),
    "rk4": _SolverInfo("RK4", False, 4, False),
    "bosh3": _SolverInfo("Bosh3", True, 3, True),
    "dopri5": _SolverInfo("Dopri5", True, 6, True),
    "tsit5": _SolverInfo("Tsit5", True, 6, True),
    "dopri8": _SolverInfo("Dopri8", True, 13, True),
    "kvaerno5": _SolverInfo("Kvaerno5", True, 6, True),
}

#: Adjoint (gradient) methods by name.
ADJOINTS = ("recursive", "backsolve", "direct")

#: Who integrates: `auto` (nodekit's own engine where it applies, else Diffrax; see
#: `engine_for`), `diffrax` (always Diffrax) or `nodekit` (the engine, or an error
#: saying why it cannot).
ENGINES = ("auto", "diffrax", "nodekit")



class SolveStats(eqx.Module):
    """Statistics of one solve (arrays, so they work under `jit` and `vmap`).

    **Fields:**

    - `nfe`: vector-field evaluations in the forward solve. Explicit methods: exact
      (stages per attempted step, FSAL counted once, plus the evaluations that choose
      the first step). Implicit methods: stage evaluations, not counting the extra
      evaluations inside Newton iterations.
    - `num_steps`: attempted steps; `num_accepted`, `num_rejected`.
    - `result`: Diffrax's result code (0 is success); `failed` is `result != 0`.

    **Example:**

    ```python
    ys, stats = nodekit.odeint(f, y0, ts, return_stats=True)
    print(int(stats.nfe), int(stats.num_accepted), int(stats.num_rejected))
    ```
    """

    nfe: jax.Array
    num_steps: jax.Array
    num_accepted: jax.Array
    num_rejected: jax.Array
    result: jax.Array

    @property
    def failed(self) -> jax.Array:
        return self.result != 0


def result_name(code: int) -> str:
    """The Diffrax result name for an integer result code (`0 -> 'successful'`)."""
    return RESULT_NAMES[int(code)]


def get_solver(name: str):
    """A Diffrax solver instance from its nodekit name (see `SOLVERS`)."""
    if name not in SOLVERS:
        raise InputError(unknown_name_message("solver", name, list(SOLVERS)))
    return SOLVERS[name].cls()


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _describe(tree) -> str:
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1:
        return f"{tuple(leaves[0].shape)} {leaves[0].dtype}"
    return str(jax.tree_util.tree_map(lambda x: f"{tuple(x.shape)} {x.dtype}", tree))


def field_name(func) -> str:
    """A readable name for a vector field: its class or its function name."""
    if isinstance(func, eqx.Module):
        return type(func).__name__
    return getattr(func, "__qualname__", None) or type(func).__name__


def check_field(func, t0, y0, args) -> None:
    """Refuse, before compiling, a vector field whose output does not match the state.

    Runs the field abstractly (`jax.eval_shape`: no FLOPs, no compilation) and compares
    tree structure, shapes and dtypes with `y0`.

    **Raises:** `InputError` naming the field and both shapes.
    """
    try:
        out = jax.eval_shape(func, t0, y0, args)
    except InputError:
        raise
    except Exception as e:  # the field cannot even be called on the state
        raise InputError(
            f"vector field {field_name(func)} could not be evaluated on a state of "
            f"shape {_describe(y0)}: {type(e).__name__}: {e}"
        ) from e
    y_struct = jax.tree_util.tree_structure(y0)
    o_struct = jax.tree_util.tree_structure(out)
    y_leaves = jax.tree_util.tree_leaves(y0)
    o_leaves = jax.tree_util.tree_leaves(out)
    same = y_struct == o_struct and all(
        tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
        for a, b in zip(y_leaves, o_leaves)
    )
    if not same:
        raise InputError(
            f"vector field {field_name(func)} returns {_describe(out)} but the state y0 "
            f"is {_describe(y0)}; dy/dt must have the shape and dtype of y. Check the "
            "field's output size (e.g. MLPField(in_size=..., out_size=...)) against the "
            "state, including any augmented dimensions."
        )


_TS_ORDER = ("ts must be strictly increasing (or strictly decreasing for a backward "
             "solve); repeated or unsorted times were given.")


def _check_ts(ts) -> None:
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise InputError(
            f"ts must be a 1-D array of at least two times (t0 first), got shape "
            f"{tuple(ts.shape)}."
        )
    if not _is_tracer(ts):
        diffs = np.diff(np.asarray(ts))
        if not (np.all(diffs > 0) or np.all(diffs < 0)):
            raise InputError(_TS_ORDER)


#: Memory the `recursive` adjoint may spend on stored solver steps when `odeint` picks the
#: number of checkpoints itself (`checkpoints="auto"`).
CHECKPOINT_BUDGET_BYTES = 16 * 2**20


def auto_checkpoints(y0, info: _SolverInfo, max_steps: int,
                     budget: int = CHECKPOINT_BUDGET_BYTES) -> int | None:
    """How many solver steps the `recursive` adjoint stores (`checkpoints="auto"`).

    Diffrax's default (`None`) keeps about log2(max_steps) checkpoints and recomputes
    the forward solve between them in the backward pass (the spiral step: 54 extra
    field evaluations on top of 27 forward ones, and a deeper program to compile). When
    the loop state of all `max_steps` steps fits in `budget` bytes, storing every step
    (`checkpoints=max_steps`) removes the recomputation. Intermediate counts measured
    no faster than `None` on the spiral (Diffrax's treeverse bookkeeping), so it is one
    or the other: `max_steps` when it fits, else `None`.

    The loop state of one step is estimated as about `stages + 4` copies of the state
    (`y`, the dense-output stages, the FSAL stage, error estimate and bookkeeping). Under
    `jax.vmap` the state seen here is one sample's, but the stored steps are allocated for
    the whole batch, so the batch size is counted in (see `_vmapped_size`).
    """
    per_step = max(1, _state_bytes(y0) * (info.evals_per_step + 5))
    return max_steps if max_steps * per_step <= budget else None


def _state_bytes(y0) -> int:
    """Bytes of the state, counting the copies the enclosing `jax.vmap`s make."""
    return sum(int(np.prod(np.shape(x))) * jnp.result_type(x).itemsize * _vmapped_size(x)
               for x in jax.tree_util.tree_leaves(y0))


def _vmapped_size(x) -> int:
    """How many copies of `x` the enclosing `jax.vmap`s (those applied outside this
    call) make: the product of the batch sizes of the nested batching tracers. 1 when
    not vmapped, or when JAX's internals cannot be read (then the budget is per sample)."""
    try:
        from jax._src.interpreters.batching import BatchTracer
    except ImportError:  # pragma: no cover - JAX internals moved
        return 1
    n = 1
    for _ in range(64):
        if not isinstance(x, BatchTracer):
            break
        bdim = getattr(x, "batch_dim", None)
        val = getattr(x, "val", None)
        if isinstance(bdim, int) and val is not None:
            n *= int(np.shape(val)[bdim])
        x = val
    return n


def engine_for(engine: str, *, solver: str, adjoint: str, dt0, integrals, checkpoints,
               max_steps: int, y0) -> tuple[str, str]:
    """Which engine runs a solve, and why: `("nodekit" | "diffrax", reason)`.

    nodekit's engine (`nodekit._rk`) covers the solve training spends its time in: an
    adaptive `dopri5` or `tsit5` solve (no `dt0`) differentiated by backpropagation
    (`adjoint="recursive"`, `checkpoints` `"auto"` or at least `max_steps`; the engine
    keeps about `2 sqrt(max_steps)` states, which must fit in `CHECKPOINT_BUDGET_BYTES`)
    or by the continuous adjoint (`"backsolve"`), of a state of one floating dtype,
    without step quadratures, and (for `"auto"`) not under `jax.vmap` (a batch solved per
    sample; the joint mode is one solve). Everything else goes to Diffrax."""
    if engine not in ENGINES:
        raise InputError(unknown_name_message("engine", engine, ENGINES))
    if engine == "diffrax":
        return "diffrax", "engine='diffrax' was asked for"
    from ._rk import PAIRS, engine_states

    leaves = jax.tree_util.tree_leaves(y0)
    dtypes = {jnp.result_type(x) for x in leaves}
    state_bytes = _state_bytes(y0)
    if solver not in PAIRS:
        why = f"solver {solver!r} (the engine has {', '.join(PAIRS)})"
    elif adjoint not in ("recursive", "backsolve"):
        why = f"adjoint {adjoint!r} (the engine has 'recursive' and 'backsolve')"
    elif dt0 is not None:
        why = "a fixed step dt0 (the engine is adaptive)"
    elif integrals is not None:
        why = "integrals accumulated on the step grid (regularisers)"
    elif adjoint == "recursive" and not (
            checkpoints == "auto" or (isinstance(checkpoints, int) and checkpoints >= max_steps)):
        why = f"checkpoints={checkpoints!r} (the engine keeps states its own way)"
    elif adjoint == "recursive" and (
            kept := engine_states(max_steps)) * state_bytes > CHECKPOINT_BUDGET_BYTES:
        why = (f"the engine's {kept} stored states of {state_bytes} bytes (max_steps="
               f"{max_steps}) exceed {CHECKPOINT_BUDGET_BYTES // 2**20} MiB")
    elif len(dtypes) != 1 or not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        why = "a state that is not of one floating dtype"
    elif engine == "auto" and any(_vmapped_size(x) > 1 for x in leaves):
        # Under vmap every sample's loop runs until the slowest is done and each stored
        # step becomes a scatter: measured slower than Diffrax's loop on the spiral
        # (1.65 vs 1.34 ms a step), so auto keeps Diffrax; engine="nodekit" still runs.
        return "diffrax", "a vmapped solve (batch_mode: vmap; the engine serves joint solves)"
    else:
        return "nodekit", "supported"
    if engine == "nodekit":
        raise InputError(f"engine='nodekit' cannot solve with {why}; use engine='auto' "
                         "(falls back to Diffrax) or engine='diffrax'.")
    return "diffrax", why


def _raise_on_failure(ys, stats: SolveStats, message_kwargs: dict):
    result = stats.result
    if not _is_tracer(result):
        codes = np.atleast_1d(np.asarray(result))
        bad = codes[codes != 0]
        if bad.size:
            raise SolverError(solver_failure_message(result_name(bad[0]), **message_kwargs))
        return ys
    messages = [solver_failure_message(n, **message_kwargs) for n in RESULT_NAMES]
    first = jax.tree_util.tree_leaves(ys)[0]
    first = eqx.branched_error_if(first, result != 0, result, messages)
    leaves, treedef = jax.tree_util.tree_flatten(ys)
    return jax.tree_util.tree_unflatten(treedef, [first] + leaves[1:])


def odeint(
    func: Callable[[Any, Any, Any], Any],
    y0,
    ts,
    *,
    solver: str = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    dt0: float | None = None,
    adjoint: str = "recursive",
    max_steps: int = 4096,
    args: Any = None,
    return_stats: bool = False,
    throw: bool = True,
    check: bool = True,
    checkpoints: int | str | None = "auto",
    engine: str = "auto",
):
    """Solve `dy/dt = func(t, y, args)` from `y0` at `ts[0]`, returning `y` at every `ts`.

    Like `torchdiffeq.odeint`, but the field takes `(t, y, args)` (Diffrax's order) and
    everything is differentiable, `jax.jit`-able and `jax.vmap`-able.

    **Arguments:**

    - `func`: the vector field `func(t, y, args) -> dy/dt`, same pytree/shape/dtype as `y`.
    - `y0`: the initial state (an array or any pytree of arrays).
    - `ts`: 1-D times, strictly increasing or decreasing; `ts[0]` is the initial time.
    - `solver`: one of `euler, midpoint, heun, ralston, rk4, bosh3, dopri5, tsit5, dopri8,
      kvaerno5` (the last is implicit, for stiff problems).
    - `rtol`, `atol`: tolerances of the adaptive (PID) step-size controller.
    - `dt0`: `None` for adaptive stepping; a number for fixed steps of that size
      (required by `euler` and `rk4`, which have no error estimate).
    - `adjoint`: `"recursive"` (backprop through the solver, checkpointed),
      `"backsolve"` (continuous adjoint) or `"direct"` (supports forward-mode AD).
    - `max_steps`: the most steps the solver may take. Keep it sane: backprop cost grows
      with `log(max_steps)`.
    - `args`: passed to `func` unchanged.
    - `return_stats`: also return a `SolveStats` (NFE, steps, result code).
    - `throw`: raise on solver failure with a message saying what to try. With
      `throw=False`, failures come back in `stats.result` (use it in batched training).
    - `check`: check the field's output shape against `y0` before compiling.
    - `checkpoints`: solver steps the `recursive` adjoint stores for the backward pass.
      `"auto"` (default): on Diffrax, every step when they fit in
      `CHECKPOINT_BUDGET_BYTES` (16 MiB), so small problems backpropagate without
      recomputing the forward solve (see `auto_checkpoints`); on the engine, its own
      scheme (the last `sqrt(max_steps)` steps and one state per segment: no recomputation
      for solves that short, one extra forward pass over the earlier steps of longer ones).
      `None` is Diffrax's default (about log2(max_steps) checkpoints, least memory, more
      recomputation); or a number (Diffrax).
    - `engine`: `"auto"` (default) solves with nodekit's own Runge–Kutta engine where it
      applies — `dopri5`/`tsit5`, adaptive, `adjoint` `"recursive"` or `"backsolve"`, not
      under `jax.vmap` — and with Diffrax otherwise (`engine_for` says which and why);
      `"diffrax"` always uses Diffrax; `"nodekit"` insists on the engine. Both give the
      same solution to the tolerance and the same gradients (`recursive`: those of the
      discretised solve with step sizes held fixed; `backsolve`: the continuous adjoint's,
      to the tolerance); the engine's training step is faster and compiles sooner (see
      `nodekit._rk` and benchmarks/RESULTS.md).

    **Returns:**

    `ys` with shape `(len(ts), *y0.shape)` (for pytrees, each leaf gains the leading
    axis), or `(ys, stats)` with `return_stats=True`.

    **Raises:**

    `InputError` for bad arguments or a field whose output does not match the state;
    `SolverError` (or, inside `jit`, an `EquinoxRuntimeError` with the same message)
    when the solve fails and `throw=True`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    ts = jnp.linspace(0.0, 1.0, 11)
    ys = nodekit.odeint(lambda t, y, args: -y, jnp.array([1.0]), ts, solver="dopri5")
    # ys[-1] ~ exp(-1)
    ```
    """
    return _odeint(func, y0, ts, solver=solver, rtol=rtol, atol=atol, dt0=dt0,
                   adjoint=adjoint, max_steps=max_steps, args=args,
                   return_stats=return_stats, throw=throw, check=check,
                   checkpoints=checkpoints, integrals=None, engine=engine)


def _odeint(func, y0, ts, *, solver, rtol, atol, dt0, adjoint, max_steps, args,
            return_stats, throw, check, checkpoints, integrals: str | None,
            engine: str = "auto"):
    """`odeint`'s body. With `integrals`, the state's last item holds running integrals
    `r` that must not steer the step size (the error norm is `state_norm`): for
    `"trapezoid"`, `y0` is `(y, r)` and `func` an augmented field (`(t, (y, r), args) ->
    (f, g)`, `(f, None)` for `(y, None)`), `y` is solved by `solver` and `r` integrated
    by the trapezoid rule on its step grid (see `nodekit._quadrature`); for `"stages"`,
    `r` is an ordinary part of the state, integrated at every stage."""
    if solver not in SOLVERS:
        raise InputError(unknown_name_message("solver", solver, list(SOLVERS)))
    if adjoint not in ADJOINTS:
        raise InputError(unknown_name_message("adjoint", adjoint, ADJOINTS))
    info = SOLVERS[solver]
    if not (rtol > 0 and atol > 0):
        raise InputError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_steps must be a positive integer, got {max_steps!r}.")
    if dt0 is None and not info.adaptive:
        raise InputError(
            f"solver {solver!r} has no error estimate, so it needs a fixed step size: "
            "pass dt0=... (or choose an adaptive solver such as 'tsit5')."
        )
    if dt0 is not None and not _is_tracer(dt0) and not dt0 != 0:
        raise InputError("dt0 must be non-zero.")
    which, _ = engine_for(engine, solver=solver, adjoint=adjoint, dt0=dt0, integrals=integrals,
                          checkpoints=checkpoints, max_steps=max_steps, y0=y0)
    if checkpoints == "auto":
        checkpoints = auto_checkpoints(y0, info, max_steps)
    elif checkpoints is not None and (isinstance(checkpoints, bool) or not isinstance(checkpoints, int)
                                      or checkpoints < 1):
        raise InputError(
            f"checkpoints must be 'auto', None or a positive integer, got {checkpoints!r}.")
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    _check_ts(ts)
    if check:
        check_field(func, ts[0], y0, args)
    if which == "nodekit":
        from ._rk import rk_solve

        if _is_tracer(ts):  # the check Diffrax's SaveAt makes at run time (repeats pass)
            d = jnp.diff(ts)
            ts = eqx.error_if(ts, ~(jnp.all(d >= 0) | jnp.all(d <= 0)), _TS_ORDER)
        ys, counts = rk_solve(func, y0, ts, args, solver=solver, rtol=rtol, atol=atol,
                              max_steps=max_steps, adjoint=adjoint)
        counts = counts._asdict()
    else:
        from ._diffrax_solve import diffrax_solve

        ys, counts = diffrax_solve(func, y0, ts, args, info=info, rtol=rtol, atol=atol, dt0=dt0,
                                   adjoint=adjoint, max_steps=max_steps,
                                   checkpoints=checkpoints, integrals=integrals)
    stats = SolveStats(**counts)
    if throw:
        ys = _raise_on_failure(ys, stats, dict(solver=solver, rtol=rtol, atol=atol,
                                               max_steps=max_steps))
    return (ys, stats) if return_stats else ys


def odeint_step_quadrature(func, y0, ts, *, integrals: str = "trapezoid", **kwargs):
    """`odeint` for an augmented state whose last item holds running integrals `r`,
    which never shrink the steps (the error norm sees the rest of the state alone):
    `integrals="trapezoid"` accumulates them once per solver step by the trapezoid rule
    (see `nodekit._quadrature`), `"stages"` integrates them with the solver's stages
    (worth it when the integrands reuse the field value the stages compute anyway).
    `kwargs` as `odeint`'s, with the same defaults."""
    bound = inspect.signature(odeint).bind(func, y0, ts, **kwargs)
    bound.apply_defaults()
    return _odeint(**bound.arguments, integrals=integrals)
