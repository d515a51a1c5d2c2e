"""The `density` task: a continuous normalising flow (FFJORD) on 2-D samples."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import ConfigError
from .._fields import MLPField
from ._base import AbstractTask
from ._common import add_penalties, build_regularisers, solve_kwargs



class DensityTask(AbstractTask):
    """Fit a continuous normalising flow (FFJORD) to a toy 2-D density.

    Data: `nodekit.data.sample_toy2d(data.distribution)`, `n_train` training points and a
    separate test set of `n_test` (seeded by the config's seed). The model is a
    `nodekit.models.CNF` whose flow is the configured MLP field (always time-dependent)
    over `[0, model.cnf.t1]`, with the trace `exact` or `hutchinson`. The loss is the
    batch's mean negative log-likelihood (nats) plus the weighted regularisers, which
    are integrated in the same solve and share the trace's noise vector (as RNODE).
    With `regularisation.steer`, each training solve ends at a time drawn uniformly from
    `[t1 - width, t1 + width]` (STEER); evaluation always uses `t1`.

    Evaluation: test NLL with the exact trace on the test set (`eval_loss`) and the
    NFE of that solve (`eval_nfe`). Plot: the learned density beside the data.
    """

    def __init__(self, config: Config):
        super().__init__(config)
        from ..data import sample_toy2d

        d, cnf = config.data, config.model.cnf
        steer = config.regularisation.steer
        if steer is not None and steer.width >= cnf.t1:
            raise ConfigError("regularisation.steer.width",
                              f"got {steer.width}: must be below model.cnf.t1 ({cnf.t1}) so "
                              "that every end time is positive.")
        if config.train.batch_size > d.n_train:
            raise ConfigError("train.batch_size", f"got {config.train.batch_size}: at most "
                                                  f"data.n_train ({d.n_train}).")
        self.train_x = np.asarray(sample_toy2d(d.distribution, d.n_train, seed=config.seed), np.float32)
        self.test_x = np.asarray(sample_toy2d(d.distribution, d.n_test, seed=config.seed + 10_007),
                                 np.float32)
        self.regularisers = build_regularisers(config)

    def make_model(self, key):
        from ..models import CNF

        f, cnf = self.config.model.field, self.config.model.cnf
        field = MLPField(2, f.width, f.depth, activation=f.activation, time_dependent=True,
                         input_power=f.input_power, key=key)
        return CNF(field, 2, t1=cnf.t1, trace=cnf.trace, noise=cnf.noise,
                   **solve_kwargs(self.config))

    def batch(self, step: int):
        rng = np.random.default_rng([self.config.seed, 1, step])
        idx = rng.choice(self.train_x.shape[0], self.config.train.batch_size, replace=False)
        return {"x": self.train_x[idx]}

    def loss(self, model, batch, key):
        from .._regularisers import steer_end_time
        from ..models import nll

        steer = self.config.regularisation.steer
        noise_key, steer_key = jax.random.split(key)
        t1 = None if steer is None else steer_end_time(steer_key, model.t1, steer.width)
        value, aux = nll(model, batch["x"], noise_key, mode=self.config.solver.batch_mode,
                         regularisers=self.regularisers, throw=False, t1=t1,
                         quadrature=self.config.regularisation.quadrature)
        out = {"nfe_forward": aux["nfe"], "solver_steps": aux["solver_steps"],
               "failures": aux["failures"]}
        return add_penalties(value, aux["penalties"], self.regularisers, out), out

    def _exact(self, model):
        return model.with_trace("exact")

    def evaluate(self, model):
        from ..models import nll

        value, aux = nll(self._exact(model), jnp.asarray(self.test_x), None,
                         mode=self.config.solver.batch_mode, throw=False)
        return {"eval_loss": value, "eval_nfe": aux["nfe"],
                "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}

    def describe(self):
        return {"loss": "negative log-likelihood (nats) of a training batch, plus the "
                        "weighted regularisers",
                "eval_loss": "negative log-likelihood (nats) of the test set, exact trace",
                "state_names": None}

    def plot(self, model, plot_dir: Path):
        from ..plots import plot_density

        lim, n = 4.5, 60
        g = np.linspace(-lim, lim, n, dtype=np.float32)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        exact = self._exact(model)

        @eqx.filter_jit
        def logp(m, xs):
            out, _, _ = m.log_prob_batch(xs, None, mode="joint", throw=False)
            return out

        density = np.exp(np.asarray(logp(exact, jnp.asarray(grid)))).reshape(n, n)
        return [plot_density(self.test_x, density, lim, Path(plot_dir) / "density.png")]
