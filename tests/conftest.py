import os

# Tests run on the CPU, without the persistent compilation cache of the user's home.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("NODEKIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))

import jax  # noqa: E402
import pytest  # noqa: E402


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
