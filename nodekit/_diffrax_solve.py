"""The solves `odeint` hands to Diffrax: every solver, adjoint and step quadrature that
nodekit's own engine (`nodekit._rk`) does not cover.

Imported on first use (by `odeint` when `engine_for` picks Diffrax, or for `nodekit.RK4`):
a training run on the engine never imports Diffrax, Optimistix or Lineax, which is about
a quarter of the warm start-up time (benchmarks/RESULTS.md, first step).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._errors import InputError, unknown_name_message
from ._odeint import ADJOINTS
from ._quadrature import StepQuadrature, state_norm, with_root_tolerances

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
    sol = diffrax.diffeqsolve(diffrax.ODETerm(f), nodekit.RK4(), 0.0, 1.0, 0.01, y0)
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


def make_adjoint(name: str, solver, controller, checkpoints: int | None = None) -> diffrax.AbstractAdjoint:
    """A Diffrax adjoint from its nodekit name.

    - `recursive`: backpropagate through the solver's operations, storing `checkpoints`
      solver steps (`None`: Diffrax's binomial checkpointing, memory O(log steps), with
      recomputation; see `nodekit._odeint.auto_checkpoints`). Exact gradients of the
      discretised solve.
    - `backsolve`: the continuous adjoint (solve the adjoint ODE backwards; memory
      O(1) in the number of steps; gradients accurate to the solver tolerance).
    - `direct`: backpropagate through the solve without checkpointing (supports
      forward-mode autodiff, e.g. `jax.jvp`, at a higher memory cost).

    **Example:**

    ```python
    adjoint = make_adjoint("backsolve", diffrax.Tsit5(), diffrax.PIDController(rtol=1e-6, atol=1e-8))
    ```
    """
    if name == "recursive":
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
    if name == "backsolve":
        return diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=controller)
    if name == "direct":
        return diffrax.DirectAdjoint()
    raise InputError(unknown_name_message("adjoint", name, ADJOINTS))


def diffrax_solve(func, y0, ts, args, *, info, rtol, atol, dt0, adjoint, max_steps,
                  checkpoints, integrals):
    """`odeint`'s solve on Diffrax (arguments already checked there): `(ys, counts)` with
    `counts` the `SolveStats` fields as a dict (Diffrax's result code, `throw=False`)."""
    t0, t1 = ts[0], ts[-1]
    if adjoint == "backsolve" and not isinstance(func, eqx.Module):
        # The continuous adjoint differentiates only explicit inputs: turn arrays a
        # closure captures (e.g. a vmapped field's parameters) into explicit leaves.
        func = eqx.filter_closure_convert(func, t0, y0, args)
    solver_obj = info.cls()
    if dt0 is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = jnp.where(t1 >= t0, jnp.abs(dt0), -jnp.abs(dt0))
    forward_solver, forward_controller = solver_obj, controller
    if integrals == "trapezoid":
        solver_obj = with_root_tolerances(solver_obj, rtol, atol)
        forward_solver = StepQuadrature(solver_obj)
    if integrals is not None and dt0 is None:
        forward_controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=state_norm)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(func), forward_solver, t0, t1, dt0, y0, args=args,
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=forward_controller,
        adjoint=make_adjoint(adjoint, solver_obj, controller, checkpoints),
        max_steps=max_steps, throw=False,
    )
    num_steps = sol.stats["num_steps"]
    init = 1 if info.fsal else 0
    if dt0 is None:
        init += 2  # the controller's first-step guess evaluates the field twice
    counts = dict(nfe=init + info.evals_per_step * num_steps, num_steps=num_steps,
                  num_accepted=sol.stats["num_accepted_steps"],
                  num_rejected=sol.stats["num_rejected_steps"], result=sol.result._value)
    return sol.ys, counts
