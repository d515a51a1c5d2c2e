"""The functions that plain neural ODEs cannot represent (Dupont et al. 2019, ANODE)."""

from __future__ import annotations

import numpy as np

from .._errors import InputError
from ._checks import check_float, check_int, check_seed, rng
from ._split import LabelledData, Split, split_dataset


def anode_g1d() -> LabelledData:
    """The 1-D map `g(1) = -1`, `g(-1) = 1` of ANODE's section 4.

    A neural ODE on the real line cannot represent it (trajectories cannot cross), but
    one augmented dimension can.

    **Returns:**

    `LabelledData` with `x = [[1], [-1]]` (shape `(2, 1)`) and `y = [-1, 1]` (shape
    `(2,)`), both float32.

    **Example:**

    ```python
    import nodekit

    x, y = nodekit.data.anode_g1d()   # x = [[1], [-1]] maps to y = [-1, 1]
    print(x.shape, y)                 # (2, 1) [-1.  1.]
    ```
    """
    return LabelledData(
        x=np.array([[1.0], [-1.0]], dtype=np.float32),
        y=np.array([-1.0, 1.0], dtype=np.float32),
    )


def _uniform_in_shell(n, dim, r_lo, r_hi, g):
    """`n` points uniform (in volume) in `{r_lo <= |x| <= r_hi}` of `R^dim`."""
    direction = g.standard_normal((n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    u = g.random(n)
    radius = (r_lo**dim + u * (r_hi**dim - r_lo**dim)) ** (1.0 / dim)
    return direction * radius[:, None]


def concentric_spheres(
    n: int,
    *,
    dim: int = 2,
    r1: float = 0.5,
    r2: float = 1.0,
    r3: float = 1.5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split[LabelledData]:
    """ANODE's concentric spheres: `g(x) = -1` for `|x| <= r1`, `+1` for `r2 <= |x| <= r3`.

    Half the points (`n // 2`) are uniform in volume inside the ball of radius `r1` and
    labelled `-1`; the rest are uniform in volume in the shell `r2 <= |x| <= r3` and
    labelled `+1`. (ANODE's own code draws the radius uniformly between the bounds,
    which is not uniform in volume; here it is.) Points are shuffled; the train/test
    split is stratified, so both sets stay balanced.

    **Arguments:**

    - `n`: number of points (train and test together), `>= 2`.
    - `dim`: dimension of the space, `>= 1` (`dim=1` gives ANODE's 1-D version).
    - `r1`, `r2`, `r3`: radii with `0 < r1 < r2 < r3`.
    - `test_fraction`: fraction held out, in `[0, 1)`.
    - `seed`: a non-negative integer; the data are a pure function of the arguments.

    **Returns:**

    A `Split` of two `LabelledData`: `x` float32 `(m, dim)`, `y` float32 `(m,)` in
    `{-1, +1}`.

    **Raises:**

    `InputError` for a bad argument, e.g. radii out of order.

    **Example:**

    ```python
    import nodekit

    train, test = nodekit.data.concentric_spheres(200, dim=2, seed=0)
    print(train.x.shape, train.y.shape, test.x.shape)   # (160, 2) (160,) (40, 2)
    ```
    """
    n = check_int("n", n, minimum=2)
    dim = check_int("dim", dim)
    r1 = check_float("r1", r1, positive=True)
    r2 = check_float("r2", r2, positive=True)
    r3 = check_float("r3", r3, positive=True)
    if not r1 < r2 < r3:
        raise InputError(
            f"the radii must satisfy 0 < r1 < r2 < r3 (inner ball, then a gap, then the "
            f"shell), got r1={r1}, r2={r2}, r3={r3}."
        )
    seed = check_seed(seed)
    g = rng(seed, "concentric_spheres")
    n_inner = n // 2
    x = np.concatenate(
        [
            _uniform_in_shell(n_inner, dim, 0.0, r1, g),
            _uniform_in_shell(n - n_inner, dim, r2, r3, g),
        ]
    )
    y = np.concatenate([-np.ones(n_inner), np.ones(n - n_inner)])
    order = g.permutation(n)
    data = LabelledData(x[order].astype(np.float32), y[order].astype(np.float32))
    return split_dataset(data, test_fraction=test_fraction, seed=seed, labels=data.y)
