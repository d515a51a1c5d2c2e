"""Shared test helpers."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Whether two pytrees have the same structure and allclose leaves."""
    xs, xt = jax.tree_util.tree_flatten(x)
    ys, yt = jax.tree_util.tree_flatten(y)
    if xt != yt:
        return False
    return all(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol) for a, b in zip(xs, ys))


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run `python -m nodekit ARGS` in a subprocess; returns CompletedProcess (text)."""
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(
        [sys.executable, "-m", "nodekit", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env,
    )


def central_fd(f, x, eps=1e-6):
    """Central finite-difference gradient of scalar f at array x (float64)."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * eps)
    return g
