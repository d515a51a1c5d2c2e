"""The `trajectory` task: fit a neural ODE (or the user's own field) to observed
trajectories: the `ode_demo` spiral, or the user's CSV/NPZ file."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import InputError
from .._neural_ode import NeuralODE
from ._base import AbstractTask
from ._common import (
    add_penalties,
    as_data,
    batch_rng,
    build_regularisers,
    check_batch_size,
    eval_mode,
    file_fingerprint,
    make_field,
    solve_batch_regularised,
    solve_kwargs,
    split_parts,
    user_field,
)


class TrajectoryTask(AbstractTask):
    """Fit a neural ODE to observed trajectories.

    Data: `spiral` (torchdiffeq's `ode_demo`, one trajectory) or `file` (the user's
    series, see `nodekit.data.read_trajectories`). Each batch holds `batch_size`
    segments of `batch_time` consecutive observations, each solved from its first
    observed state over its own times. The loss is the mean absolute error over the
    segments (as `ode_demo`) plus the weighted regularisers.

    For an autonomous field (an MLP without `time_dependent`) on a regular grid the
    segments share one time grid starting at 0, so `solver.batch_mode: joint` can solve
    them as one state; otherwise (irregular times, a time-dependent or `python` field)
    each segment is solved on its own times, and `batch_mode: joint` is refused.

    Evaluation solves each evaluation series whole from its first state (`eval_loss`:
    mean absolute error; for files in the normalised units when `data.normalise`).

    **Example:**

    ```python
    import jax
    import nodekit
    from nodekit.tasks import make_task

    task = make_task(nodekit.load_config("tiny"))
    model = task.make_model(jax.random.PRNGKey(0))
    loss, aux = task.loss(model, task.batch(0), jax.random.PRNGKey(1))
    ```
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d = config.data
        self.regularisers = build_regularisers(config)
        self.user = user_field(config)
        dt = self.dtype
        if d.name == "spiral":
            from ..data import ode_demo_spiral

            ts, ys = ode_demo_spiral(n_points=d.n_points, t1=d.t1)
            ys = np.asarray(ys, np.float32)
            if d.noise > 0:
                rng = np.random.default_rng([config.seed, 7])
                ys = ys + d.noise * rng.standard_normal(ys.shape).astype(np.float32)
            self.ts = np.asarray(ts, dt)
            self.ys = np.asarray(ys, dt)
            self.batch_time = d.batch_time
            self.state_names = None  # plots name them x₁, x₂
            self.n_train = d.n_points - d.batch_time
            self._series = None
        else:
            self._load_file(config)
        size = self.ys.shape[-1] if d.name == "spiral" else self.train.dim
        self.size = size
        if self.user is not None:
            self.user.check(size, dt, jax.random.PRNGKey(0))
            self._fingerprint_parts.append(self.user.source)

    # -- the user's file

    def _load_file(self, config: Config):
        from ..data import Normalisation, read_trajectories

        d = config.data
        tr = read_trajectories(d.path, time=d.time, state=d.state, series=d.series,
                               task="trajectory")
        self._fingerprint_parts.append(file_fingerprint(d.path))
        self.state_names = tr.names
        self.batch_time = k = d.batch_time
        short = [(i, n) for i, n in zip(tr.ids, tr.lengths) if n < k]
        if short:
            sid, n = short[0]
            which = f"series {sid!r}" if d.series is not None else "the trajectory"
            raise InputError(f"data file {d.path!r}: {which} has {n} point"
                             f"{'s' if n != 1 else ''}, fewer than "
                             f"data.batch_time = {k} (each training segment takes "
                             f"batch_time consecutive points); lower data.batch_time "
                             f"or drop the short series.")
        train_idx, eval_idx, test_idx = split_parts(config, len(tr), "series")
        self.train, self.eval_series = tr.subset(train_idx), tr.subset(eval_idx)
        self.test_series = tr.subset(test_idx) if len(test_idx) else None
        norm = None
        if d.normalise:
            norm = Normalisation.fit(np.concatenate(self.train.values),
                                     names=tr.names)
        self.normalisation = norm
        prep = (lambda y: norm.apply(y)) if norm is not None else (lambda y: y)
        dt = self.dtype
        # every training segment: (series, start)
        starts = [(i, j) for i, n in enumerate(self.train.lengths) for j in range(n - k + 1)]
        self._segments = np.asarray(starts, np.int64)
        self._train_t = [np.asarray(t, np.float64) for t in self.train.times]
        self._train_y = [np.asarray(prep(y), dt) for y in self.train.values]
        self.n_train = len(starts)
        check_batch_size(config, self.n_train, f"segments of {k} points")
        # one shared grid (from 0) when the field is autonomous and the spacing regular
        f = config.model.field
        autonomous = f.type != "python" and not f.time_dependent
        rel = np.stack([self._train_t[i][j:j + k] - self._train_t[i][j] for i, j in starts])
        # equal to 1e-4 of a step (times written to a CSV with 6 digits still count)
        spacing = float(np.min(np.diff(rel[0]))) if k > 1 else 1.0
        self._shared = autonomous and bool(np.all(np.abs(rel - rel[0]) <= 1e-4 * spacing))
        if not self._shared and config.solver.batch_mode == "joint":
            from .._errors import ConfigError

            why = ("the field may depend on time" if not autonomous else
                   "the observation times are not evenly spaced")
            raise ConfigError("solver.batch_mode", f"got 'joint': a joint solve shares one time "
                                                   f"grid across the batch, but each segment of "
                                                   f"{Path(d.path).name!r} needs its own ({why}); "
                                                   "use 'vmap'.")
        self._shared_ts = np.asarray(rel[0], dt)
        self._series = True
        self._eval = self._padded(self.eval_series, prep)
        self._test = self._padded(self.test_series, prep) if self.test_series else None
        # the plot's series: the first evaluation series, in the data's units
        self.ts = np.asarray(self.eval_series.times[0], dt)
        self.ys = np.asarray(prep(self.eval_series.values[0]), dt)

    def _padded(self, tr, prep):
        ts, ys, ms = tr.padded()
        return (np.asarray(ts, self.dtype), np.asarray(prep(ys), self.dtype),
                np.asarray(ms, self.dtype))

    # -- the interface

    def make_model(self, key):
        aug = self.config.model.augment_dim
        field = make_field(self.config, self.size + aug, key, self.dtype, self.user)
        return NeuralODE(field, augment_dim=aug, **solve_kwargs(self.config))

    def batch(self, step: int):
        bs, k = self.config.train.batch_size, self.batch_time
        rng = batch_rng(self.config, step)
        if self._series is None:
            s = rng.choice(self.config.data.n_points - k, bs, replace=False)
            idx = s[:, None] + np.arange(k)[None, :]
            return {"y0": self.ys[s], "target": self.ys[idx]}
        pick = self._segments[rng.choice(len(self._segments), bs, replace=False)]
        y = np.stack([self._train_y[i][j:j + k] for i, j in pick])
        out = {"y0": y[:, 0], "target": y}
        if not self._shared:
            out["ts"] = np.stack([self._train_t[i][j:j + k] for i, j in pick]).astype(self.dtype)
        return out

    def _err(self, pred, target, mask=None):
        e = jnp.abs(pred - target)
        if mask is None:
            return jnp.mean(e)
        return jnp.sum(e * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def loss(self, model, batch, key):
        if "ts" in batch:
            ts = batch["ts"]
        elif self._series is None:
            ts = jnp.asarray(self.ts[: self.batch_time])
        else:
            ts = jnp.asarray(self._shared_ts)
        y0 = model.augment(batch["y0"])
        ys, penalties, aux = solve_batch_regularised(model.field, y0, ts, self.regularisers,
                                                     key, self.config)
        size = batch["target"].shape[-1]
        task_loss = self._err(ys[..., :size], batch["target"])
        return add_penalties(task_loss, penalties, self.regularisers, aux), aux

    def predict(self, model):
        """The model's trajectory over the (first) evaluation series' times, from its
        first observed state."""
        sol = model.solve(jnp.asarray(self.ts), jnp.asarray(self.ys[0]), throw=False)
        return sol.ys[:, : self.size], sol.stats

    def _evaluate_series(self, model, data):
        ts, ys, ms = (as_data(a) for a in data)
        sol = jax.vmap(lambda t, y0: model.solve(t, y0, throw=False))(ts, ys[:, 0])
        pred = sol.ys[..., : self.size]
        return {
            "eval_loss": self._err(pred, ys, ms),
            "eval_nfe": jnp.mean(sol.stats.nfe).astype(jnp.float32),
            "eval_failed": jnp.any(sol.stats.result != 0).astype(jnp.float32),
        }

    def evaluate(self, model):
        if self._series is not None:
            return self._evaluate_series(model, self._eval)
        pred, stats = self.predict(model)
        return {
            "eval_loss": self._err(pred, jnp.asarray(self.ys)),
            "eval_nfe": stats.nfe.astype(jnp.float32),
            "eval_failed": (stats.result != 0).astype(jnp.float32),
        }

    def finalise(self, model) -> dict:
        """The test series' metrics (`test_loss`, `test_nfe`) when a validation part was
        used for evaluation, and the learned constants of a `python` field (its scalar
        arrays, as `field_parameters`)."""
        out = {}
        if self._series is not None and self._test is not None:
            ev = eqx.filter_jit(self._evaluate_series)(model, self._test)
            out.update(test_loss=float(ev["eval_loss"]), test_nfe=float(ev["eval_nfe"]))
        if self.user is not None:
            out["field_parameters"] = field_parameters(model.field)
        return out

    def describe(self):
        k = self.batch_time
        if self._series is None:
            evaluated = (f"mean |error| over the whole trajectory ({len(self.ts)} points), "
                         "solved from the first observed state alone")
        else:
            evaluated = ("mean |error| over each evaluation series, solved from its first "
                         "observed state alone")
        return {"loss": f"mean |error| over segments of data.batch_time={k} points, "
                        "each solved from its first observed state",
                "eval_loss": evaluated, "state_names": self.state_names}

    def plot(self, model, plot_dir: Path):
        from ..plots import plot_trajectory

        pred, _ = eqx.filter_jit(self.predict)(model)
        true, pred = self.ys, np.asarray(pred)
        if self.normalisation is not None:  # drawn in the data's own units
            true, pred = self.normalisation.invert(true), self.normalisation.invert(pred)
        time_name = self.config.data.time if self.config.data.name == "file" else "t"
        return [plot_trajectory(self.ts, true, pred, Path(plot_dir) / "trajectory.png",
                                names=self.state_names, time_name=time_name)]


def field_parameters(module) -> dict:
    """The scalar and small array parameters of the user's module by attribute path
    (e.g. `{"damping": 0.3, "stiffness": 4.0}`), for the summary."""
    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(module, eqx.is_inexact_array))
    for path, x in leaves:
        if x.size <= 16:
            name = "".join(str(p) for p in path).lstrip(".")
            v = np.asarray(x, np.float64)
            out[name] = float(v) if v.ndim == 0 else v.tolist()
    return out
