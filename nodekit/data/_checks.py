"""Argument checks shared by the data generators, and the seeded random streams.

Every check raises `InputError` with a message that names the argument, the bad value
and what is allowed.
"""

from __future__ import annotations

import math
import numbers
import zlib

import numpy as np

from .._errors import InputError


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """`value` as an `int`, refusing booleans, floats and anything below `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(
            f"{name} must be an integer >= {minimum}, got {value!r} "
            f"({type(value).__name__})."
        )
    if value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_seed(seed) -> int:
    """A seed: a non-negative integer (NumPy's `SeedSequence` refuses negatives)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise InputError(
            f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})."
        )
    if seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed}.")
    return int(seed)


def check_float(
    name: str,
    value,
    *,
    positive: bool = False,
    nonnegative: bool = False,
) -> float:
    """`value` as a finite `float`; optionally `> 0` or `>= 0`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value}.")
    if positive and not value > 0:
        raise InputError(f"{name} must be > 0, got {value}.")
    if nonnegative and not value >= 0:
        raise InputError(f"{name} must be >= 0, got {value}.")
    return value


def check_fraction(name: str, value) -> float:
    """A fraction in `[0, 1)` (e.g. `test_fraction`: the training set is never empty)."""
    value = check_float(name, value)
    if not 0.0 <= value < 1.0:
        raise InputError(f"{name} must be in [0, 1), got {value}.")
    return value


def rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    """A NumPy generator for `seed` and a named stream.

    Each generator draws from its own stream (`[seed, crc32(stream), *more]`), so two
    functions called with the same seed never share random numbers.
    """
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), *more])
