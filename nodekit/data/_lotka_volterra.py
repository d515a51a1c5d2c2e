"""Lotka–Volterra predator–prey data for the universal differential equation experiment
(Rackauckas et al. 2020)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .._errors import InputError
from ._reference import cached_reference, reference_solve
from ._checks import check_float, check_int, check_seed, rng


@functools.lru_cache(maxsize=16)
def _solve(params: tuple, y0: tuple, t1: float, n_points: int) -> np.ndarray:
    ts = np.linspace(0.0, t1, n_points, dtype=np.float32)
    alpha, beta, gamma, delta = params
    rhs = lambda t, s: np.array([alpha * s[0] - beta * s[0] * s[1], gamma * s[0] * s[1] - delta * s[1]])
    ys = cached_reference("lotka_volterra", [list(params), list(y0), t1, n_points], (n_points, 2),
                          lambda: reference_solve(rhs, y0, ts))
    ys.flags.writeable = False
    return ys


@dataclasses.dataclass(frozen=True)
class LotkaVolterra:
    """One noisy Lotka–Volterra trajectory and its ground truth.

    The model is `dx/dt = alpha x - beta x y`, `dy/dt = gamma x y - delta y` (`x` prey,
    `y` predator). Made by `nodekit.data.lotka_volterra`.

    **Example:**

    ```python
    import nodekit

    lv = nodekit.data.lotka_volterra(seed=0)
    print(lv.ts.shape, lv.observations.shape)   # (31,) (31, 2): (n_obs,), (n_obs, 2)
    alpha, beta, gamma, delta = lv.params       # 1.3 0.9 0.8 1.8
    ```

    **Fields:**

    - `ts`: `(n_obs,)` float32 observation times `linspace(0, t1, n_obs)`.
    - `states`: `(n_obs, 2)` float32 clean states `(x, y)`.
    - `observations`: `(n_obs, 2)` float32, `states + noise_scale * N(0, I)`.
    - `noise_scale`: `(2,)` float32 noise standard deviation of each coordinate.
    - `params`: `(4,)` float32 true `(alpha, beta, gamma, delta)`.
    - `y0`: `(2,)` float32 initial state.
    """

    ts: np.ndarray
    states: np.ndarray
    observations: np.ndarray
    noise_scale: np.ndarray
    params: np.ndarray
    y0: np.ndarray

    def extrapolate(self, t1: float, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The clean trajectory from the same `y0` over a longer horizon.

        **Arguments:**

        - `t1`: the end time, `> 0` (e.g. 3x the observed horizon).
        - `n_points`: number of time points; default: the observation spacing, so the
          grid extends `ts` when `t1` is a multiple of it.

        **Returns:**

        `(ts, states)`, float32 arrays of shapes `(n_points,)` and `(n_points, 2)` at
        `linspace(0, t1, n_points)`.

        **Raises:**

        `InputError` for a bad `t1` or `n_points`.
        """
        t1 = check_float("t1", t1, positive=True)
        if n_points is None:
            dt = float(self.ts[1] - self.ts[0])
            n_points = max(2, int(round(t1 / dt)) + 1)
        n_points = check_int("n_points", n_points, minimum=2)
        states = _solve(tuple(self.params.tolist()), tuple(self.y0.tolist()), t1, n_points)
        return np.linspace(0.0, t1, n_points, dtype=np.float32), states.copy()

    def interaction(self, states) -> np.ndarray:
        """The interaction terms `(-beta x y, gamma x y)`: the part of the dynamics that
        the UDE experiment replaces by a neural network. `states` has shape `(..., 2)`."""
        states = np.asarray(states, dtype=np.float64)
        _, beta, gamma, _ = self.params.astype(np.float64)
        xy = states[..., 0] * states[..., 1]
        return np.stack([-beta * xy, gamma * xy], axis=-1).astype(np.float32)

    def invariant(self, states) -> np.ndarray:
        """The conserved quantity `V = gamma x - delta ln x + beta y - alpha ln y`
        (constant along exact trajectories). `states` has shape `(..., 2)`."""
        states = np.asarray(states, dtype=np.float64)
        alpha, beta, gamma, delta = self.params.astype(np.float64)
        x, y = states[..., 0], states[..., 1]
        return (gamma * x - delta * np.log(x) + beta * y - alpha * np.log(y)).astype(np.float32)


