"""The data generators' argument checks (`nodekit._checks`, the one place nodekit's
checks live) and their seeded random streams.

Every check raises `InputError` with a message that names the argument, the bad value
and what is allowed.
"""

from __future__ import annotations

import zlib

import numpy as np

from .._checks import (
    check_float as check_float,
    check_fraction as check_fraction,
    check_int as check_int,
    check_seed as check_seed,
)


def rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    """A NumPy generator for `seed` and a named stream.

    Each generator draws from its own stream (`[seed, crc32(stream), *more]`), so two
    functions called with the same seed never share random numbers.
    """
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), *more])
