"""The solves `odeint` hands to Diffrax: every solver, adjoint, step quadrature, dense
output and event that nodekit's own engine (`nodekit._rk`) does not cover.

Imported on first use (by `odeint` when the integrator is Diffrax, or for `nodekit.RK4`):
a training run on the engine never imports Diffrax, Optimistix or Lineax, which is about
a quarter of the warm start-up time (benchmarks/RESULTS.md, first step).

`adjoint="backsolve"` is nodekit's own continuous adjoint here too (`_backsolve_solve`):
the forward solve and every backward interval run on Diffrax's solvers, the result of
each backward interval is checked (a failure gives an error or NaN gradients, never a
wrong gradient), and gradients with respect to `ts` are formed the way the engine forms
them (Diffrax's `BacksolveAdjoint` checks neither, and refuses `ts` gradients).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree

from ._errors import RESULT_NAMES, InputError, unknown_name_message
from ._quadrature import StepQuadrature, state_norm, with_root_tolerances
from ._settings import ADJOINTS, SolveSettings

_rk4_tableau = diffrax.ButcherTableau(
    c=np.array([0.5, 0.5, 1.0]),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
)


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge–Kutta method (fixed step only: no error
    estimate). A Diffrax solver; `nodekit.odeint(..., solver="rk4", dt0=0.01)` uses it.

    **Example:**

    ```python
    import diffrax
    import jax.numpy as jnp
    import nodekit

    sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, args: -y), nodekit.RK4(),
                              0.0, 1.0, 0.01, jnp.ones(2))
    ```
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        return 4


def solver_class(class_name: str) -> type:
    """The Diffrax solver class of that name (`"RK4"` is nodekit's)."""
    return RK4 if class_name == "RK4" else getattr(diffrax, class_name)


def make_adjoint(name: str, checkpoints: int | None = None) -> diffrax.AbstractAdjoint:
    """The Diffrax adjoint of a nodekit name that Diffrax differentiates itself.

    - `recursive`: backpropagate through the solver's operations, storing `checkpoints`
      solver steps (`None`: Diffrax's binomial checkpointing, memory O(log steps), with
      recomputation; see `nodekit._settings.auto_checkpoints`). Exact gradients of the
      discretised solve.
    - `direct`: backpropagate through the solve without checkpointing (supports
      forward-mode autodiff, e.g. `jax.jvp`, at a higher memory cost).

    (`backsolve`, the continuous adjoint, is nodekit's own: see `_backsolve_solve`.)

    **Example:**

    ```python
    from nodekit._diffrax_solve import make_adjoint

    adjoint = make_adjoint("recursive", checkpoints=64)
    ```
    """
    if name == "recursive":
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
    if name == "direct":
        return diffrax.DirectAdjoint()
    raise InputError(unknown_name_message("adjoint", name, ADJOINTS))


def result_code(result) -> jax.Array:
    """A Diffrax result as nodekit's integer code (its position in `RESULT_NAMES`)."""
    code = jnp.zeros((), jnp.int32)
    for i, name in enumerate(RESULT_NAMES):
        item = getattr(diffrax.RESULTS, name, None)
        if item is not None and i:
            code = jnp.where(result == item, jnp.int32(i), code)
    return code


class DiffraxDense(eqx.Module):
    """Diffrax's dense output (`SaveAt(dense=True)`), evaluated at any time of the
    solved interval; differentiable."""

    interpolation: Any

    def evaluate(self, t):
        return self.interpolation.evaluate(t)


class _Condition(eqx.Module):
    """An event condition `cond(t, y, args)` as Diffrax calls it (with keywords)."""

    cond: Any

    def __call__(self, t, y, args, **kwargs):
        return self.cond(t, y, args)


def _solver_and_controller(settings: SolveSettings, ts, integrals):
    """`(forward solver, forward controller, plain solver, plain controller, dt0)`."""
    info = settings.info
    t0, t1 = ts[0], ts[-1]
    rtol, atol, dt0 = settings.rtol, settings.atol, settings.dt0
    solver = info.cls()
    if dt0 is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = jnp.where(t1 >= t0, abs(dt0), -abs(dt0)).astype(ts.dtype)
        # Diffrax fills in an implicit solver's root-finder tolerances from an adaptive
        # controller only: with a fixed step they come from rtol and atol.
        solver = with_root_tolerances(solver, rtol, atol)
    forward_solver, forward_controller = solver, controller
    if integrals == "trapezoid":
        solver = with_root_tolerances(solver, rtol, atol)
        forward_solver = StepQuadrature(solver)
    if integrals is not None and dt0 is None:
        forward_controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=state_norm)
    return forward_solver, forward_controller, solver, controller, dt0


