"""Vector fields: Equinox modules `f(t, y, args) -> dy/dt`."""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxtyping import Array, ArrayLike, Float, PyTree, PRNGKeyArray

from ._errors import InputError, unknown_name_message


#: Activation functions by config name.
ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable:
    """An activation function by name (see `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise InputError(unknown_name_message("activation", name, list(ACTIVATIONS)))
    return ACTIVATIONS[name]


class AbstractVectorField(eqx.Module):
    """A vector field `dy/dt = f(t, y, args)` on a single (unbatched) state.

    Subclasses hold their parameters as fields and implement `__call__`. Batching is
    done outside, with `jax.vmap`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    class Linear(nodekit.AbstractVectorField):
        A: jax.Array

        def __call__(self, t, y, args):
            return self.A @ y

    ys = nodekit.odeint(Linear(-jnp.eye(2)), jnp.ones(2), jnp.linspace(0.0, 1.0, 3))
    ```
    """

    @abc.abstractmethod
    def __call__(self, t: ArrayLike, y: PyTree[Array], args: PyTree[Any]) -> PyTree[Array]:
        raise NotImplementedError

    @property
    def state_size(self) -> int | None:
        """The size of the 1-D state the field is built for (`None`: any), used to word
        a mismatch (`MLPField` built for 3, called on a state of 2)."""
        return None


class MLPField(AbstractVectorField):
    """A multilayer perceptron vector field `f(t, y) = MLP([y**p, t])`.

    **Arguments:**

    - `size`: dimension of the state `y` (input and output size).
    - `width`: hidden width; `depth`: number of hidden layers.
    - `activation`: a name from `ACTIVATIONS` (default `"tanh"`).
    - `time_dependent`: append `t` to the input (non-autonomous field).
    - `input_power`: apply `y**p` elementwise before the MLP (torchdiffeq's `ode_demo`
      uses `p=3`); default 1.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=50, depth=1, key=jax.random.PRNGKey(0))
    dy = field(0.0, jnp.ones(2), None)   # shape (2,)
    ```
    """

    mlp: eqx.nn.MLP
    size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)
    input_power: int = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        width: int = 64,
        depth: int = 2,
        *,
        activation: str = "tanh",
        time_dependent: bool = False,
        input_power: int = 1,
        key: PRNGKeyArray,
    ):
        for name, value, low in (("size", size, 1), ("width", width, 1), ("depth", depth, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"MLPField {name} must be an integer >= {low}, got {value!r}.")
        if isinstance(input_power, bool) or not isinstance(input_power, int) or input_power < 1:
            raise InputError(f"MLPField input_power must be an integer >= 1, got {input_power!r}.")
        act = get_activation(activation)
        self.mlp = eqx.nn.MLP(
            in_size=size + int(time_dependent),
            out_size=size,
            width_size=width,
            depth=depth,
            activation=act,
            key=key,
        )
        self.size = size
        self.activation = activation
        self.time_dependent = time_dependent
        self.input_power = input_power

    @property
    def state_size(self) -> int:
        return self.size

    def __call__(self, t: ArrayLike, y: Float[Array, " size"], args: Any) -> Float[Array, " size"]:
        x = y if self.input_power == 1 else y**self.input_power
        if self.time_dependent:
            x = jnp.concatenate([x, jnp.broadcast_to(jnp.asarray(t, x.dtype), (1,))])
        return self.mlp(x)


class SecondOrderField(AbstractVectorField):
    """A second-order ODE `x'' = a(t, x, x')` written as a first-order field on the
    state `y = [x, v]` (both halves of size `size`): `y' = [v, a(t, x, v)]`.

    **Arguments:**

    - `acceleration`: a field on the full state `[x, v]` (size `2*size`) whose output is
      the acceleration (size `size`), e.g. an `eqx.nn.MLP`-based field.
    - `size`: dimension of the position `x`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    # a spring, x'' = -x: the acceleration sees y = [x, v] and returns x'' (size 1)
    spring = nodekit.SecondOrderField(nodekit.FunctionField(lambda t, y, args: -y[:1]), size=1)
    ys = nodekit.odeint(spring, jnp.array([1.0, 0.0]), jnp.array([0.0, jnp.pi]))
    print(ys[-1])   # ~[-1, 0]: x(t) = cos t, v(t) = -sin t

    # a learned acceleration a(x, v) for a 2-D position: state [x, v] of size 4
    field = nodekit.SecondOrderField.from_mlp(2, width=8, key=jax.random.PRNGKey(0))
    dy = field(0.0, jnp.ones(4), None)   # [v, a(x, v)], shape (4,)
    ```
    """

    acceleration: eqx.Module
    size: int = eqx.field(static=True)

    def __init__(self, acceleration: eqx.Module, size: int):
        self.acceleration = acceleration
        self.size = size

    @classmethod
    def from_mlp(
        cls,
        size: int,
        width: int = 64,
        depth: int = 2,
        *,
        activation: str = "tanh",
        time_dependent: bool = False,
        key: jax.Array,
    ) -> "SecondOrderField":
        """A second-order field whose acceleration is an MLP of `[x, v]` (and `t`)."""
        mlp = eqx.nn.MLP(
            in_size=2 * size + int(time_dependent),
            out_size=size,
            width_size=width,
            depth=depth,
            activation=get_activation(activation),
            key=key,
        )
        return cls(_MLPAcceleration(mlp, time_dependent), size)

    @property
    def state_size(self) -> int:
        return 2 * self.size

    def __call__(self, t: ArrayLike, y: Float[Array, " state"], args: Any
                 ) -> Float[Array, " state"]:
        v = y[self.size :]
        a = self.acceleration(t, y, args)
        return jnp.concatenate([v, a])


class _MLPAcceleration(eqx.Module):
    mlp: eqx.nn.MLP
    time_dependent: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        x = y
        if self.time_dependent:
            x = jnp.concatenate([y, jnp.broadcast_to(jnp.asarray(t, y.dtype), (1,))])
        return self.mlp(x)


class FunctionField(AbstractVectorField):
    """Wrap a plain function `f(t, y, args)` (or one with parameters) as a field.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    decay = nodekit.FunctionField(lambda t, y, args: -y)
    ys = nodekit.odeint(decay, jnp.ones(2), jnp.linspace(0.0, 1.0, 3))
    ```
    """

    fn: Callable

    def __call__(self, t: ArrayLike, y: PyTree[Array], args: Any) -> PyTree[Array]:
        return self.fn(t, y, args)


# ------------------------------------------------------------------ joint batches


def vmap_samples(fn: Callable, t, ys, args, per_sample=None):
    """`fn(t, y, args)` (or `fn(t, y, args, p)`) for every sample `y` of the joint state
    `ys` (samples along the first axis), with `per_sample` (e.g. noise drawn per sample)
    split along its first axis too. The one place a field is vmapped over a batch."""
    if per_sample is None:
        return jax.vmap(fn, in_axes=(None, 0, None))(t, ys, args)
    return jax.vmap(lambda y, p: fn(t, y, args, p))(ys, per_sample)


class JointField(AbstractVectorField):
    """A field on one sample applied to a batch solved as one state (`batch_mode:
    joint`): `JointField(f)(t, ys, args)` is `f(t, y, args)` for every row `y` of `ys`.
    A module (not a closure), so the field's parameters stay visible to
    `adjoint="backsolve"`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit
    from nodekit._fields import JointField

    joint = JointField(nodekit.FunctionField(lambda t, y, args: -y))
    joint(0.0, jnp.ones((4, 2)), None).shape   # (4, 2)
    ```
    """

    field: Any
    _vmaps_field: ClassVar[bool] = True

    def __call__(self, t, ys, args):
        return vmap_samples(self.field, t, ys, args)