def _check_y0(y0) -> np.ndarray:
    try:
        arr = np.asarray(y0, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (2,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"y0 must be two positive finite numbers (prey, predator), got {y0!r}.")
    return arr


def lotka_volterra(
    *,
    alpha: float = 1.3,
    beta: float = 0.9,
    gamma: float = 0.8,
    delta: float = 1.8,
    y0=(0.44249296, 4.6280594),
    t1: float = 3.0,
    n_obs: int = 31,
    noise: float = 0.05,
    seed: int = 0,
) -> LotkaVolterra:
    """Noisy observations of a Lotka–Volterra trajectory, as in the UDE paper.

    `dx/dt = alpha x - beta x y`, `dy/dt = gamma x y - delta y` (`x` prey, `y` predator).
    The defaults are the paper's: `p = [1.3, 0.9, 0.8, 1.8]` in
    `du1 = p1 u1 - p2 u1 u2`, `du2 = p3 u1 u2 - p4 u2`, `u0 = [0.44249296, 4.6280594]`,
    saved every 0.1 on `[0, 3]`. Solved in float64 with SciPy's DOP853 at
    `rtol=1e-10, atol=1e-12` and returned as float32.

    Noise, as in the paper: additive Gaussian with per-coordinate standard deviation
    `noise * mean(states[:, i])` (the mean of the clean coordinate over the observed
    trajectory), i.e. `observations = states + noise * mean(states, axis=0) * N(0, I)`.

    **Arguments:**

    - `alpha`, `beta`, `gamma`, `delta`: positive rates (prey growth, predation, predator
      growth per prey, predator death).
    - `y0`: the positive initial `(prey, predator)`.
    - `t1`: the last observation time, `> 0`.
    - `n_obs`: observations on `linspace(0, t1, n_obs)`, `>= 2`.
    - `noise`: relative noise level, `>= 0`.
    - `seed`: a non-negative integer; the noise is a pure function of the arguments.

    **Returns:**

    A `LotkaVolterra` (with `extrapolate(t1)` for a longer clean trajectory).

    **Raises:**

    `InputError` for a bad argument.

    **Example:**

    ```python
    import nodekit

    lv = nodekit.data.lotka_volterra(seed=0)
    print(lv.observations.shape)                # (31, 2)
    ts_long, states_long = lv.extrapolate(6.0)  # 61 points, same spacing
    ```
    """
    params = tuple(
        check_float(name, value, positive=True)
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("delta", delta))
    )
    y0_arr = _check_y0(y0)
    t1 = check_float("t1", t1, positive=True)
    n_obs = check_int("n_obs", n_obs, minimum=2)
    noise = check_float("noise", noise, nonnegative=True)
    seed = check_seed(seed)

    y0_f32 = y0_arr.astype(np.float32)
    params_f32 = np.asarray(params, dtype=np.float32)
    states = _solve(tuple(params_f32.tolist()), tuple(y0_f32.tolist()), t1, n_obs).copy()
    noise_scale = noise * states.astype(np.float64).mean(axis=0)
    eps = rng(seed, "lotka_volterra").standard_normal(states.shape)
    observations = states + noise_scale * eps
    return LotkaVolterra(
        ts=np.linspace(0.0, t1, n_obs, dtype=np.float32),
        states=states,
        observations=observations.astype(np.float32),
        noise_scale=noise_scale.astype(np.float32),
        params=params_f32,
        y0=y0_f32,
    )
