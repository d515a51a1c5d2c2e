"""FFJORD's toy 2-D densities (Grathwohl et al. 2019, `lib/toy_data.py`), written in NumPy.

Scales follow FFJORD, so samples lie roughly in `[-4, 4]^2`. Where FFJORD calls
scikit-learn (`circles`, `moons`) the same construction is written here with angles
drawn uniformly at random (scikit-learn spaces them evenly), so that every sample is
an independent draw from a fixed density.
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import InputError, unknown_name_message
from ._checks import check_int, check_seed, rng


#: `8gaussians`: centres at radius `4 / 1.414` at angles `k pi / 4`, standard deviation
#: `0.5 / 1.414` per coordinate (FFJORD divides by 1.414), equal weights.
EIGHT_GAUSSIANS_RADIUS = 4.0 / 1.414
EIGHT_GAUSSIANS_STD = 0.5 / 1.414
#: `circles`: radii of the two rings (equal weights) and the Gaussian noise's std.
CIRCLES_RADII = (3.0, 1.5)
CIRCLES_STD = 0.24


def eight_gaussians_centres() -> np.ndarray:
    """The `(8, 2)` centres of the `8gaussians` mixture, in FFJORD's order.

    **Example:**

    ```python
    import numpy as np
    import nodekit

    centres = nodekit.data.eight_gaussians_centres()
    print(np.linalg.norm(centres, axis=1))   # 4 / sqrt(2) ~ 2.83 for each
    ```
    """
    s = 1.0 / math.sqrt(2.0)
    unit = np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=np.float64
    )
    return unit * EIGHT_GAUSSIANS_RADIUS


def _eight_gaussians(n, g):
    centres = eight_gaussians_centres()[g.integers(0, 8, n)]
    return centres + EIGHT_GAUSSIANS_STD * g.standard_normal((n, 2))


def _checkerboard(n, g):
    x1 = g.random(n) * 4 - 2
    x2 = g.random(n) - g.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def _two_spirals(n, g):
    half = n - n // 2
    t = np.sqrt(g.random(half)) * 540 * (2 * np.pi) / 360
    arm = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + g.random((half, 2)) * 0.5
    x = np.concatenate([arm, -arm])[:n] / 3
    x = x + 0.1 * g.standard_normal(x.shape)
    return g.permutation(x)


def _pinwheel(n, g):
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    features = g.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = g.permutation(np.arange(n) % num_classes)
    angles = rads[labels] + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    return 2 * np.einsum("ti,tij->tj", features, rotations)


def _circles(n, g):
    radii = np.asarray(CIRCLES_RADII)[g.integers(0, 2, n)]
    theta = g.uniform(0, 2 * np.pi, n)
    x = radii[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return x + CIRCLES_STD * g.standard_normal((n, 2))


def _moons(n, g):
    upper = g.random(n) < 0.5
    theta = g.uniform(0, np.pi, n)
    x = np.where(
        upper[:, None],
        np.stack([np.cos(theta), np.sin(theta)], axis=1),
        np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], axis=1),
    )
    x = x + 0.1 * g.standard_normal((n, 2))
    return x * 2 + np.array([-1.0, -0.2])


_SAMPLERS = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "pinwheel": _pinwheel,
    "circles": _circles,
    "moons": _moons,
}

#: The names `sample_toy2d` accepts.
TOY2D_NAMES: tuple[str, ...] = tuple(_SAMPLERS)


def _check_name(name) -> str:
    if name not in _SAMPLERS:
        raise InputError(unknown_name_message("toy 2-D density", name, TOY2D_NAMES))
    return name


def sample_toy2d(name: str, n: int, seed: int = 0) -> np.ndarray:
    """`n` samples from one of FFJORD's toy 2-D densities.

    - `8gaussians`: equal mixture of 8 isotropic Gaussians, centres on the circle of
      radius `4/1.414` at angles `k pi/4`, std `0.5/1.414` (see `toy2d_log_density`).
    - `checkerboard`: uniform on 8 of the 16 `2 x 2` squares of `[-4, 4]^2`, in a
      checkerboard pattern.
    - `2spirals`: two interleaved spiral arms (1.5 turns), with noise.
    - `pinwheel`: five curved arms.
    - `circles`: two noisy rings of radii 3 and 1.5 (noise std 0.24), equal weights.
    - `moons`: scikit-learn's two half-moons (noise 0.1), scaled by 2 and shifted by
      `(-1, -0.2)`.

    **Arguments:**

    - `name`: one of `TOY2D_NAMES`.
    - `n`: number of samples, `>= 1`.
    - `seed`: a non-negative integer; the samples are a pure function of the arguments.

    **Returns:**

    A float32 array of shape `(n, 2)`.

    **Raises:**

    `InputError` for an unknown name (naming the closest valid one), or a bad `n` or
    `seed`.

    **Example:**

    ```python
    import nodekit

    x = nodekit.data.sample_toy2d("8gaussians", 512, seed=0)   # (512, 2) float32
    ```
    """
    name = _check_name(name)
    n = check_int("n", n)
    seed = check_seed(seed)
    return _SAMPLERS[name](n, rng(seed, "toy2d:" + name)).astype(np.float32)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _log_normal_2d(sq_dist, std):
    return -sq_dist / (2 * std**2) - np.log(2 * np.pi * std**2)


def _log_eight_gaussians(x):
    d = x[..., None, :] - eight_gaussians_centres()
    return _logsumexp(_log_normal_2d(np.sum(d**2, axis=-1), EIGHT_GAUSSIANS_STD), -1) - np.log(8)


def _log_checkerboard(x):
    with np.errstate(invalid="ignore"):
        i, j = np.floor(x[..., 0] / 2), np.floor(x[..., 1] / 2)
    inside = np.all((x >= -4) & (x < 4), axis=-1)
    on = inside & ((i + j) % 2 == 0)
    return np.where(on, -np.log(32.0), -np.inf)


def _log_circles(x):
    # A ring of radius R blurred by N(0, s^2 I) with a uniform angle has density
    # exp(-(|x|^2 + R^2) / (2 s^2)) I0(|x| R / s^2) / (2 pi s^2); I0 is scaled
    # (i0e(z) = exp(-z) I0(z)) to avoid overflow far from the origin.
    from scipy.special import i0e

    s2 = CIRCLES_STD**2
    rho = np.sqrt(np.sum(x**2, axis=-1))
    terms = []
    for radius in CIRCLES_RADII:
        z = rho * radius / s2
        terms.append(-((rho - radius) ** 2) / (2 * s2) + np.log(i0e(z)) - np.log(2 * np.pi * s2))
    return _logsumexp(np.stack(terms, -1), -1) - np.log(len(CIRCLES_RADII))


_LOG_DENSITIES = {
    "8gaussians": _log_eight_gaussians,
    "checkerboard": _log_checkerboard,
    "circles": _log_circles,
}

#: The names `toy2d_log_density` accepts (those with a closed-form density).
TOY2D_DENSITY_NAMES: tuple[str, ...] = tuple(_LOG_DENSITIES)


def toy2d_log_density(name: str, points) -> np.ndarray:
    """The exact log density of a toy 2-D distribution at `points`.

    Closed forms exist for `8gaussians` (the mixture described in `sample_toy2d`),
    `checkerboard` (`-log 32` on the 8 active squares, `-inf` elsewhere) and `circles`
    (each ring is a uniform angle blurred by a Gaussian, which integrates to a Bessel
    function `I0`). The others have no closed form.

    **Arguments:**

    - `name`: one of `TOY2D_DENSITY_NAMES` (`8gaussians`, `checkerboard`, `circles`).
    - `points`: array-like of shape `(..., 2)`.

    **Returns:**

    A float32 array of shape `points.shape[:-1]` (computed in float64).

    **Raises:**

    `InputError` for an unknown name, a density without a closed form, or points whose
    last axis is not 2.

    **Example:**

    ```python
    import nodekit

    x = nodekit.data.sample_toy2d("8gaussians", 1000, seed=0)
    nll = -nodekit.data.toy2d_log_density("8gaussians", x).mean()   # about 2.85 nats
    ```
    """
    name = _check_name(name)
    if name not in _LOG_DENSITIES:
        raise InputError(
            f"toy 2-D density {name!r} has no closed-form density; toy2d_log_density "
            f"supports {', '.join(TOY2D_DENSITY_NAMES)}."
        )
    x = np.asarray(points, dtype=np.float64)
    if x.ndim < 1 or x.shape[-1] != 2:
        raise InputError(f"points must have shape (..., 2), got {x.shape}.")
    return _LOG_DENSITIES[name](x).astype(np.float32)
