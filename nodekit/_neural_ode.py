"""`NeuralODE`: a vector field plus its `SolveSettings`, as one Equinox module; and
`Solution`, what a solve returns (states at the output times, statistics, the event
time, and dense output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._checks import check_batch, check_choice, check_int
from ._errors import InputError
from ._fields import JointField
from ._odeint import SolveStats, solve as _solve
from ._settings import BATCH_MODES as BATCH_MODES, SolveSettings


class Solution(eqx.Module):
    """The result of `NeuralODE.solve` / `solve_batch`.

    **Fields:**

    - `ys`: the states at the requested times, `(len(ts), ...)` (a batch: `(B, len(ts),
      ...)`).
    - `stats`: the `SolveStats` (NFE, steps, result code, integrator).
    - `ts`: the requested times.
    - `t_event`: the event time when the solve had an `event` (else `None`).
    - `dense`: the dense output when solved with `dense=True` (else `None`); use
      `evaluate`.
    - `batch_mode`: `None` for one solve, `"vmap"` or `"joint"` for a batch.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    model = nodekit.NeuralODE(lambda t, y, args: -y)
    sol = model.solve(jnp.linspace(0.0, 1.0, 3), jnp.ones(2), dense=True)
    print(sol.ys.shape, int(sol.stats.nfe), sol.evaluate(0.25))   # ~exp(-0.25)
    ```
    """

    ys: PyTree[Array]
    stats: SolveStats
    ts: Float[Array, " times"] | None = None
    t_event: Float[Array, "*batch"] | None = None
    dense: Any = None
    batch_mode: str | None = eqx.field(static=True, default=None)

    def evaluate(self, t: Float[ArrayLike, "*times"]) -> PyTree[Array]:
        """The state at time(s) `t` in the solved interval, from the solver's own
        interpolant (fourth order for `dopri5`/`tsit5`). Differentiable (with respect to
        the model, `y0` and `t`) and `jit`-able.

        **Arguments:**

        - `t`: a time (scalar) or a 1-D array of times.

        **Returns:** the state at `t` (one solve: `y0`'s shape; a 1-D `t` adds a leading
        axis; a batch adds the batch axis first).

        **Raises:** `InputError` when the solve kept no dense output (`dense=False`).

        **Example:**

        ```python
        import jax.numpy as jnp
        import nodekit

        sol = nodekit.NeuralODE(lambda t, y, args: -y).solve(
            jnp.array([0.0, 2.0]), jnp.ones(1), dense=True)
        sol.evaluate(jnp.array([0.5, 1.5]))   # ~[[exp(-0.5)], [exp(-1.5)]]
        ```
        """
        if self.dense is None:
            raise InputError("this Solution has no dense output: solve with dense=True "
                             "(model.solve(ts, y0, dense=True)) to evaluate between the "
                             "output times.")
        t = jnp.asarray(t)
        if t.ndim > 1:
            raise InputError(f"evaluate takes a time or a 1-D array of times, got shape "
                             f"{tuple(t.shape)}.")

        def one(dense, t):
            if t.ndim == 0:
                return dense.evaluate(t)
            return jax.vmap(dense.evaluate)(t)

        if self.batch_mode == "vmap":
            return jax.vmap(lambda d: one(d, t))(self.dense)
        out = one(self.dense, t)
        if self.batch_mode == "joint" and t.ndim == 1:  # (M, B, ...) -> (B, M, ...)
            out = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, 1), out)
        return out


class NeuralODE(eqx.Module):
    """A neural ODE: `y(t)` solves `dy/dt = field(t, y, args)` from `y0`.

    **Arguments:**

    - `field`: the vector field (an `AbstractVectorField` or any Equinox module or
      function `f(t, y, args)`).
    - `settings`: a `nodekit.SolveSettings` (defaults when omitted). Keyword arguments
      `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`
      override single settings, as in `nodekit.odeint`.
    - `augment_dim`: ANODE augmentation (Dupont et al. 2019): append this many zeros to
      the initial state; the field then acts on `size + augment_dim` dimensions.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    key = jax.random.PRNGKey(0)
    model = nodekit.NeuralODE(nodekit.MLPField(2, width=32, key=key), solver="tsit5")
    ts = jnp.linspace(0, 1, 10)
    ys = model(ts, jnp.array([1.0, 0.0]))                  # (10, 2)
    y0s = jnp.ones((4, 2))
    batch = model.solve_batch(ts, y0s).ys                  # (4, 10, 2)
    ```
    """

    field: Any
    settings: SolveSettings
    augment_dim: int = eqx.field(static=True)

    def __init__(self, field: Callable, settings: SolveSettings | None = None, *,
                 augment_dim: int = 0, **overrides):
        if not callable(field):
            raise InputError(f"NeuralODE field must be callable as field(t, y, args), got "
                             f"{type(field).__name__}.")
        self.field = field
        self.settings = SolveSettings.resolve(settings, **overrides)
        self.augment_dim = check_int("augment_dim", augment_dim, minimum=0)

    # the settings, read through (older code reads `model.rtol`)
    solver = property(lambda self: self.settings.solver)
    rtol = property(lambda self: self.settings.rtol)
    atol = property(lambda self: self.settings.atol)
    dt0 = property(lambda self: self.settings.dt0)
    adjoint = property(lambda self: self.settings.adjoint)
    max_steps = property(lambda self: self.settings.max_steps)
    checkpoints = property(lambda self: self.settings.checkpoints)
    engine = property(lambda self: self.settings.engine)

    def augment(self, y0):
        """Append `augment_dim` zeros to the last axis of `y0` (no-op when 0)."""
        if self.augment_dim == 0:
            return y0
        y0 = jnp.asarray(y0)
        pad = jnp.zeros((*y0.shape[:-1], self.augment_dim), y0.dtype)
        return jnp.concatenate([y0, pad], axis=-1)

    def _odeint(self, func, y0, ts, args, throw, check=True, integrals=None,
                vmap_size=None, dense=False, event=None, caller="NeuralODE.solve"):
        """`(ys, stats, extras)` of `func` from `y0` with this model's settings (the
        models' entry point; `integrals`: see `nodekit._odeint.solve`)."""
        return _solve(func, y0, ts, self.settings, args=args, throw=throw, check=check,
                      integrals=integrals, vmap_size=vmap_size, dense=dense, event=event,
                      caller=caller, augment_dim=self.augment_dim)

    def solve(self, ts: Float[ArrayLike, " times"], y0: PyTree[ArrayLike], *,
              args: PyTree[Any] = None, throw: bool = True, dense: bool = False,
              event: Callable | None = None) -> Solution:
        """Solve from one (unbatched) `y0`.

        **Arguments:**

        - `ts`: the output times (`ts[0]` the initial time), as in `nodekit.odeint`.
        - `y0`: one initial state (before augmentation).
        - `args`: passed to the field.
        - `throw`: raise on a failed solve (`False`: see `stats.result`).
        - `dense`: keep the dense output (`Solution.evaluate(t)` at any time).
        - `event`: a condition `event(t, y, args)`; the solve ends where it crosses zero
          (`Solution.t_event`; solved on Diffrax).

        **Returns:** a `Solution` with `ys` of shape `(len(ts), size + augment_dim)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import nodekit

        ball = nodekit.NeuralODE(lambda t, y, args: jnp.stack([y[1], -9.81]))
        sol = ball.solve(jnp.array([0.0, 5.0]), jnp.array([10.0, 0.0]),
                         event=lambda t, y, args: y[0])
        print(sol.t_event)   # sqrt(2 * 10 / 9.81) ~ 1.428
        ```
        """
        return self._solution(ts, y0, args, throw, dense, event, None, "NeuralODE.solve")

    def _solution(self, ts, y0, args, throw, dense, event, vmap_size, caller,
                  batch_mode=None):
        ys, stats, extras = self._odeint(self.field, self.augment(y0), ts, args, throw,
                                         vmap_size=vmap_size, dense=dense, event=event,
                                         caller=caller)
        return Solution(ys=ys, stats=stats, ts=jnp.asarray(ts), t_event=extras["t_event"],
                        dense=extras["dense"], batch_mode=batch_mode)

    def solve_batch(self, ts: Float[ArrayLike, " times"], y0s: PyTree[ArrayLike], *,
                    args: PyTree[Any] = None, mode: str = "vmap", throw: bool = True,
                    dense: bool = False, event: Callable | None = None) -> Solution:
        """Solve a batch `y0s` of shape `(B, size)`; `ys` has shape `(B, len(ts), ...)`.

        `mode="vmap"` solves each sample on its own (per-sample statistics, shape `(B,)`;
        under `engine="auto"` on Diffrax, measured faster per sample); `mode="joint"`
        solves the batch as one ODE state with one shared step size (scalar statistics;
        NFE comparable with torchdiffeq's batched solves; on the engine). Other arguments
        as in `solve`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import nodekit

        model = nodekit.NeuralODE(lambda t, y, args: -y)
        sol = model.solve_batch(jnp.linspace(0, 1, 3), jnp.ones((4, 2)), mode="joint")
        sol.ys.shape   # (4, 3, 2)
        ```
        """
        check_choice("batch mode", mode, BATCH_MODES)
        ts_arr = jnp.asarray(ts)
        t0 = ts_arr[0] if ts_arr.ndim == 1 and ts_arr.shape[0] else jnp.zeros(())
        y0s = jax.tree_util.tree_map(jnp.asarray, y0s)
        if mode == "vmap":
            check_batch(self.field, t0, self.augment(y0s), args,
                        caller="NeuralODE.solve_batch")
            size = int(np.shape(jax.tree_util.tree_leaves(y0s)[0])[0])
            sol = jax.vmap(lambda y: self._solution(
                ts, y, args, throw, dense, event, size, "NeuralODE.solve_batch",
                batch_mode="vmap"))(y0s)
            return eqx.tree_at(lambda s: s.ts, sol, ts_arr)  # one copy of the times
        ys, stats, extras = self._odeint(JointField(self.field), self.augment(y0s), ts, args,
                                         throw, dense=dense, event=event,
                                         caller="NeuralODE.solve_batch")
        ys = jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, 1), ys)
        return Solution(ys=ys, stats=stats, ts=ts_arr, t_event=extras["t_event"],
                        dense=extras["dense"], batch_mode="joint")

    def __call__(self, ts: Float[ArrayLike, " times"], y0: PyTree[ArrayLike], *,
                 args: PyTree[Any] = None) -> PyTree[Array]:
        """The trajectory at `ts` from one `y0`: shape `(len(ts), size + augment_dim)`.
        Called as `model(ts, y0)`: the times first."""
        return self._solution(ts, y0, args, True, False, None, None, "NeuralODE").ys

    def integrator(self, y0_like: PyTree, *, batch_mode: str | None = None,
                   regularisers: Sequence = (), quadrature: str = "trapezoid"
                   ) -> tuple[str, str]:
        """Which integrator this model's solves run on, and why (see
        `SolveSettings.integrator`; `y0_like` as the caller holds it, before
        augmentation).

        **Example:**

        ```python
        import jax.numpy as jnp
        import nodekit

        model = nodekit.NeuralODE(lambda t, y, args: -y, augment_dim=1)
        model.integrator(jnp.ones((8, 2)), batch_mode="joint")   # ('nodekit', ...)
        ```
        """
        def aug(x):
            shape = tuple(np.shape(x))
            if self.augment_dim and shape:
                shape = shape[:-1] + (shape[-1] + self.augment_dim,)
            return jax.ShapeDtypeStruct(shape, x.dtype)

        return self.settings.integrator(jax.tree_util.tree_map(aug, y0_like),
                                        batch_mode=batch_mode, regularisers=regularisers,
                                        quadrature=quadrature)
