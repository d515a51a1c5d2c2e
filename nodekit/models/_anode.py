"""A small (augmented) neural ODE with a linear readout, for the experiments of Dupont,
Doucet and Teh 2019, "Augmented Neural ODEs": the 1-D g-function and the concentric
spheres, labels ±1, loss MSE."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._fields import MLPField
from .._neural_ode import BATCH_MODES, NeuralODE
from .._odeint import SolveStats
from .._settings import SolveSettings
from ._common import check_choice, check_int, check_positive, model_settings, solve, stats_aux

#: The ANODE classifier's solve settings unless told otherwise (Dupont et al.'s loose
#: tolerances).
ANODE_SETTINGS = SolveSettings(rtol=1e-3, atol=1e-3, max_steps=1024)


class ANODEClassifier(eqx.Module):
    """A neural ODE on `x ∈ R^in_size`, augmented with `augment_dim` zeros (ANODE), its
    final state `h(t1)` read out by a linear map to one scalar.

    With `augment_dim=0` it is the plain NODE of Dupont et al., which cannot represent
    the g-function (`+1` inside a sphere, `-1` in a shell around it): its flow cannot
    cross trajectories, so it needs ever more NFE while training; ANODE's extra
    dimensions remove that limit.

    **Arguments:**

    - `in_size`: input dimension.
    - `augment_dim`: number of zero dimensions appended (0 = NODE).
    - `width`, `depth`: the field's MLP (Dupont et al.: one hidden layer of 32, ReLU).
    - `activation`, `time_dependent`: of the field (see `nodekit.MLPField`).
    - `t1`: integration time (default 1.0).
    - `settings`: a `nodekit.SolveSettings` (default `ANODE_SETTINGS`: `rtol=atol=1e-3`,
      `max_steps=1024`); keyword arguments `solver`, `rtol`, `atol`, `dt0`, `adjoint`,
      `max_steps`, `checkpoints`, `engine` override single settings.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import ANODEClassifier, anode_loss

    model = ANODEClassifier(2, augment_dim=1, width=8, key=jax.random.PRNGKey(0))
    pred, stats = model(jnp.array([0.3, -0.2]))        # scalar, stats.nfe
    xs, labels = jnp.ones((4, 2)), jnp.array([1.0, -1.0, 1.0, -1.0])
    loss, aux = anode_loss(model, xs, labels)          # labels in {-1, +1}
    ```
    """

    ode: NeuralODE
    readout: eqx.nn.Linear
    in_size: int = eqx.field(static=True)
    augment_dim: int = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        augment_dim: int = 0,
        width: int = 32,
        depth: int = 1,
        *,
        activation: str = "relu",
        time_dependent: bool = False,
        t1: float = 1.0,
        settings: SolveSettings | None = None,
        key: PRNGKeyArray,
        **overrides,
    ):
        check_int("ANODEClassifier", "in_size", in_size, 1)
        check_int("ANODEClassifier", "augment_dim", augment_dim, 0)
        check_int("ANODEClassifier", "width", width, 1)
        check_int("ANODEClassifier", "depth", depth, 0)
        check_positive("ANODEClassifier", "t1", t1)
        kf, kr = jax.random.split(key)
        size = in_size + augment_dim
        field = MLPField(size, width, depth, activation=activation,
                         time_dependent=time_dependent, key=kf)
        self.ode = NeuralODE(field, model_settings(ANODEClassifier, ANODE_SETTINGS, settings,
                                                   overrides), augment_dim=augment_dim)
        self.readout = eqx.nn.Linear(size, "scalar", key=kr)
        self.in_size = in_size
        self.augment_dim = augment_dim
        self.t1 = float(t1)

    def _check_x(self, x, ndim: int, owner: str):
        x = jnp.asarray(x)
        if x.ndim != ndim or x.shape[-1] != self.in_size:
            shape = f"({self.in_size},)" if ndim == 1 else f"(B, {self.in_size})"
            raise InputError(f"{owner}: x must have shape {shape}, got {tuple(x.shape)}.")
        return x

    @property
    def settings(self) -> SolveSettings:
        """The solve settings (held by `ode`)."""
        return self.ode.settings

    def flow(self, x: Float[ArrayLike, " in_size"], ts: Float[ArrayLike, " times"], *,
             throw: bool = True):
        """The augmented trajectory `(len(ts), in_size + augment_dim)` from one input `x`
        (for plots of the flow), and the stats."""
        x = self._check_x(x, 1, "ANODEClassifier.flow")
        sol = self.ode.solve(ts, x, throw=throw)
        return sol.ys, sol.stats

    def _predict(self, x, throw: bool, vmap_size: int | None):
        x = self._check_x(x, 1, "ANODEClassifier")
        ys, stats = solve(self.ode, self.ode.field, self.ode.augment(x),
                          jnp.array([0.0, self.t1], x.dtype), throw=throw, vmap_size=vmap_size,
                          caller="ANODEClassifier")
        return self.readout(ys[-1]), stats

    def __call__(self, x: Float[ArrayLike, " in_size"], *, throw: bool = True
                 ) -> tuple[Float[Array, ""], SolveStats]:
        """The scalar prediction for one input `(in_size,)`, and the solve's stats."""
        return self._predict(x, throw, None)

    def forward_batch(self, xs: Float[ArrayLike, "batch in_size"], *, mode: str = "vmap",
                      throw: bool = True):
        """Predictions `(B,)` for inputs `(B, in_size)`, and stats (`(B,)` with
        `mode="vmap"`, scalar with `mode="joint"`)."""
        check_choice("batch mode", mode, BATCH_MODES)
        xs = self._check_x(xs, 2, "ANODEClassifier.forward_batch")
        if mode == "vmap":
            return jax.vmap(lambda x: self._predict(x, throw, xs.shape[0]))(xs)
        sol = self.ode.solve_batch(jnp.array([0.0, self.t1], xs.dtype), xs, mode="joint",
                                   throw=throw)
        return jax.vmap(self.readout)(sol.ys[:, -1]), sol.stats


def anode_loss(
    model: ANODEClassifier, xs, labels, *, mode: str = "vmap", throw: bool = False
) -> tuple[jax.Array, dict]:
    """Mean squared error of an `ANODEClassifier` to ±1 labels (Dupont et al.).

    **Arguments:**

    - `model`: an `ANODEClassifier`.
    - `xs`: `(B, in_size)` inputs; `labels`: `(B,)` targets in `{-1, +1}`.
    - `mode`: `"vmap"` or `"joint"` (see `NeuralODE.solve_batch`).
    - `throw`: raise on a failed solve; default `False` counts failures in `aux`.

    **Returns:** `(mse, aux)`; `aux` holds scalars `accuracy` (sign agreement), `nfe`,
    `solver_steps`, `failures`.

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from nodekit.models import ANODEClassifier, anode_loss

    model = ANODEClassifier(2, augment_dim=1, width=8, key=jax.random.PRNGKey(0))
    xs, ys = jnp.ones((4, 2)), jnp.array([1.0, -1.0, 1.0, -1.0])
    (loss, aux), grads = eqx.filter_value_and_grad(anode_loss, has_aux=True)(model, xs, ys)
    ```
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != jnp.shape(xs)[0]:
        raise InputError(
            f"anode_loss: labels must have shape ({jnp.shape(xs)[0]},) to match xs, got "
            f"{tuple(labels.shape)}."
        )
    pred, stats = model.forward_batch(xs, mode=mode, throw=throw)
    loss = jnp.mean((pred - labels) ** 2)
    aux = stats_aux(stats, labels.shape[0])
    aux["accuracy"] = jnp.mean(jnp.sign(pred) == jnp.sign(labels)).astype(jnp.float32)
    return loss, aux
