"""Train/test splits, the labelled-data container, and the resumable minibatch helper."""

from __future__ import annotations

import dataclasses
import functools
from typing import Generic, TypeVar

import numpy as np

from .._errors import InputError
from ._checks import check_fraction, check_int, check_seed, rng


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Split(Generic[T]):
    """A training set and a test set of the same type.

    **Fields:**

    - `train`: the training set.
    - `test`: the test set (empty when the generator was called with
      `test_fraction=0`).

    **Example:**

    ```python
    import nodekit

    split = nodekit.data.concentric_spheres(100, seed=0)
    print(len(split.train), len(split.test))   # 80 20
    train, test = split                        # it unpacks as a pair
    ```
    """

    train: T
    test: T

    def __iter__(self):
        return iter((self.train, self.test))


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """Inputs and labels.

    **Fields:**

    - `x`: inputs, float32, leading axis the examples.
    - `y`: labels, leading axis the examples (float32 `±1` targets for the ANODE
      data, int32 classes for `digits`).

    Unpacks as a pair (`x, y = data`) and supports `len(data)`.

    **Example:**

    ```python
    import numpy as np
    import nodekit

    data = nodekit.data.LabelledData(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]))
    x, y = data
    print(len(data), data.subset(y == 1).x.shape)   # 4 (2, 2)
    ```
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self):
        return iter((self.x, self.y))

    def subset(self, index) -> "LabelledData":
        """The examples at `index` (an integer array or a boolean mask)."""
        return LabelledData(self.x[index], self.y[index])


def _apportion(counts: np.ndarray, total: int, generator: np.random.Generator) -> np.ndarray:
    """Split `total` over groups in proportion to `counts` (largest remainder).

    Each group gets `floor` or `ceil` of its exact share; ties between remainders are
    broken at random so that no class is favoured.
    """
    share = counts * (total / counts.sum())
    out = np.floor(share).astype(np.int64)
    remainder = share - out
    order = np.lexsort((generator.permutation(len(counts)), -remainder))
    out[order[: total - out.sum()]] += 1
    return out


def split_indices(
    n: int,
    *,
    test_fraction: float,
    seed: int,
    labels=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint train/test indices covering `range(n)`.

    The test set has `round(test_fraction * n)` examples. With `labels`, the split is
    stratified: each class contributes the floor or the ceiling of `test_fraction`
    times its count, so class proportions match between the two sets.

    **Arguments:**

    - `n`: the number of examples.
    - `test_fraction`: in `[0, 1)`.
    - `seed`: a non-negative integer; the split is a pure function of the arguments.
    - `labels`: optional class labels of shape `(n,)` for a stratified split.

    **Returns:**

    `(train_idx, test_idx)`, sorted int64 arrays.

    **Raises:**

    `InputError` for a bad fraction or seed, labels of the wrong shape, or a fraction
    that leaves the test set empty (`test_fraction > 0`) or the training set empty.

    **Example:**

    ```python
    import numpy as np
    import nodekit

    train_idx, test_idx = nodekit.data.split_indices(100, test_fraction=0.2, seed=0)
    print(len(train_idx), len(test_idx))              # 80 20
    assert not np.intersect1d(train_idx, test_idx).size   # disjoint
    ```
    """
    n = check_int("n", n)
    test_fraction = check_fraction("test_fraction", test_fraction)
    seed = check_seed(seed)
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n_test == 0:
        raise InputError(
            f"test_fraction={test_fraction} of {n} examples rounds to an empty test set; "
            "use more examples, a larger test_fraction, or test_fraction=0 for no test set."
        )
    if n_test >= n:
        raise InputError(
            f"test_fraction={test_fraction} of {n} examples leaves no training examples; "
            "use a smaller test_fraction."
        )
    generator = rng(seed, "split")
    if labels is None:
        test = generator.permutation(n)[:n_test]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise InputError(
                f"labels must have shape ({n},) to stratify {n} examples, got "
                f"{labels.shape}."
            )
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        per_class = _apportion(counts, n_test, generator)
        test = np.concatenate(
            [
                generator.permutation(np.flatnonzero(inverse == c))[:k]
                for c, k in enumerate(per_class)
            ]
        )
    is_test = np.zeros(n, bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def split_dataset(data, *, test_fraction: float, seed: int, labels=None) -> Split:
    """`Split(data.subset(train_idx), data.subset(test_idx))` from `split_indices`."""
    train_idx, test_idx = split_indices(
        len(data), test_fraction=test_fraction, seed=seed, labels=labels
    )
    return Split(data.subset(train_idx), data.subset(test_idx))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = rng(seed, "batch", epoch).permutation(n)
    perm.flags.writeable = False
    return perm


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The minibatch indices for training step `step`: a pure function of its arguments.

    Each epoch is a fresh random permutation of `range(n)` (seeded by `seed` and the
    epoch number) cut into `n // batch_size` batches of exactly `batch_size` distinct
    indices; the last `n % batch_size` indices of each permutation are skipped that
    epoch (a different few each epoch), so every batch has the same shape. Step `s`
    is batch `s % (n // batch_size)` of epoch `s // (n // batch_size)`. Because no
    state is carried between calls, a run resumed at step `s` draws exactly the
    batches the uninterrupted run would have drawn.

    **Arguments:**

    - `seed`: a non-negative integer.
    - `step`: the training step, `>= 0`.
    - `n`: the number of training examples.
    - `batch_size`: in `[1, n]`.

    **Returns:**

    An int64 array of shape `(batch_size,)` with distinct indices in `[0, n)`.

    **Raises:**

    `InputError` for a negative step or seed, or `batch_size` outside `[1, n]`.

    **Example:**

    ```python
    import nodekit

    train, test = nodekit.data.concentric_spheres(200, seed=0)
    idx = nodekit.data.batch_indices(seed=0, step=1234, n=len(train), batch_size=32)
    xb, yb = train.x[idx], train.y[idx]   # the same batch whenever step 1234 is rerun
    ```
    """
    seed = check_seed(seed)
    step = check_int("step", step, minimum=0)
    n = check_int("n", n)
    batch_size = check_int("batch_size", batch_size)
    if batch_size > n:
        raise InputError(
            f"batch_size must be <= n (the number of examples, {n}), got {batch_size}."
        )
    per_epoch = n // batch_size
    epoch, b = divmod(step, per_epoch)
    perm = _epoch_permutation(seed, epoch, n)
    return perm[b * batch_size : (b + 1) * batch_size].copy()
