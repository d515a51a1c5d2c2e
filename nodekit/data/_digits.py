"""scikit-learn's bundled 8x8 handwritten digits (no download)."""

from __future__ import annotations

import functools

import numpy as np

from ._checks import check_seed
from ._split import LabelledData, Split, split_dataset


@functools.lru_cache(maxsize=1)
def _load() -> LabelledData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from .._errors import InputError

        raise InputError("the 8x8 digits data set is read from scikit-learn, which is not "
                         "installed: pip install 'nodekit[digits]' (or scikit-learn).") from None

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return LabelledData(x, y)


def digits(seed: int = 0, test_fraction: float = 0.2) -> Split[LabelledData]:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, split train/test.

    Pixels (0..16 in the source) are scaled to `[0, 1]`. The split is stratified: each
    digit class contributes the floor or ceiling of `test_fraction` of its examples to
    the test set.

    **Arguments:**

    - `seed`: a non-negative integer choosing the split (the data are fixed).
    - `test_fraction`: fraction held out, in `[0, 1)`.

    **Returns:**

    A `Split` of two `LabelledData`: `x` float32 `(m, 1, 8, 8)` in `[0, 1]`, `y` int32
    `(m,)` in `0..9`.

    **Raises:**

    `InputError` for a bad seed or fraction.

    **Example:**

    ```python
    import nodekit

    train, test = nodekit.data.digits(seed=0)
    print(train.x.shape, test.x.shape)   # (1438, 1, 8, 8) (359, 1, 8, 8)
    ```
    """
    seed = check_seed(seed)
    data = _load()
    return split_dataset(data, test_fraction=test_fraction, seed=seed, labels=data.y)
