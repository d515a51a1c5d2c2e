"""Tasks: what a config's `task` means — its data, model, loss, evaluation and plots.

A task is a host-side object built from a validated `Config`. The training loop only
talks to this interface, so a new model family plugs in by registering a task.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._config import Config
from ._errors import ConfigError
from ._fields import MLPField, SecondOrderField
from ._neural_ode import NeuralODE


class AbstractTask(abc.ABC):
    """The interface between a config and the training loop.

    Subclasses implement `make_model`, `batch`, `loss` and `evaluate` (and optionally
    `plot`). `loss` and `evaluate` are traced (pure JAX); `batch` runs on the host and
    must be a pure function of `(seed, step)` so that a resumed run draws the same
    batches.
    """

    def __init__(self, config: Config):
        self.config = config

    @abc.abstractmethod
    def make_model(self, key) -> eqx.Module:
        """The initial model."""

    @abc.abstractmethod
    def batch(self, step: int) -> Any:
        """The training batch for `step` (a pytree of NumPy arrays)."""

    @abc.abstractmethod
    def loss(self, model, batch, key) -> tuple[jax.Array, dict]:
        """`(total loss, aux)`; aux holds scalars: `loss_task`, `reg_<name>` terms,
        `nfe_forward`, `solver_steps`, `failures` (failed solves in the batch)."""

    @abc.abstractmethod
    def evaluate(self, model) -> dict:
        """Evaluation metrics (at least `eval_loss`), traced."""

    def plot(self, model, plot_dir: Path) -> list[Path]:
        """Write task-specific figures; returns their paths."""
        return []


# ----------------------------------------------------------------- solve helpers


def build_regularisers(config: Config):
    """The regulariser modules configured in `config.regularisation` (may be empty)."""
    reg = config.regularisation
    if reg.kinetic is None and reg.jacobian is None and reg.taylor is None:
        return ()
    from ._regularisers import JacobianFrobenius, KineticEnergy, TaylorRK

    out = []
    if reg.kinetic is not None:
        out.append(KineticEnergy(reg.kinetic.weight))
    if reg.jacobian is not None:
        out.append(
            JacobianFrobenius(reg.jacobian.weight, estimator=reg.jacobian.estimator,
                              noise=reg.jacobian.noise)
        )
    if reg.taylor is not None:
        out.append(TaylorRK(reg.taylor.weight, order=reg.taylor.order, method=reg.taylor.method))
    return tuple(out)


_REG_NAMES = {"KineticEnergy": "kinetic", "JacobianFrobenius": "jacobian", "TaylorRK": "taylor"}


def regulariser_names(regularisers) -> list[str]:
    return [_REG_NAMES.get(type(r).__name__, type(r).__name__) for r in regularisers]


def solve_kwargs(config: Config) -> dict:
    s = config.solver
    return dict(solver=s.name, rtol=s.rtol, atol=s.atol, dt0=s.dt0, adjoint=s.adjoint,
                max_steps=s.max_steps, checkpoints=s.checkpoints, engine=s.engine)


def solve_batch_regularised(field, y0s, ts, regularisers, key, config: Config):
    """Solve a batch with the configured batch mode and regularisers, never throwing.

    **Returns:** `(ys (B, T, d), penalties (n_reg,), aux)` with aux holding batch-mean
    `nfe_forward`, `solver_steps` and the count of failed solves `failures`.
    """
    mode = config.solver.batch_mode
    if regularisers:
        from ._regularisers import regularised_odeint_batch

        ys, penalties, stats = regularised_odeint_batch(
            field, y0s, ts, regularisers, key=key, mode=mode, throw=False,
            quadrature=config.regularisation.quadrature, **solve_kwargs(config),
        )
    else:
        node = NeuralODE(field, **solve_kwargs(config))
        sol = node.solve_batch(ts, y0s, mode=mode, throw=False)
        ys, stats, penalties = sol.ys, sol.stats, jnp.zeros((0,), y0s.dtype)
    failed = jnp.asarray(stats.result) != 0
    n_fail = jnp.sum(failed) * (1 if mode == "vmap" else y0s.shape[0])
    aux = {
        "nfe_forward": jnp.mean(stats.nfe).astype(jnp.float32),
        "solver_steps": jnp.mean(stats.num_steps).astype(jnp.float32),
        "failures": n_fail.astype(jnp.float32),
        "solver_result": jnp.max(jnp.asarray(stats.result)).astype(jnp.float32),
    }
    return ys, penalties, aux


def add_penalties(task_loss, penalties, regularisers, aux: dict):
    total = task_loss
    for name, r, p in zip(regulariser_names(regularisers), regularisers, penalties):
        aux[f"reg_{name}"] = p
        total = total + r.weight * p
    aux["loss_task"] = task_loss
    return total


def make_field(config: Config, size: int, key):
    f = config.model.field
    if f.type == "second_order":
        if size % 2:
            raise ConfigError("model.field.type", f"second_order needs an even state size, got {size}.")
        return SecondOrderField.from_mlp(size // 2, f.width, f.depth, activation=f.activation,
                                         time_dependent=f.time_dependent, key=key)
    return MLPField(size, f.width, f.depth, activation=f.activation,
                    time_dependent=f.time_dependent, input_power=f.input_power, key=key)


# ----------------------------------------------------------------- trajectory task


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
        from .data import ode_demo_spiral

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

    def plot(self, model, plot_dir: Path):
        from .plots import plot_trajectory

        pred, _ = eqx.filter_jit(self.predict)(model)
        return [plot_trajectory(self.ts, self.ys, np.asarray(pred), Path(plot_dir) / "trajectory.png")]


# ----------------------------------------------------------------- density task


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
        from .data import sample_toy2d

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
        from .models import CNF

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
        from ._regularisers import steer_end_time
        from .models import nll

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
        from .models import nll

        value, aux = nll(self._exact(model), jnp.asarray(self.test_x), None,
                         mode=self.config.solver.batch_mode, throw=False)
        return {"eval_loss": value, "eval_nfe": aux["nfe"],
                "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}

    def plot(self, model, plot_dir: Path):
        from .plots import plot_density

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


#: Tasks by config name.
TASKS: dict[str, type[AbstractTask]] = {"trajectory": TrajectoryTask, "density": DensityTask}


def make_task(config: Config) -> AbstractTask:
    return TASKS[config.task](config)
