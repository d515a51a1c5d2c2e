"""ODE-Net image classifier (Chen et al. 2018, "Neural Ordinary Differential Equations",
section 3) and its ResNet baseline of the same width."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._fields import AbstractVectorField
from .._neural_ode import BATCH_MODES, NeuralODE
from .._odeint import SolveStats
from .._settings import SolveSettings
from ._common import (
    check_choice,
    check_int,
    check_ndim,
    check_positive,
    constant_stats,
    model_settings,
    solve,
    stats_aux,
)

#: The ODE-Net's solve settings unless told otherwise (Chen et al.'s MNIST tolerances).
ODENET_SETTINGS = SolveSettings(rtol=1e-3, atol=1e-3, max_steps=1024)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _concat_time(t, h):
    """Append a constant channel holding `t` (Chen et al.'s `ConcatConv2d`)."""
    tt = jnp.broadcast_to(jnp.asarray(t, h.dtype), (1, *h.shape[1:]))
    return jnp.concatenate([tt, h], axis=0)


class ConvField(AbstractVectorField):
    """A convolutional vector field on feature maps `(channels, H, W)`, as in Chen et
    al.'s ODE-Net: `norm → relu → conv3x3 → norm → relu → conv3x3 → norm`, each
    convolution seeing `t` as an extra input channel when `time_dependent`.

    Also the residual function of `ResNetClassifier`'s blocks (`time_dependent=False`).

    **Arguments:**

    - `channels`: number of feature channels (input = output).
    - `time_dependent`: append `t` as a channel before each convolution.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import ConvField

    field = ConvField(16, key=jax.random.PRNGKey(0))
    dh = field(0.0, jnp.zeros((16, 4, 4)), None)   # (16, 4, 4)
    ```
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    norm3: eqx.nn.GroupNorm
    channels: int = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)

    def __init__(self, channels: int, *, time_dependent: bool = True, key: jax.Array):
        check_int("ConvField", "channels", channels, 1)
        k1, k2 = jax.random.split(key)
        extra = int(time_dependent)
        g = _groups(channels)
        self.norm1 = eqx.nn.GroupNorm(g, channels)
        self.conv1 = eqx.nn.Conv2d(channels + extra, channels, 3, padding=1, key=k1)
        self.norm2 = eqx.nn.GroupNorm(g, channels)
        self.conv2 = eqx.nn.Conv2d(channels + extra, channels, 3, padding=1, key=k2)
        self.norm3 = eqx.nn.GroupNorm(g, channels)
        self.channels = channels
        self.time_dependent = time_dependent

    def __call__(self, t, y, args):
        cat = (lambda h: _concat_time(t, h)) if self.time_dependent else (lambda h: h)
        h = jax.nn.relu(self.norm1(y))
        h = self.conv1(cat(h))
        h = jax.nn.relu(self.norm2(h))
        h = self.conv2(cat(h))
        return self.norm3(h)


class _Stem(eqx.Module):
    """Downsampling: conv3x3 → norm → relu → conv4x4 stride 2 (halves H and W)."""

    conv1: eqx.nn.Conv2d
    norm: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d

    def __init__(self, in_channels: int, width: int, *, key):
        k1, k2 = jax.random.split(key)
        self.conv1 = eqx.nn.Conv2d(in_channels, width, 3, padding=1, key=k1)
        self.norm = eqx.nn.GroupNorm(_groups(width), width)
        self.conv2 = eqx.nn.Conv2d(width, width, 4, stride=2, padding=1, key=k2)

    def __call__(self, x):
        return self.conv2(jax.nn.relu(self.norm(self.conv1(x))))


class _Head(eqx.Module):
    """norm → relu → global average pool → linear to the class logits."""

    norm: eqx.nn.GroupNorm
    linear: eqx.nn.Linear

    def __init__(self, width: int, n_classes: int, *, key):
        self.norm = eqx.nn.GroupNorm(_groups(width), width)
        self.linear = eqx.nn.Linear(width, n_classes, key=key)

    def __call__(self, h):
        return self.linear(jnp.mean(jax.nn.relu(self.norm(h)), axis=(1, 2)))


def _check_image(owner: str, image, in_channels: int) -> None:
    if jnp.ndim(image) != 3 or jnp.shape(image)[0] != in_channels:
        raise InputError(
            f"{owner} takes one image of shape ({in_channels}, H, W) (use forward_batch "
            f"for a batch), got shape {tuple(jnp.shape(image))}."
        )


class ODENetClassifier(eqx.Module):
    """An ODE-Net classifier (Chen et al. 2018): a downsampling stem, one ODE block
    `dh/dt = ConvField(t, h)` integrated over `[0, t1]`, and a head (norm, relu, global
    average pool, linear).

    Sized for the 8x8 single-channel digits (`(1, 8, 8)` → stem → `(width, 4, 4)`), but
    any `(in_channels, H, W)` image works.

    **Arguments:**

    - `n_classes`: number of classes (default 10).
    - `width`: feature channels of the stem, the ODE block and the head.
    - `in_channels`: channels of the input image (default 1).
    - `t1`: integration time of the ODE block (default 1.0).
    - `settings`: the ODE block's `nodekit.SolveSettings` (default `ODENET_SETTINGS`:
      `rtol = atol = 1e-3` as Chen et al. used for MNIST, `max_steps=1024`); keyword
      arguments `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`,
      `engine` override single settings.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import ODENetClassifier

    model = ODENetClassifier(10, width=8, key=jax.random.PRNGKey(0))
    logits, stats = model(jnp.zeros((1, 8, 8)))                    # (10,), stats.nfe
    logits, stats = model.forward_batch(jnp.zeros((4, 1, 8, 8)))   # (4, 10)
    ```
    """

    stem: _Stem
    ode: NeuralODE
    head: _Head
    n_classes: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(
        self,
        n_classes: int = 10,
        width: int = 16,
        *,
        in_channels: int = 1,
        t1: float = 1.0,
        settings: SolveSettings | None = None,
        key: PRNGKeyArray,
        **overrides,
    ):
        check_int("ODENetClassifier", "n_classes", n_classes, 2)
        check_int("ODENetClassifier", "width", width, 1)
        check_int("ODENetClassifier", "in_channels", in_channels, 1)
        check_positive("ODENetClassifier", "t1", t1)
        ks, kf, kh = jax.random.split(key, 3)
        self.stem = _Stem(in_channels, width, key=ks)
        self.ode = NeuralODE(ConvField(width, time_dependent=True, key=kf),
                             model_settings(ODENetClassifier, ODENET_SETTINGS, settings,
                                            overrides))
        self.head = _Head(width, n_classes, key=kh)
        self.n_classes = n_classes
        self.in_channels = in_channels
        self.t1 = float(t1)

    @property
    def settings(self) -> SolveSettings:
        """The ODE block's solve settings (held by `ode`)."""
        return self.ode.settings

    def features(self, image: Float[ArrayLike, "channels height width"], *,
                 throw: bool = True):
        """The ODE block's output for one image: `(h(t1) of shape (width, H/2, W/2),
        stats)`."""
        return self._features(image, throw, None)

    def _features(self, image, throw: bool, _vmap_size: int | None):
        _check_image("ODENetClassifier", image, self.in_channels)
        h0 = self.stem(image)
        ys, stats = solve(self.ode, self.ode.field, h0, jnp.array([0.0, self.t1], h0.dtype),
                          throw=throw, vmap_size=_vmap_size, caller="ODENetClassifier")
        return ys[-1], stats

    def __call__(self, image: Float[ArrayLike, "channels height width"], *,
                 throw: bool = True) -> tuple[Float[Array, " classes"], SolveStats]:
        """Logits `(n_classes,)` and the ODE block's `SolveStats` for one image
        `(in_channels, H, W)`."""
        h, stats = self.features(image, throw=throw)
        return self.head(h), stats

    def forward_batch(self, images: Float[ArrayLike, "batch channels height width"], *,
                      mode: str = "vmap", throw: bool = True):
        """Logits `(B, n_classes)` for images `(B, in_channels, H, W)`, and the stats.

        `mode="vmap"`: one solve per image (stats of shape `(B,)`); `mode="joint"`: the
        batch solved as one state with one shared step size (scalar stats).
        """
        check_choice("batch mode", mode, BATCH_MODES)
        check_ndim("ODENetClassifier.forward_batch", "images", images, (4,), "(B, C, H, W)")
        if mode == "vmap":
            n = jnp.shape(images)[0]

            def one(x):
                h, stats = self._features(x, throw, n)
                return self.head(h), stats

            return jax.vmap(one)(images)
        _check_image("ODENetClassifier", images[0], self.in_channels)
        h0 = jax.vmap(self.stem)(images)
        sol = self.ode.solve_batch(jnp.array([0.0, self.t1], h0.dtype), h0, mode="joint",
                                   throw=throw)
        return jax.vmap(self.head)(sol.ys[:, -1]), sol.stats


class ResNetClassifier(eqx.Module):
    """The ResNet baseline for `ODENetClassifier`: the same stem and head, and
    `num_blocks` residual blocks `h ← h + ConvField(h)` of the same width (a ResNet is
    an Euler discretisation with `num_blocks` steps, each block with its own weights).

    Its statistics report `nfe = num_blocks` (one residual function per block), so the
    two models log comparable numbers.

    **Arguments:**

    - `n_classes`, `width`, `in_channels`: as in `ODENetClassifier`.
    - `num_blocks`: number of residual blocks (default 6, as in Chen et al.).
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    from nodekit.models import ODENetClassifier, ResNetClassifier, count_params

    key = jax.random.PRNGKey(0)
    resnet = ResNetClassifier(10, width=16, num_blocks=6, key=key)
    count_params(resnet) > count_params(ODENetClassifier(10, 16, key=key))   # True
    ```
    """

    stem: _Stem
    blocks: tuple[ConvField, ...]
    head: _Head
    n_classes: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)

    def __init__(
        self,
        n_classes: int = 10,
        width: int = 16,
        num_blocks: int = 6,
        *,
        in_channels: int = 1,
        key: jax.Array,
    ):
        check_int("ResNetClassifier", "n_classes", n_classes, 2)
        check_int("ResNetClassifier", "width", width, 1)
        check_int("ResNetClassifier", "num_blocks", num_blocks, 1)
        check_int("ResNetClassifier", "in_channels", in_channels, 1)
        ks, kh, *kb = jax.random.split(key, 2 + num_blocks)
        self.stem = _Stem(in_channels, width, key=ks)
        self.blocks = tuple(ConvField(width, time_dependent=False, key=k) for k in kb)
        self.head = _Head(width, n_classes, key=kh)
        self.n_classes = n_classes
        self.in_channels = in_channels

    def __call__(self, image, *, throw: bool = True) -> tuple[jax.Array, SolveStats]:
        """Logits `(n_classes,)` and constant stats (`nfe = num_blocks`) for one image.
        `throw` is accepted for a common interface with `ODENetClassifier`."""
        _check_image("ResNetClassifier", image, self.in_channels)
        h = self.stem(image)
        for block in self.blocks:
            h = h + block(0.0, h, None)
        return self.head(h), constant_stats(len(self.blocks))

    def forward_batch(self, images, *, mode: str = "vmap", throw: bool = True):
        """Logits `(B, n_classes)` and stats `(B,)` for images `(B, in_channels, H, W)`
        (`mode` is accepted for a common interface; a ResNet has nothing to solve)."""
        check_choice("batch mode", mode, BATCH_MODES)
        check_ndim("ResNetClassifier.forward_batch", "images", images, (4,), "(B, C, H, W)")
        return jax.vmap(lambda x: self(x, throw=throw))(images)


def count_params(model) -> int:
    """The number of trainable scalars in `model` (every floating-point array leaf).

    **Example:**

    ```python
    import jax
    from nodekit.models import ODENetClassifier, count_params

    count_params(ODENetClassifier(10, 16, key=jax.random.PRNGKey(0)))   # a few thousand
    ```
    """
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(x.size for x in leaves))


def classification_loss(
    model: ODENetClassifier | ResNetClassifier,
    images,
    labels,
    *,
    mode: str = "vmap",
    throw: bool = False,
) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy of a classifier on a batch.

    **Arguments:**

    - `model`: an `ODENetClassifier` or a `ResNetClassifier`.
    - `images`: `(B, in_channels, H, W)` floats; `labels`: `(B,)` integer classes.
    - `mode`: `"vmap"` (one solve per image) or `"joint"` (one solve for the batch).
    - `throw`: raise on a failed solve. Default `False` (training): failures are
      counted in `aux["failures"]` instead.

    **Returns:**

    `(loss, aux)`; `aux` holds scalars `accuracy`, `nfe` (mean forward NFE per image),
    `solver_steps` and `failures`.

    **Raises:**

    `InputError` when the shapes of `images` and `labels` disagree.

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from nodekit.models import ODENetClassifier, classification_loss

    model = ODENetClassifier(10, 8, key=jax.random.PRNGKey(0))
    images, labels = jnp.zeros((4, 1, 8, 8)), jnp.array([0, 1, 2, 3])
    (loss, aux), grads = eqx.filter_value_and_grad(classification_loss, has_aux=True)(
        model, images, labels)   # loss ~ log(10) at the start
    ```
    """
    check_ndim("classification_loss", "images", images, (4,), "(B, C, H, W)")
    if jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != jnp.shape(images)[0]:
        raise InputError(
            f"classification_loss: labels must have shape ({jnp.shape(images)[0]},) to match "
            f"the images, got shape {tuple(jnp.shape(labels))}."
        )
    logits, stats = model.forward_batch(images, mode=mode, throw=throw)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    aux = stats_aux(stats, images.shape[0])
    predicted = jnp.argmax(logits, -1)
    hits = predicted == jnp.asarray(labels).astype(predicted.dtype)
    aux["accuracy"] = jnp.mean(hits).astype(jnp.float32)
    return loss, aux
