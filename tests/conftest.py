import os

# Tests run on the CPU, without the persistent compilation cache of the user's home.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("NODEKIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
# The suite is compile-bound (tiny problems, each compiled once): XLA's backend
# optimisation level 0 compiles about 25 % faster (CPU time of tests/test_regularisers.py:
# 80 s -> 60 s) for slower code that the tests do not time. A test-suite setting only,
# inherited by the CLI subprocesses the tests start, so their results stay comparable.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def strict_promotion():
    """Every test runs with strict dtype promotion and rank promotion raising (as
    Equinox's and Diffrax's suites do): an implicit `float32 * float64`, `int * float`
    or `(3,) + (3, 1)` in library code fails the test instead of silently widening."""
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def getkey():
    """`getkey()` returns a fresh PRNG key each call (deterministic per test)."""
    keys = iter(jax.random.split(jax.random.PRNGKey(5678), 1000))
    return lambda: next(keys)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (scoped: other tests stay float32)."""
    with jax.enable_x64(True):
        yield
