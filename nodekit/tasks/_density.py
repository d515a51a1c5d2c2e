"""The `density` task: a continuous normalising flow (FFJORD) on samples: FFJORD's toy
2-D densities, or the user's CSV/NPZ file of samples."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from ._base import AbstractTask
from ._common import (
    add_penalties,
    batch_rng,
    build_regularisers,
    check_batch_size,
    eval_mode,
    file_fingerprint,
    make_field,
    solve_kwargs,
    split_parts,
    user_field,
)


class DensityTask(AbstractTask):
    """Fit a continuous normalising flow (FFJORD) to samples of a density.

    Data: `toy2d` (`nodekit.data.sample_toy2d(data.distribution)`: `n_train` training
    points drawn with `data.seed`, or a fresh batch every step with
    `data.resample: true`; a separate test set of `n_test` drawn with
    `data.test_seed`), or `file` (the user's samples `(N, D)`, split and, with
    `data.normalise`, standardised by the training part). The model is a
    `nodekit.models.CNF` whose flow is the configured field (an MLP, always
    time-dependent, or the user's `python` field) over `[0, model.cnf.t1]`, with the
    trace `exact` or `hutchinson`. The loss is the batch's mean negative
    log-likelihood (nats) plus the weighted regularisers, which are integrated in the
    same solve and share the trace's noise vector (as RNODE). With
    `regularisation.steer`, each training solve ends at a time drawn uniformly from
    `[t1 - width, t1 + width]` (STEER); evaluation always uses `t1`.

    Evaluation: the NLL with the exact trace on the evaluation set (`eval_loss`) and
    the NFE of that solve (`eval_nfe`). Plot (2-D data): the learned density beside
    the data.

    **Example:**

    ```python
    import jax
    import nodekit
    from nodekit.tasks import make_task

    cfg = nodekit.validate_config({"task": "density", "data": {"n_train": 64, "n_test": 32},
                                   "train": {"batch_size": 16}})
    task = make_task(cfg)
    model = task.make_model(jax.random.PRNGKey(0))
    print(task.batch(0)["x"].shape)       # (16, 2)
    ```
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d = config.data
        dt = self.dtype
        self.regularisers = build_regularisers(config)
        self.user = user_field(config)
        if d.name == "toy2d":
            from ..data import sample_toy2d

            self.state_names = None  # plots name them x₁, x₂
            self.train_x = None if d.resample else np.asarray(
                sample_toy2d(d.distribution, d.n_train, seed=config.data_seed), dt)
            test_seed = config.seed + 10_007 if d.test_seed is None else d.test_seed
            self.test_x = np.asarray(sample_toy2d(d.distribution, d.n_test, seed=test_seed), dt)
            self.n_train = d.n_train
            self._final_test = None
        else:
            from ..data import Normalisation, read_samples

            x, names = read_samples(d.path, columns=d.state)
            self._fingerprint_parts.append(file_fingerprint(d.path))
            self.state_names = names
            train_idx, eval_idx, test_idx = split_parts(config, len(x), "samples")
            norm = Normalisation.fit(x[train_idx], names=names) if d.normalise else None
            self.normalisation = norm
            prep = (lambda a: norm.apply(a)) if norm is not None else (lambda a: a)
            self.train_x = np.asarray(prep(x[train_idx]), dt)
            self.test_x = np.asarray(prep(x[eval_idx]), dt)
            self._final_test = np.asarray(prep(x[test_idx]), dt) if len(test_idx) else None
            self.n_train = len(train_idx)
            check_batch_size(config, self.n_train, "samples")
        self.size = self.test_x.shape[-1]
        if self.user is not None:
            self.user.check(self.size, dt, jax.random.PRNGKey(0))
            self._fingerprint_parts.append(self.user.source)

    def make_model(self, key):
        from .._fields import MLPField
        from ..models import CNF
        from ._common import cast_floats

        f, cnf = self.config.model.field, self.config.model.cnf
        if f.type == "python":
            field = make_field(self.config, self.size, key, self.dtype, self.user)
        else:
            field = cast_floats(MLPField(self.size, f.width, f.depth, activation=f.activation,
                                         time_dependent=True, input_power=f.input_power,
                                         key=key), self.dtype)
        return CNF(field, self.size, t1=cnf.t1, trace=cnf.trace, noise=cnf.noise,
                   **solve_kwargs(self.config))

    def batch(self, step: int):
        d, bs = self.config.data, self.config.train.batch_size
        if self.train_x is None:  # a fresh batch every step (FFJORD's toy runs)
            from ..data import sample_toy2d

            x = sample_toy2d(d.distribution, bs, seed=self.config.data_seed * 1_000_003 + step)
            return {"x": np.asarray(x, self.dtype)}
        rng = batch_rng(self.config, step)
        idx = rng.choice(self.train_x.shape[0], bs, replace=False)
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

    def _nll(self, model, x):
        from ..models import nll

        value, aux = nll(self._exact(model), x, None, mode=eval_mode(self.config), throw=False)
        return {"eval_loss": value, "eval_nfe": aux["nfe"],
                "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}

    def evaluate(self, model):
        return self._nll(model, jnp.asarray(self.test_x))

    def finalise(self, model) -> dict:
        """The test part's NLL (`test_loss`, `test_nfe`) when a validation part was used
        for evaluation (the user's files)."""
        if self._final_test is None:
            return {}
        ev = eqx.filter_jit(self._nll)(model, jnp.asarray(self._final_test))
        return {"test_loss": float(ev["eval_loss"]), "test_nfe": float(ev["eval_nfe"])}

    def describe(self):
        return {"loss": "negative log-likelihood (nats) of a training batch, plus the "
                        "weighted regularisers",
                "eval_loss": "negative log-likelihood (nats) of the test set, exact trace",
                "state_names": self.state_names}

    def plot(self, model, plot_dir: Path):
        if self.size != 2:
            return []
        from ..plots import plot_density

        lim, n = 4.5, 60
        if self.config.data.name == "file":
            lim = float(np.abs(self.test_x).max()) * 1.1
        g = np.linspace(-lim, lim, n, dtype=self.dtype)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        exact = self._exact(model)

        @eqx.filter_jit
        def logp(m, xs):
            out, _, _ = m.log_prob_batch(xs, None, mode="joint", throw=False)
            return out

        density = np.exp(np.asarray(logp(exact, jnp.asarray(grid)))).reshape(n, n)
        return [plot_density(self.test_x, density, lim, Path(plot_dir) / "density.png")]
