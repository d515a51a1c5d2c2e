"""Irregularly sampled noisy 2-D spirals for latent ODEs (Chen et al. 2018, Rubanova et
al. 2019)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._errors import InputError
from ._checks import check_float, check_int, check_seed, rng
from ._split import Split, split_dataset


#: Radius of the spirals as a function of their phase `z`: `r = a + b * z` (Archimedean,
#: as in the latent-ODE example of torchdiffeq with `a = 0`, `b = 0.3`).
SPIRAL_A = 0.0
SPIRAL_B = 0.3
#: Each spiral starts at a phase drawn uniformly from this range (radians).
SPIRAL_START_PHASE = (0.5 * math.pi, 2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class LatentSpirals:
    """Noisy, irregularly observed spirals; one row per spiral (made by
    `nodekit.data.latent_spirals`).

    **Example:**

    ```python
    import nodekit

    train, test = nodekit.data.latent_spirals(50, seed=0)
    print(train.ts.shape, train.observations.shape, train.mask.shape)   # (T,) (N, T, 2) (N, T)
    ```

    All spirals share the time grid `ts`. Time points `ts[:obs_end]` are the
    observation window: each spiral is observed at `n_obs` of them, chosen at random
    (`mask`). Time points `ts[obs_end:]` are never observed: they hold out the future of
    each spiral for extrapolation (reconstruct from the window, compare
    `trajectories[:, obs_end:]`).

    **Fields:**

    - `ts`: `(n_points,)` float32, the shared time grid.
    - `trajectories`: `(N, n_points, 2)` float32, the clean spirals.
    - `observations`: `(N, n_points, 2)` float32, `trajectories` plus Gaussian noise
      where `mask` is true, and exactly zero where it is false.
    - `mask`: `(N, n_points)` bool, true where a spiral is observed (never at or after
      `obs_end`).
    - `clockwise`: `(N,)` bool, the direction of rotation (the class label).
    - `start_phase`: `(N,)` float32, the phase `z0` each spiral starts from.
    - `obs_end`: int, the first time index after the observation window.
    """

    ts: np.ndarray
    trajectories: np.ndarray
    observations: np.ndarray
    mask: np.ndarray
    clockwise: np.ndarray
    start_phase: np.ndarray
    obs_end: int

    def __len__(self) -> int:
        return int(self.trajectories.shape[0])

    def subset(self, index) -> "LatentSpirals":
        """The spirals at `index` (an integer array or a boolean mask)."""
        return dataclasses.replace(
            self,
            trajectories=self.trajectories[index],
            observations=self.observations[index],
            mask=self.mask[index],
            clockwise=self.clockwise[index],
            start_phase=self.start_phase[index],
        )


def latent_spirals(
    n_samples: int,
    *,
    n_points: int = 100,
    n_obs: int = 30,
    noise_std: float = 0.1,
    t_max: float = 2.0 * math.pi,
    obs_fraction: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split[LatentSpirals]:
    """2-D spirals turning clockwise or anticlockwise, observed irregularly with noise.

    Spiral `i` follows the phase `z(t) = z0_i + t` along the Archimedean spiral
    `r = SPIRAL_A + SPIRAL_B * z` (`0 + 0.3 z`):
    `x(t) = r cos(s_i z), y(t) = r sin(s_i z)`, with `s_i = -1` (clockwise) or `+1`
    (anticlockwise) chosen with probability 1/2 and the start phase `z0_i` uniform in
    `SPIRAL_START_PHASE` (`[pi/2, 2 pi]`). All spirals share the grid
    `ts = linspace(0, t_max, n_points)`.

    Convention for extrapolation: the first `obs_end = round(obs_fraction * n_points)`
    time points are the observation window, in which each spiral is observed at `n_obs`
    distinct random time points (irregular sampling, different for every spiral) with
    independent `N(0, noise_std**2)` noise on each coordinate. The remaining time points
    `ts[obs_end:]` are never observed; compare predictions there with the clean
    `trajectories[:, obs_end:]`.

    **Arguments:**

    - `n_samples`: number of spirals (train and test together).
    - `n_points`: size of the shared time grid, `>= 2`.
    - `n_obs`: observed time points per spiral, in `[1, obs_end]`.
    - `noise_std`: standard deviation of the observation noise, `>= 0`.
    - `t_max`: the last time of the grid, `> 0` (one unit of time turns a spiral by one
      radian).
    - `obs_fraction`: the fraction of the grid in the observation window, in `(0, 1]`
      (`1` leaves no extrapolation tail).
    - `test_fraction`: fraction of spirals held out, in `[0, 1)`; the split is
      stratified by direction.
    - `seed`: a non-negative integer; the data are a pure function of the arguments.

    **Returns:**

    A `Split` of two `LatentSpirals` (`train`, `test`).

    **Raises:**

    `InputError` for a bad argument, e.g. `n_obs` larger than the observation window.

    **Example:**

    ```python
    import nodekit

    train, test = nodekit.data.latent_spirals(50, seed=0)
    print(train.observations.shape)           # (40, 100, 2), zero where ~train.mask
    window = train.ts[: train.obs_end]        # observed part of the grid
    future = train.trajectories[:, train.obs_end :]   # extrapolation targets
    ```
    """
    n_samples = check_int("n_samples", n_samples)
    n_points = check_int("n_points", n_points, minimum=2)
    n_obs = check_int("n_obs", n_obs)
    noise_std = check_float("noise_std", noise_std, nonnegative=True)
    t_max = check_float("t_max", t_max, positive=True)
    obs_fraction = check_float("obs_fraction", obs_fraction)
    if not 0.0 < obs_fraction <= 1.0:
        raise InputError(f"obs_fraction must be in (0, 1], got {obs_fraction}.")
    seed = check_seed(seed)
    obs_end = int(round(obs_fraction * n_points))
    if n_obs > obs_end:
        raise InputError(
            f"n_obs={n_obs} observed points per spiral do not fit in the observation "
            f"window of {obs_end} time points (obs_fraction={obs_fraction} of "
            f"n_points={n_points}); use n_obs <= {obs_end}, or raise obs_fraction or "
            "n_points."
        )

    generator = rng(seed, "latent_spirals")
    ts = np.linspace(0.0, t_max, n_points)
    clockwise = generator.random(n_samples) < 0.5
    start_phase = generator.uniform(*SPIRAL_START_PHASE, size=n_samples)
    z = start_phase[:, None] + ts[None, :]
    r = SPIRAL_A + SPIRAL_B * z
    angle = np.where(clockwise, -1.0, 1.0)[:, None] * z
    trajectories = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)

    # n_obs distinct random time indices per spiral inside the window
    chosen = np.argsort(generator.random((n_samples, obs_end)), axis=1)[:, :n_obs]
    mask = np.zeros((n_samples, n_points), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    noise = noise_std * generator.standard_normal(trajectories.shape)
    observations = np.where(mask[..., None], trajectories + noise, 0.0)

    data = LatentSpirals(
        ts=ts.astype(np.float32),
        trajectories=trajectories.astype(np.float32),
        observations=observations.astype(np.float32),
        mask=mask,
        clockwise=clockwise,
        start_phase=start_phase.astype(np.float32),
        obs_end=obs_end,
    )
    return split_dataset(data, test_fraction=test_fraction, seed=seed, labels=clockwise)