def _forward(func, y0, ts, args, *, settings: SolveSettings, integrals, dense: bool, event,
             adjoint):
    """One `diffeqsolve` saving at `ts` and at the time reached: `(ys, counts, extras)`
    with `counts` the `SolveStats` fields and `extras` the event time and dense output."""
    info = settings.info
    forward_solver, forward_controller, _, _, dt0 = _solver_and_controller(settings, ts,
                                                                          integrals)
    ev = None
    if event is not None:
        # The event time's Newton iteration at the solver's tolerances, but never below
        # what the time's dtype resolves: at rtol=1e-6, atol=1e-8 in float32 its
        # convergence test sat at the rounding level (a falling ball's impact converged
        # or hit the root finder's step limit depending on XLA's rounding of one add).
        floor = 16 * float(jnp.finfo(jnp.result_type(ts)).eps)
        ev = diffrax.Event(_Condition(event),
                           root_finder=optx.Newton(rtol=max(settings.rtol, floor),
                                                   atol=max(settings.atol, floor)))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(func), forward_solver, ts[0], ts[-1], dt0, y0, args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, dense=dense), stepsize_controller=forward_controller,
        adjoint=adjoint, event=ev, max_steps=settings.max_steps, throw=False,
    )
    # Diffrax saves the time reached right after the last saved output time (so after a
    # failure or an event it is not the last entry); outputs it did not reach are inf.
    count = jnp.sum(jnp.isfinite(sol.ts))
    last = count - 1
    t_end = sol.ts[last]
    reached = jnp.arange(ts.shape[0]) < last

    def keep(y):
        y_end = y[last]
        fill = y_end if event is not None else jnp.full_like(y_end, jnp.inf)
        mask = reached.reshape((-1,) + (1,) * (y.ndim - 1))
        return jnp.where(mask, y[:-1], fill[None])

    ys = jax.tree_util.tree_map(keep, sol.ys)
    code = result_code(sol.result)
    num_steps = sol.stats["num_steps"]
    # Diffrax 0.7.2 makes no evaluations to choose the first step (its PID controller's
    # first step is 0.01 for the wrapped terms it builds): FSAL solvers evaluate once
    # at the start, then `evals_per_step` per attempted step (checked by counting).
    init = 1 if info.fsal else 0
    counts = dict(nfe=(init + info.evals_per_step * num_steps).astype(jnp.int32),
                  num_steps=num_steps.astype(jnp.int32),
                  num_accepted=sol.stats["num_accepted_steps"].astype(jnp.int32),
                  num_rejected=sol.stats["num_rejected_steps"].astype(jnp.int32),
                  result=code, t_reached=t_end)
    extras = dict(t_event=t_end if event is not None else None,
                  dense=DiffraxDense(sol.interpolation) if dense else None)
    return ys, counts, extras


def diffrax_solve(func, y0, ts, args, *, settings: SolveSettings, checkpoints, integrals,
                  dense: bool = False, event=None, throw: bool = True):
    """`odeint`'s solve on Diffrax (arguments already checked there): `(ys, counts,
    extras)` with `counts` the `SolveStats` fields as a dict (Diffrax's result code) and
    `extras` the event time and dense output. `checkpoints`: resolved (`None` or a
    count)."""
    if settings.adjoint == "backsolve":
        return _backsolve_solve(func, y0, ts, args, settings=settings, integrals=integrals,
                                throw=throw)
    return _forward(func, y0, ts, args, settings=settings, integrals=integrals, dense=dense,
                    event=event, adjoint=make_adjoint(settings.adjoint, checkpoints))


