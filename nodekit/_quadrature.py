"""Running integrals by the trapezoid rule on the solver's own step grid.

The regularisers' penalties are integrals `r = integral of g(t, y(t)) dt` along the
solve. Putting `r` into the ODE state (`d/dt (y, r) = (f, g)`) makes the solver
evaluate `g` at every stage of every step: six or seven times a step for `tsit5` and
`dopri5`, although the penalty needs nowhere near that accuracy. `g` is the expensive
part (a Jacobian-vector product, `d` of them for an exact Jacobian), so that costs up to
`(1 + d)` times the unregularised step.

`StepQuadrature` wraps any Diffrax solver instead: the wrapped solver steps `y` alone
(the field without the integrands), and after each step the integrands are evaluated
once, at the step's end, and accumulated by the trapezoid rule,

    r_(n+1) = r_n + (t_(n+1) - t_n) * (g_n + g_(n+1)) / 2,

with `g_n` carried in the solver state (so each attempted step costs one evaluation of
`g`, not one per stage). The rule is second-order accurate in the step size, exact for
integrands linear in time, and the step sizes are those of the unregularised solve
(the error control sees `y` only; see `state_norm`): the penalty measures the solve
without changing it. Dense output interpolates `y` with the wrapped solver's
interpolation and `r` linearly.

The term given to `diffeqsolve` must be an `ODETerm` whose field takes the state
`(y, r)` and returns `(f, g)`, and returns `(f, None)` for `(y, None)` (the field
alone; see `_regularisers._AugmentedField`). Under `BacksolveAdjoint` the backward
solve uses that full field (the continuous adjoint of the augmented ODE), so pass the
unwrapped solver to the adjoint.
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx


class _FieldOnly(diffrax.AbstractTerm):
    """The `y`-part of an augmented term: its field called on `(y, None)`, so the
    integrands are never evaluated at the wrapped solver's stages."""

    terms: Any

    def vf(self, t, y, args):
        return self.terms.vf(t, (y, None), args)[0]

    def contr(self, t0, t1, **kwargs):
        return self.terms.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.terms.prod((vf, None), control)[0]


class _QuadratureInterpolation(diffrax.AbstractLocalInterpolation):
    """`y` from the wrapped solver's interpolation, `r` linear over the step."""

    t0: Any
    t1: Any
    y_interpolation: diffrax.AbstractLocalInterpolation
    r0: Any
    r1: Any

    def evaluate(self, t0, t1=None, left=True):
        if t1 is not None:
            return jax.tree_util.tree_map(
                lambda a, b: a - b, self.evaluate(t1, left=left), self.evaluate(t0, left=left)
            )
        y = self.y_interpolation.evaluate(t0, left=left)
        h = self.t1 - self.t0
        safe_h = jnp.where(h == 0, 1, h)
        theta = jnp.where(h == 0, 0, (t0 - self.t0) / safe_h)
        return y, self.r0 + jnp.asarray(theta, self.r0.dtype) * (self.r1 - self.r0)


def _interpolation(inner_cls, *, t0, t1, y_info, r0, r1):
    return _QuadratureInterpolation(t0, t1, inner_cls(t0=t0, t1=t1, **y_info), r0, r1)


class StepQuadrature(diffrax.AbstractSolver):
    """A Diffrax solver for the state `(y, r)`: `solver` steps `y`, and the running
    integrals `r` advance by the trapezoid rule with one integrand evaluation per step
    (see the module docstring).

    **Arguments:**

    - `solver`: the Diffrax solver for `y` (explicit or implicit).

    **Example:**

    ```python
    import diffrax
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    from nodekit._quadrature import StepQuadrature, state_norm

    aug = nodekit.augmented_field(field, (nodekit.KineticEnergy(1.0),))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(aug), StepQuadrature(diffrax.Tsit5()), 0.0, 1.0, None,
        (y0, jnp.zeros(1)),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8, norm=state_norm))
    ```
    """

    solver: diffrax.AbstractSolver

    term_structure = diffrax.AbstractTerm

    @property
    def interpolation_cls(self):  # pyright: ignore
        return functools.partial(_interpolation, self.solver.interpolation_cls)

    def order(self, terms):
        return self.solver.order(_FieldOnly(terms))

    def error_order(self, terms):
        return self.solver.error_order(_FieldOnly(terms))

    @staticmethod
    def _integrands(terms, t, y, r, args):
        # `terms.vf` (not the bare field) so that Diffrax's time reversal applies.
        return terms.vf(t, (y, r), args)[1]

    def init(self, terms, t0, t1, y0, args):
        y, r = y0
        inner = self.solver.init(_FieldOnly(terms), t0, t1, y, args)
        return inner, self._integrands(terms, t0, y, r, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y, r = y0
        inner, g0 = solver_state
        y1, y_error, y_info, inner, result = self.solver.step(
            _FieldOnly(terms), t0, t1, y, args, inner, made_jump
        )
        g1 = self._integrands(terms, t1, y1, r, args)
        # The control, not `t1 - t0`: Diffrax solves backward in time as forward in -t
        # and puts the sign into the term's control.
        h = jnp.asarray(terms.contr(t0, t1), r.dtype)
        r1 = r + 0.5 * h * (g0 + g1)
        if y_error is not None:
            y_error = (y_error, jnp.zeros_like(r))
        dense_info = dict(y_info=y_info, r0=r, r1=r1)
        return (y1, r1), y_error, dense_info, (inner, g1), result

    def func(self, terms, t0, y0, args):
        y, r = y0
        return self.solver.func(_FieldOnly(terms), t0, y, args), jnp.zeros_like(r)


def state_norm(x) -> jax.Array:
    """The step-size controller's norm for a state whose last item holds the running
    integrals (`(y, r)`, or `(y, a, r)` for a CNF): the RMS norm of the rest, so that
    the integrals never shrink the steps."""
    return optx.rms_norm(tuple(x[:-1]))


def with_root_tolerances(solver, rtol, atol):
    """An implicit solver whose root finder has explicit tolerances: Diffrax fills them
    in from the step-size controller only for a bare implicit solver, not a wrapped one.
    Explicit solvers come back unchanged."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    finder = diffrax.VeryChord(rtol=rtol, atol=atol, norm=optx.rms_norm)
    return eqx.tree_at(lambda s: s.root_finder, solver, finder)
