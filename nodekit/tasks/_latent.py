"""The `latent` task: a latent ODE (ODE-RNN or GRU encoder) or its RNN baseline on
irregularly sampled series with missing values: the noisy spirals, or the user's file."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import InputError
from ._base import AbstractTask
from ._common import (
    as_data,
    batch_index,
    cast_floats,
    check_batch_size,
    file_fingerprint,
    solve_kwargs,
    split_parts,
)


class LatentTask(AbstractTask):
    """Fit a latent ODE (Rubanova et al. 2019) or the RNN baseline to irregularly
    sampled series.

    Data: `latent_spirals` (`nodekit.data.latent_spirals`: models train on each
    spiral's observation window; evaluation encodes a test spiral's window and
    predicts the whole grid) or `file` (the user's series, missing values allowed:
    empty CSV cells or an NPZ `mask`; series of different lengths are padded with
    masked points).

    Model (`model.latent`): `latent_ode` (`nodekit.models.LatentODE` with the
    `ode_rnn` or `gru` encoder) or `rnn` (`nodekit.models.RNNBaseline`). Loss: the
    negative ELBO (`nodekit.models.elbo`, one posterior sample per series) or, for the
    RNN, the Gaussian negative log-likelihood (`nodekit.models.rnn_loss`), with
    observation noise `obs_std`.

    Evaluation: the loss on the evaluation series (`eval_loss`, drawn with a fixed key)
    and the mean squared error of the reconstruction on their observed values
    (`eval_mse`); for the spirals also the RMSE of the posterior-mean prediction
    against the clean spirals inside the window (`eval_rmse_reconstruction`) and after
    it (`eval_rmse_extrapolation`).

    **Example:**

    ```python
    import jax
    import nodekit
    from nodekit.tasks import make_task

    cfg = nodekit.validate_config({"task": "latent", "data": {"n_samples": 20},
                                   "model": {"latent": {"type": "rnn"}},
                                   "train": {"batch_size": 4}})
    task = make_task(cfg)
    loss, aux = task.loss(task.make_model(jax.random.PRNGKey(0)), task.batch(0),
                          jax.random.PRNGKey(1))
    ```
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d = config.data
        dt = self.dtype
        self._final_test = None
        if d.name == "latent_spirals":
            from ..data import latent_spirals

            train, test = latent_spirals(d.n_samples, n_points=d.n_points, n_obs=d.n_obs,
                                         noise_std=d.noise_std, t_max=d.t_max,
                                         obs_fraction=d.obs_fraction,
                                         test_fraction=d.test_fraction, seed=config.data_seed)
            end = train.obs_end
            if len(test) == 0:
                test = train
            self.state_names = ("x", "y")
            self.obs_end = end
            self.times = np.asarray(train.ts[:end], dt)          # shared by every series
            self.grid = np.asarray(test.ts, dt)
            self.train_values = np.asarray(train.observations[:, :end], dt)
            self.train_mask = np.asarray(train.mask[:, :end], dt)
            self.eval_times = self.times
            self.eval_values = np.asarray(test.observations[:, :end], dt)
            self.eval_mask = np.asarray(test.mask[:, :end], dt)
            self.truth = np.asarray(test.trajectories, dt)
            self.train_times = None
        else:
            self._load_file(config)
        self.data_size = self.eval_values.shape[-1]
        self.n_train = len(self.train_values)
        check_batch_size(config, self.n_train, "series")

    def _load_file(self, config: Config):
        from ..data import Normalisation, read_trajectories

        d = config.data
        tr = read_trajectories(d.path, time=d.time, state=d.state, series=d.series,
                               allow_missing=True, task="latent")
        self._fingerprint_parts.append(file_fingerprint(d.path))
        self.state_names = tr.names
        empty = [sid for sid, m in zip(tr.ids, tr.masks) if not m.any()]
        if empty:
            raise InputError(f"data file {d.path!r}: series {empty[0]!r} has no observed "
                             "value; every series needs at least one.")
        train_idx, eval_idx, test_idx = split_parts(config, len(tr), "series")
        train = tr.subset(train_idx)
        norm = None
        if d.normalise:
            norm = Normalisation.fit(np.concatenate(train.values), np.concatenate(train.masks),
                                     names=tr.names)
        self.normalisation = norm
        length = max(tr.lengths)
        dt = self.dtype

        def arrays(part):
            ts, ys, ms = part.padded(length)
            if norm is not None:
                ys = np.where(ms, norm.apply(ys), 0.0)
            return np.asarray(ts, dt), np.asarray(ys, dt), np.asarray(ms, dt)

        self.train_times, self.train_values, self.train_mask = arrays(train)
        self.eval_times, self.eval_values, self.eval_mask = arrays(tr.subset(eval_idx))
        if len(test_idx):
            self._final_test = arrays(tr.subset(test_idx))
        self.truth = None

    # -- the interface

    def make_model(self, key):
        from ..models import LatentODE, RNNBaseline

        f, lt = self.config.model.field, self.config.model.latent
        if lt.type == "rnn":
            model = RNNBaseline(self.data_size, lt.hidden_size, f.width, key=key)
        else:
            model = LatentODE(self.data_size, lt.latent_size, lt.hidden_size, f.width, f.depth,
                              encoder=lt.encoder, activation=f.activation,
                              decoder_width=lt.decoder_width, decoder_depth=lt.decoder_depth,
                              key=key, **solve_kwargs(self.config))
        return cast_floats(model, self.dtype)

    def batch(self, step: int):
        i = batch_index(self.config, step, self.n_train)  # (train.batch_order)
        out = {"values": self.train_values[i], "mask": self.train_mask[i]}
        if self.train_times is not None:
            out["times"] = self.train_times[i]
        return out

    def _loss(self, model, times, values, mask, key):
        from ..models import elbo, rnn_loss

        lt = self.config.model.latent
        if lt.type == "rnn":
            return rnn_loss(model, times, values, mask, obs_std=lt.obs_std)
        return elbo(model, times, values, mask, key, obs_std=lt.obs_std, kl_weight=lt.kl_weight)

    def loss(self, model, batch, key):
        times = batch["times"] if "times" in batch else jnp.asarray(self.times)
        loss, aux = self._loss(model, times, batch["values"], batch["mask"], key)
        out = {"loss_task": loss, "nfe_forward": aux["nfe"], "solver_steps": aux["solver_steps"],
               "failures": aux["failures"], "mse": aux["mse"], "kl": aux["kl"]}
        return loss, out

    def _eval(self, model, times, values, mask):
        loss, aux = self._loss(model, times, values, mask, jax.random.PRNGKey(0))
        return {"eval_loss": loss, "eval_mse": aux["mse"], "eval_nfe": aux["nfe"],
                "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}

    def predict(self, model, times=None, values=None, mask=None, pred_times=None):
        """Posterior-mean predictions `(N, len(pred_times), D)` for the evaluation series
        (default) from their observations, at `pred_times` (default: the spirals' whole
        grid, or each series' own times)."""
        from ..models import predict

        times = as_data(self.eval_times if times is None else times)
        values = as_data(self.eval_values if values is None else values)
        mask = as_data(self.eval_mask if mask is None else mask)
        if pred_times is None and self.truth is not None:
            pred_times = self.grid
        if pred_times is None:  # each series at its own times
            return jax.vmap(lambda t, v, m: predict(model, t, v, m, t, throw=False)[0])(
                times, values, mask)
        return predict(model, times, values, mask, jnp.asarray(pred_times), throw=False)[0]

    def evaluate(self, model):
        out = self._eval(model, as_data(self.eval_times), as_data(self.eval_values),
                         as_data(self.eval_mask))
        if self.truth is not None:
            sq = jnp.mean((self.predict(model) - jnp.asarray(self.truth)) ** 2, axis=(0, 2))
            end = self.obs_end
            out["eval_rmse_reconstruction"] = jnp.sqrt(jnp.mean(sq[:end]))
            if end < sq.shape[0]:
                out["eval_rmse_extrapolation"] = jnp.sqrt(jnp.mean(sq[end:]))
        return out

    def finalise(self, model) -> dict:
        """The test series' loss and reconstruction error when a validation part was
        used for evaluation (the user's files)."""
        if self._final_test is None:
            return {}
        ev = eqx.filter_jit(self._eval)(model, *map(jnp.asarray, self._final_test))
        return {"test_loss": float(ev["eval_loss"]), "test_mse": float(ev["eval_mse"])}

    def plot(self, model, plot_dir: Path):
        from ..plots import plot_trajectory

        pred = np.asarray(eqx.filter_jit(self.predict)(model))[0]
        if self.truth is not None:
            ts, true = self.grid, self.truth[0]
        else:
            keep = self.eval_mask[0].any(-1)
            ts, true, pred = self.eval_times[0][keep], self.eval_values[0][keep], pred[keep]
            true = np.where(self.eval_mask[0][keep] > 0, true, np.nan)
        return [plot_trajectory(ts, true, pred, Path(plot_dir) / "trajectory.png")]