def _backsolve_solve(func, y0, ts, args, *, settings: SolveSettings, integrals, throw: bool):
    """The continuous adjoint on Diffrax: the forward solve as usual; the backward pass
    solves the state, its adjoint `a` and the parameters' adjoint `g` backwards between
    consecutive output times (`da/dt = -a df/dy`, `dg/dt = -a df/dp`), restarting the
    state from the forward solution at each output time and adding that output's
    cotangent to `a` (as the engine's `_rk._backsolve`, and Diffrax's
    `BacksolveAdjoint`). The field's arrays must be explicit (an Equinox module's
    fields, `args`) or closed over by a plain function (converted here)."""
    from ._rk import refuse_failed_backward

    conv = func if isinstance(func, eqx.Module) else eqx.filter_closure_convert(
        func, ts[0], y0, args)
    arrays, static = eqx.partition((conv, args), eqx.is_array)
    floats, others = eqx.partition(arrays, eqx.is_inexact_array)
    info = settings.info
    _, _, solver, controller, dt0 = _solver_and_controller(settings, ts, integrals)
    fixed = settings.dt0

    def rebuild(pf, other):
        pf = jax.tree_util.tree_map(jnp.asarray, pf)
        return eqx.combine(pf, other, static)

    def forward(pf, other, y, ts):
        fn, a = rebuild(pf, other)
        return _forward(fn, y, ts, a, settings=settings, integrals=integrals, dense=False,
                        event=None, adjoint=diffrax.RecursiveCheckpointAdjoint())[:2]

    @jax.custom_vjp
    def solve(pf, other, y, ts):
        return forward(pf, other, y, ts)

    times_perturbed = []

    def solve_fwd(pf, other, y, ts):
        times_perturbed.append(ts.perturbed)
        pf, other, y, ts = jax.tree_util.tree_map(
            lambda x: x.value, (pf, other, y, ts),
            is_leaf=lambda x: isinstance(x, jax.custom_derivatives.CustomVJPPrimal))
        ys, counts = forward(pf, other, y, ts)
        return (ys, counts), (pf, other, ts, ys)

    def solve_bwd(res, cts):
        pf, other, ts, ys = res
        ct_ys = jax.tree_util.tree_map(
            lambda c, y: jnp.zeros(y.shape, y.dtype)
            if isinstance(c, jax.custom_derivatives.SymbolicZero) else c,
            cts[0], ys, is_leaf=lambda x: isinstance(x, jax.custom_derivatives.SymbolicZero))
        row = jax.tree_util.tree_map(lambda y: y[0], ys)
        flat_row, unravel = ravel_pytree(row)
        n, dtype = flat_row.shape[0], flat_row.dtype
        flat = jax.vmap(lambda r: ravel_pytree(r)[0])
        flat_ys, flat_ct = flat(ys), flat(ct_ys)
        flat_p, unravel_p = ravel_pytree(pf)

        def field(t, y, p):
            fn, a = rebuild(p, other)
            return ravel_pytree(fn(t, unravel(y), a))[0].astype(dtype)

        def augmented(t, z, _):
            fy, vjp = jax.vjp(lambda y, p: field(t, y, p), z[:n], pf)
            a_y, a_p = vjp(z[n: 2 * n])
            return jnp.concatenate([fy, -a_y, -ravel_pytree(a_p)[0].astype(dtype)])

        def interval(k, c):
            i = ts.shape[0] - 1 - k  # from ts[i] back to ts[i - 1]
            a, g, code = c
            step = None if fixed is None else jnp.where(ts[i - 1] >= ts[i], abs(fixed),
                                                        -abs(fixed)).astype(ts.dtype)
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(augmented), solver, ts[i], ts[i - 1], step,
                jnp.concatenate([flat_ys[i], a, g]), saveat=diffrax.SaveAt(t1=True),
                stepsize_controller=controller, max_steps=settings.max_steps, throw=False)
            z = sol.ys[-1]
            code = jnp.where(code == 0, result_code(sol.result), code)  # the first failure
            return z[n: 2 * n] + flat_ct[i - 1], z[2 * n:], code

        a, g, code = jax.lax.fori_loop(
            0, ts.shape[0] - 1, interval,
            (flat_ct[-1], jnp.zeros(flat_p.shape, dtype), jnp.zeros((), jnp.int32)))
        gp = unravel_p(g.astype(flat_p.dtype))
        ct_ts = None
        if times_perturbed[-1]:
            fs = jax.vmap(lambda t, y: field(t, y, pf))(ts, flat_ys)
            ct_ts = jnp.sum(flat_ct * fs, axis=1)
            ct_ts = ct_ts.at[0].set(jnp.vdot(flat_ct[0], fs[0]) - jnp.vdot(a, fs[0]))
            ct_ts = ct_ts.astype(ts.dtype)
        gp, a, ct_ts = refuse_failed_backward((gp, a, ct_ts), code, throw=throw,
                                              solver=settings.solver,
                                              max_steps=settings.max_steps)
        return gp, None, unravel(a), ct_ts

    solve.defvjp(solve_fwd, solve_bwd, symbolic_zeros=True)
    del info
    ys, counts = solve(floats, others, y0, ts)
    counts = {k: jax.lax.stop_gradient(v) for k, v in counts.items()}
    return ys, counts, dict(t_event=None, dense=None)
