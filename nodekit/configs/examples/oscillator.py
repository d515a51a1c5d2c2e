"""A damped oscillator with two unknown constants, for oscillator.yaml.

nodekit imports `DampedOscillator` from this file (the config's `model.field.target`)
and calls it with the config's `model.field.kwargs` (the starting guesses). Training
fits its two arrays, `stiffness` and `damping`, to the data.
"""

import equinox as eqx
import jax
import jax.numpy as jnp


class DampedOscillator(eqx.Module):
    """x'' + damping x' + stiffness x = 0, as the first-order system
    dx/dt = v, dv/dt = -stiffness x - damping v on the state y = (x, v)."""

    stiffness: jax.Array
    damping: jax.Array

    def __init__(self, stiffness: float = 1.0, damping: float = 0.1):
        self.stiffness = jnp.asarray(stiffness)
        self.damping = jnp.asarray(damping)

    def __call__(self, t, y, args):
        x, v = y[0], y[1]
        return jnp.stack([v, -self.stiffness * x - self.damping * v])
