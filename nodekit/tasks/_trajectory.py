"""The `trajectory` task: fit a neural ODE to an observed trajectory."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import ConfigError
from ._base import AbstractTask
from ._common import add_penalties, build_regularisers, make_field, solve_batch_regularised, solve_kwargs
from .._neural_ode import NeuralODE



class TrajectoryTask(AbstractTask):
    """Fit a neural ODE to one observed trajectory (torchdiffeq's `ode_demo`).

    Each batch holds `batch_size` segments of `batch_time` consecutive points, each
    solved from its first observed state over `ts[:batch_time]` (the dynamics are taken
    to be autonomous, as in `ode_demo`). The loss is the mean absolute error over the
    segment, as in `ode_demo`. Evaluation solves the whole
    trajectory from `y0`.
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d = config.data
        if config.regularisation.steer is not None:
            raise ConfigError(
                "regularisation.steer",
                "STEER perturbs the end time of a solve, but the trajectory task's loss "
                "uses every save time; use it with density or classification tasks.",
            )
        if d.batch_time > d.n_points:
            raise ConfigError("data.batch_time", f"got {d.batch_time}: must be <= data.n_points ({d.n_points}).")
        if config.train.batch_size > d.n_points - d.batch_time:
            raise ConfigError(
                "train.batch_size",
                f"got {config.train.batch_size}: at most n_points - batch_time = "
                f"{d.n_points - d.batch_time} distinct segments exist.",
            )
        from ..data import ode_demo_spiral

        ts, ys = ode_demo_spiral(n_points=d.n_points, t1=d.t1)
        ys = np.asarray(ys, np.float32)
        if d.noise > 0:
            rng = np.random.default_rng([config.seed, 7])
            ys = ys + d.noise * rng.standard_normal(ys.shape).astype(np.float32)
        self.ts = np.asarray(ts, np.float32)
        self.ys = ys
        self.regularisers = build_regularisers(config)

    def make_model(self, key):
        field = make_field(self.config, self.ys.shape[-1] + self.config.model.augment_dim, key)
        return NeuralODE(field, augment_dim=self.config.model.augment_dim, **solve_kwargs(self.config))

    def batch(self, step: int):
        d, bs = self.config.data, self.config.train.batch_size
        rng = np.random.default_rng([self.config.seed, 1, step])
        s = rng.choice(d.n_points - d.batch_time, bs, replace=False)
        idx = s[:, None] + np.arange(d.batch_time)[None, :]
        return {"y0": self.ys[s], "target": self.ys[idx]}

    def _err(self, pred, target):
        e = pred - target
        return jnp.mean(jnp.abs(e))

    def loss(self, model, batch, key):
        ts = jnp.asarray(self.ts[: self.config.data.batch_time])
        y0 = model.augment(batch["y0"])
        ys, penalties, aux = solve_batch_regularised(model.field, y0, ts, self.regularisers,
                                                     key, self.config)
        size = batch["target"].shape[-1]
        task_loss = self._err(ys[..., :size], batch["target"])
        return add_penalties(task_loss, penalties, self.regularisers, aux), aux

    def predict(self, model):
        """The model's trajectory over the whole time grid, from the observed `y0`."""
        sol = model.solve(jnp.asarray(self.ts), jnp.asarray(self.ys[0]), throw=False)
        return sol.ys[:, : self.ys.shape[-1]], sol.stats

    def evaluate(self, model):
        pred, stats = self.predict(model)
        return {
            "eval_loss": self._err(pred, jnp.asarray(self.ys)),
            "eval_nfe": stats.nfe.astype(jnp.float32),
            "eval_failed": (stats.result != 0).astype(jnp.float32),
        }

    def describe(self):
        d = self.config.data
        return {"loss": f"mean |error| over segments of data.batch_time={d.batch_time} points, "
                        "each solved from its first observed state",
                "eval_loss": f"mean |error| over the whole trajectory ({d.n_points} points), "
                             "solved from the first observed state alone",
                "state_names": None}

    def plot(self, model, plot_dir: Path):
        from ..plots import plot_trajectory

        pred, _ = eqx.filter_jit(self.predict)(model)
        return [plot_trajectory(self.ts, self.ys, np.asarray(pred), Path(plot_dir) / "trajectory.png")]
