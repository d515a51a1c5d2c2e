"""`NeuralODE`: a vector field plus its solve settings, as one Equinox module."""

from __future__ import annotations

from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._errors import InputError, unknown_name_message
from ._odeint import ADJOINTS, ENGINES, SOLVERS, SolveStats, odeint, odeint_step_quadrature


#: How a batch of initial states is solved: one solve per sample (`vmap`, each sample
#: picks its own steps) or the whole batch as one ODE state (`joint`, one shared step
#: size, as torchdiffeq and FFJORD do; also one parameter adjoint for `backsolve`).
BATCH_MODES = ("vmap", "joint")


class Solution(eqx.Module):
    """The result of `NeuralODE.solve`: the states `ys` at the requested times and the
    solver statistics `stats` (a `SolveStats`).

    **Example:**

    ```python
    sol = model.solve(ts, y0)
    sol.ys.shape, int(sol.stats.nfe)
    ```
    """

    ys: Any
    stats: SolveStats


class NeuralODE(eqx.Module):
    """A neural ODE: `y(t)` solves `dy/dt = field(t, y, args)` from `y0`.

    **Arguments:**

    - `field`: the vector field (an `AbstractVectorField` or any Equinox module or
      function `f(t, y, args)`).
    - `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`:
      as in `nodekit.odeint`.
    - `augment_dim`: ANODE augmentation (Dupont et al. 2019): append this many zeros to
      the initial state; the field then acts on `size + augment_dim` dimensions.

    **Example:**

    ```python
    key = jax.random.PRNGKey(0)
    model = nodekit.NeuralODE(nodekit.MLPField(2, width=32, key=key), solver="tsit5")
    ts = jnp.linspace(0, 1, 10)
    ys = model(ts, jnp.array([1.0, 0.0]))                 # (10, 2)
    batch = jax.vmap(model, in_axes=(None, 0))(ts, y0s)   # (B, 10, 2)
    ```
    """

    field: Any
    solver: str = eqx.field(static=True, default="tsit5")
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float | None = eqx.field(static=True, default=None)
    adjoint: str = eqx.field(static=True, default="recursive")
    max_steps: int = eqx.field(static=True, default=4096)
    augment_dim: int = eqx.field(static=True, default=0)
    checkpoints: int | str | None = eqx.field(static=True, default="auto")
    engine: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if self.solver not in SOLVERS:
            raise InputError(unknown_name_message("solver", self.solver, list(SOLVERS)))
        if self.adjoint not in ADJOINTS:
            raise InputError(unknown_name_message("adjoint", self.adjoint, ADJOINTS))
        if self.engine not in ENGINES:
            raise InputError(unknown_name_message("engine", self.engine, ENGINES))
        if self.augment_dim < 0:
            raise InputError(f"augment_dim must be >= 0, got {self.augment_dim}.")

    def augment(self, y0):
        """Append `augment_dim` zeros to the last axis of `y0` (no-op when 0)."""
        if self.augment_dim == 0:
            return y0
        pad = jnp.zeros((*y0.shape[:-1], self.augment_dim), y0.dtype)
        return jnp.concatenate([y0, pad], axis=-1)

    def _odeint(self, func, y0, ts, args, throw, check=True, integrals=None):
        # `integrals`: see `nodekit._odeint.odeint_step_quadrature`
        solve = odeint if integrals is None else partial(odeint_step_quadrature,
                                                         integrals=integrals)
        return solve(
            func,
            y0,
            ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            checkpoints=self.checkpoints,
            engine=self.engine,
            args=args,
            return_stats=True,
            throw=throw,
            check=check,
        )

    def solve(self, ts, y0, *, args=None, throw: bool = True) -> Solution:
        """Solve from one (unbatched) `y0`; returns a `Solution` with `ys` of shape
        `(len(ts), size + augment_dim)` and the solver statistics."""
        ys, stats = self._odeint(self.field, self.augment(y0), ts, args, throw)
        return Solution(ys=ys, stats=stats)

    def solve_batch(
        self, ts, y0s, *, args=None, mode: str = "vmap", throw: bool = True
    ) -> Solution:
        """Solve a batch `y0s` of shape `(B, size)`; `ys` has shape `(B, len(ts), ...)`.

        `mode="vmap"` solves each sample on its own (per-sample statistics, shape `(B,)`);
        `mode="joint"` solves the batch as one ODE state with one shared step size
        (scalar statistics; NFE comparable with torchdiffeq's batched solves).
        """
        if mode not in BATCH_MODES:
            raise InputError(unknown_name_message("batch mode", mode, BATCH_MODES))
        if mode == "vmap":
            return jax.vmap(lambda y: self.solve(ts, y, args=args, throw=throw))(y0s)
        field = self.field

        def batched_field(t, y, args):
            return jax.vmap(field, in_axes=(None, 0, None))(t, y, args)

        ys, stats = self._odeint(batched_field, self.augment(y0s), ts, args, throw)
        return Solution(ys=jnp.moveaxis(ys, 0, 1), stats=stats)

    def __call__(self, ts, y0, *, args=None):
        """The trajectory at `ts` from one `y0`: shape `(len(ts), size + augment_dim)`."""
        return self.solve(ts, y0, args=args).ys
