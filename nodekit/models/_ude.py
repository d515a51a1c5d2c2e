"""Universal differential equations (Rackauckas et al. 2020, "Universal Differential
Equations for Scientific Machine Learning"): known physics plus a neural network for the
part that is missing, `dy/dt = known(t, y, args) + neural(t, y, args)`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._fields import AbstractVectorField, MLPField
from .._neural_ode import NeuralODE, Solution
from .._settings import SolveSettings
from ._common import check_int, model_settings, stats_aux

_DEFAULTS = SolveSettings()


class UDEField(AbstractVectorField):
    """The field `known(t, y, args) + neural(t, y, args)` of a UDE.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit
    from nodekit.models import UDEField

    field = UDEField(lambda t, y, args: -0.5 * y, nodekit.MLPField(2, 16, key=jax.random.PRNGKey(0)))
    dy = field(0.0, jnp.ones(2), None)
    ```
    """

    known: Any
    neural: Any

    def __call__(self, t, y, args):
        return self.known(t, y, args) + self.neural(t, y, args)


class AbstractUDE(eqx.Module):
    """A universal differential equation `dy/dt = known(t, y, args) + neural(t, y, args)`.

    Concrete UDEs (`UDE`, `LotkaVolterraUDE`) hold `ode`, a `NeuralODE` whose field is a
    `UDEField`; the solve settings live there.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit
    from nodekit.models import AbstractUDE, UDEField

    class Damped(AbstractUDE):          # a concrete UDE: declare `ode`, build it in __init__
        ode: nodekit.NeuralODE

        def __init__(self, key):
            field = UDEField(lambda t, y, a: -y, nodekit.MLPField(2, 8, key=key))
            self.ode = nodekit.NeuralODE(field)

    ys = Damped(jax.random.PRNGKey(0))(jnp.linspace(0.0, 1.0, 3), jnp.ones(2))
    ```
    """

    ode: eqx.AbstractVar[NeuralODE]

    @property
    def settings(self) -> SolveSettings:
        """The solve settings (held by `ode`)."""
        return self.ode.settings

    @property
    def known(self):
        """The known-physics term `known(t, y, args)`."""
        return self.ode.field.known

    @property
    def neural(self):
        """The learned term `neural(t, y, args)`."""
        return self.ode.field.neural

    def missing_term(self, y, t=0.0, args=None) -> jax.Array:
        """The learned term `neural(t, y, args)` at state `y` (to compare with the true
        missing physics); `vmap` it over a batch of states."""
        return self.neural(t, jnp.asarray(y), args)

    def solve(self, ts: Float[ArrayLike, " times"], y0: Float[ArrayLike, " d"], *, args=None,
              throw: bool = True) -> Solution:
        """Solve from one `y0` at `ts[0]`; a `Solution` with `ys (len(ts), d)` and stats."""
        return self.ode.solve(ts, y0, args=args, throw=throw)

    def __call__(self, ts: Float[ArrayLike, " times"], y0: Float[ArrayLike, " d"], *,
                 args=None) -> Float[Array, "times d"]:
        """The trajectory `(len(ts), d)` from one `y0`."""
        return self.solve(ts, y0, args=args).ys


class UDE(AbstractUDE):
    """A universal differential equation from any known term and any neural term.

    **Arguments:**

    - `known`: the known physics `known(t, y, args) -> dy/dt`: a plain function, or an
      Equinox module whose array fields are learnable parameters (wrap them in
      `jax.lax.stop_gradient` inside, or filter them out of the optimiser, to keep them
      fixed).
    - `neural`: the learned term `neural(t, y, args) -> dy/dt`, e.g.
      `nodekit.MLPField(d, width=32, key=key)`.
    - `settings`: a `nodekit.SolveSettings` (its defaults when omitted); keyword arguments
      `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`
      override single settings.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit
    from nodekit.models import UDE

    decay = lambda t, y, args: -0.5 * y
    ude = UDE(decay, nodekit.MLPField(2, width=16, key=jax.random.PRNGKey(0)))
    ys = ude(jnp.linspace(0, 1, 10), jnp.array([1.0, 2.0]))     # (10, 2)
    ```
    """

    ode: NeuralODE

    def __init__(
        self,
        known,
        neural,
        *,
        settings: SolveSettings | None = None,
        **overrides,
    ):
        for name, f in (("known", known), ("neural", neural)):
            if not callable(f):
                raise InputError(
                    f"UDE {name} must be callable as {name}(t, y, args), got "
                    f"{type(f).__name__}."
                )
        self.ode = NeuralODE(UDEField(known, neural),
                             model_settings(UDE, _DEFAULTS, settings, overrides))


class LotkaVolterraKnown(AbstractVectorField):
    """The known part of Lotka–Volterra: prey growth and predator decay,
    `(dx, dy) = (alpha·x, -delta·y)`.

    **Arguments:**

    - `alpha`, `delta`: the rates (defaults 1.3 and 1.8, as Rackauckas et al.).
    - `learnable`: `False` stops their gradients (fixed, known physics).

    **Example:**

    ```python
    import jax.numpy as jnp
    from nodekit.models import LotkaVolterraKnown

    known = LotkaVolterraKnown(1.3, 1.8)
    known(0.0, jnp.array([1.0, 1.0]), None)   # [1.3, -1.8]
    ```
    """

    alpha: jax.Array
    delta: jax.Array
    learnable: bool = eqx.field(static=True)

    def __init__(self, alpha: float = 1.3, delta: float = 1.8, *, learnable: bool = False):
        self.alpha = jnp.asarray(alpha, jnp.result_type(float))
        self.delta = jnp.asarray(delta, jnp.result_type(float))
        self.learnable = learnable

    def __call__(self, t, y, args):
        alpha, delta = self.alpha, self.delta
        if not self.learnable:
            alpha, delta = jax.lax.stop_gradient(alpha), jax.lax.stop_gradient(delta)
        return jnp.stack([alpha * y[0], -delta * y[1]]).astype(y.dtype)


class LotkaVolterraInteraction(AbstractVectorField):
    """The true missing term of the Lotka–Volterra UDE, `(-beta·x·y, gamma·x·y)`
    (defaults 0.9 and 0.8, as Rackauckas et al.): the reference for
    `LotkaVolterraUDE.missing_term`, and a drop-in `neural` term for checks.

    **Example:**

    ```python
    import jax.numpy as jnp
    from nodekit.models import LotkaVolterraInteraction

    print(LotkaVolterraInteraction()(0.0, jnp.array([1.0, 2.0]), None))   # [-1.8  1.6]
    ```
    """

    beta: float = eqx.field(static=True, default=0.9)
    gamma: float = eqx.field(static=True, default=0.8)

    def __call__(self, t, y, args):
        xy = y[0] * y[1]
        return jnp.stack([-self.beta * xy, self.gamma * xy])


class LotkaVolterraUDE(AbstractUDE):
    """The Lotka–Volterra UDE of Rackauckas et al. 2020: the linear terms are known,
    `dx = alpha·x + NN_1(x, y)`, `dy = -delta·y + NN_2(x, y)`, and the network learns the
    interaction `(-beta·x·y, gamma·x·y)`.

    **Arguments:**

    - `width`, `depth`, `activation`: the network (an autonomous `nodekit.MLPField` on
      the 2-D state). Rackauckas et al. used width 5 to 32 with RBF/tanh activations.
    - `alpha`, `delta`: the known rates; `learn_known`: also fit them (default `False`).
    - `settings`: a `nodekit.SolveSettings`; keyword arguments `solver`, `rtol`, `atol`,
      `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine` override single settings.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import LotkaVolterraUDE, trajectory_loss

    ude = LotkaVolterraUDE(width=8, key=jax.random.PRNGKey(0))
    ts, observations = jnp.linspace(0.0, 1.0, 5), jnp.ones((5, 2))
    loss, aux = trajectory_loss(ude, ts, jnp.array([0.44, 4.6]), observations)
    states = jnp.ones((3, 2))
    learned = jax.vmap(ude.missing_term)(states)      # compare with the true interaction
    ```
    """

    ode: NeuralODE

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        *,
        alpha: float = 1.3,
        delta: float = 1.8,
        learn_known: bool = False,
        activation: str = "tanh",
        settings: SolveSettings | None = None,
        key: PRNGKeyArray,
        **overrides,
    ):
        check_int("LotkaVolterraUDE", "width", width, 1)
        check_int("LotkaVolterraUDE", "depth", depth, 0)
        known = LotkaVolterraKnown(alpha, delta, learnable=learn_known)
        neural = MLPField(2, width, depth, activation=activation, key=key)
        self.ode = NeuralODE(UDEField(known, neural),
                             model_settings(LotkaVolterraUDE, _DEFAULTS, settings, overrides))


def trajectory_loss(
    model: AbstractUDE, ts, y0, observations, *, throw: bool = False
) -> tuple[jax.Array, dict]:
    """Mean squared error between a UDE's trajectory and observations.

    **Arguments:**

    - `model`: a UDE (any `AbstractUDE`).
    - `ts`: `(T,)` observation times (`ts[0]` is the time of `y0`).
    - `y0`: `(d,)`, or `(B, d)` for a batch of trajectories.
    - `observations`: `(T, d)`, or `(B, T, d)`.
    - `throw`: raise on a failed solve; default `False` counts failures in `aux`.

    **Returns:** `(mse, aux)`; `aux` holds scalars `nfe`, `solver_steps`, `failures`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import LotkaVolterraUDE, trajectory_loss

    ude = LotkaVolterraUDE(width=8, key=jax.random.PRNGKey(0))
    ts, y0, observations = jnp.linspace(0.0, 1.0, 5), jnp.array([0.44, 4.6]), jnp.ones((5, 2))
    loss, aux = trajectory_loss(ude, ts, y0, observations)
    ```
    """
    y0 = jnp.asarray(y0)
    observations = jnp.asarray(observations)
    ts = jnp.asarray(ts)
    batched = y0.ndim == 2
    expect = (*y0.shape[:-1], ts.shape[0], y0.shape[-1]) if y0.ndim in (1, 2) else None
    if expect is None or observations.shape != expect:
        raise InputError(
            f"trajectory_loss: y0 must be (d,) or (B, d) and observations (T, d) or "
            f"(B, T, d) with T = len(ts) = {ts.shape[0] if ts.ndim else ts.shape}; got y0 "
            f"{tuple(y0.shape)} and observations {tuple(observations.shape)}."
        )
    if batched:
        sol = jax.vmap(lambda y: model.solve(ts, y, throw=throw))(y0)
    else:
        sol = model.solve(ts, y0, throw=throw)
    loss = jnp.mean((sol.ys - observations) ** 2)
    return loss, stats_aux(sol.stats, y0.shape[0] if batched else 1)
