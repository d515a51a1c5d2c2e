"""The `ude` task: a universal differential equation, known physics plus a neural
term, fitted to whole observed trajectories; optionally a sparse regression (STLSQ) of
the learned term after training."""

from __future__ import annotations

import itertools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import InputError
from .._fields import AbstractVectorField
from ._base import AbstractTask
from ._common import (
    UserTarget,
    add_penalties,
    as_data,
    batch_index,
    build_regularisers,
    cast_floats,
    check_batch_size,
    file_fingerprint,
    make_field,
    solve_batch_regularised,
    solve_kwargs,
    split_parts,
    user_field,
)


class _NoPhysics(AbstractVectorField):
    """No known term: `f(t, y) = 0` (the UDE is then a plain neural ODE)."""

    def __call__(self, t, y, args):
        return jnp.zeros_like(y)


class _Fixed(AbstractVectorField):
    """Known physics whose arrays are held fixed (gradients stopped)."""

    physics: eqx.Module

    def __call__(self, t, y, args):
        params, static = eqx.partition(self.physics, eqx.is_inexact_array)
        return eqx.combine(jax.lax.stop_gradient(params), static)(t, y, args)


def monomials(names, degree: int) -> list[tuple[str, tuple[int, ...]]]:
    """The monomials of the state up to `degree`: `[("1", ()), ("x", (0,)), ...,
    ("x*y", (0, 1)), ("y^2", (1, 1))]` (name, coordinate indices)."""
    out = []
    for k in range(degree + 1):
        for combo in itertools.combinations_with_replacement(range(len(names)), k):
            parts = []
            for i in sorted(set(combo)):
                p = combo.count(i)
                parts.append(names[i] + (f"^{p}" if p > 1 else ""))
            out.append(("*".join(parts) or "1", combo))
    return out


def stlsq(theta: np.ndarray, target: np.ndarray, threshold: float, iterations: int) -> np.ndarray:
    """Sequentially thresholded least squares (SINDy's sparse regression) of `target`
    `(n,)` on the columns of `theta` `(n, k)`: fit, zero the coefficients below
    `threshold` in size, refit the rest, `iterations` times.

    **Example:**

    ```python
    import numpy as np
    from nodekit.tasks._ude import stlsq

    x = np.linspace(-1, 1, 50)
    theta = np.stack([np.ones_like(x), x, x**2], 1)
    print(stlsq(theta, 3 * x**2, 0.1, 10))       # [0, 0, 3]
    ```
    """
    coef = np.linalg.lstsq(theta, target, rcond=None)[0]
    for _ in range(iterations):
        small = np.abs(coef) < threshold
        coef[small] = 0.0
        big = ~small
        if not big.any():
            break
        coef[big] = np.linalg.lstsq(theta[:, big], target, rcond=None)[0]
    return coef


class UDETask(AbstractTask):
    """Fit a universal differential equation `dy/dt = physics(t, y) + neural(t, y)`
    to whole observed trajectories.

    Data: `lotka_volterra` (the UDE paper's noisy predator-prey trajectory; its known
    initial state is used) or `file` (the user's series; each is solved from its first
    observation, over its own times). Physics (`model.physics`): `lotka_volterra`
    (prey growth `alpha x`, predator decay `-delta y`), the user's `python` module, or
    none (a plain neural ODE on whole trajectories). The neural term is `model.field`.

    Loss: the mean squared error between the solved trajectories and the observations
    (plus the weighted regularisers). Evaluation: the same on the evaluation series
    (`eval_loss`); for `lotka_volterra` also the RMSE against the clean trajectory
    (`eval_rmse_clean`).

    `finalise` (after training): with `model.sparse_regression`, STLSQ of the learned
    term on the monomials of the state up to `degree`, sampled along the data (the
    clean trajectory for `lotka_volterra`, the training observations for a file); the
    coefficients go to `summary.json` as `sparse_regression`. With
    `model.physics.learnable`, the fitted physics parameters as `physics_parameters`.

    **Example:**

    ```python
    import jax
    import nodekit
    from nodekit.tasks import make_task

    cfg = nodekit.validate_config({
        "task": "ude", "model": {"physics": {"type": "lotka_volterra"},
                                 "field": {"width": 8, "depth": 1},
                                 "sparse_regression": {"degree": 2}},
        "train": {"batch_size": 1}})
    task = make_task(cfg)
    model = task.make_model(jax.random.PRNGKey(0))
    print(sorted(task.finalise(model)["sparse_regression"]))   # ['basis', 'coefficients', ...]
    ```
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d, m = config.data, config.model
        dt = self.dtype
        self.regularisers = build_regularisers(config)
        self.user = user_field(config)
        self.physics_user = None
        self.clean = None
        self._final_test = None
        if d.name == "lotka_volterra":
            from ..data import Trajectories, lotka_volterra

            lv = lotka_volterra(alpha=d.alpha, beta=d.beta, gamma=d.gamma, delta=d.delta,
                                y0=tuple(d.y0), t1=d.t1, n_obs=d.n_obs, noise=d.noise,
                                seed=config.data_seed)
            self.lv = lv
            tr = Trajectories.from_arrays(lv.ts, lv.observations[None], names=("x", "y"))
            self.train = self.eval_series = tr
            self._y0 = np.asarray(lv.y0, np.float64)[None]
            self._eval_y0 = self._y0
            self.clean = np.asarray(lv.states, dt)
            self.regression_states = np.asarray(lv.states, np.float64)
            self.regression_times = np.asarray(lv.ts, np.float64)
        else:
            self._load_file(config)
        self.state_names = self.train.names
        self.size = self.train.dim
        self.n_train = len(self.train)
        check_batch_size(config, self.n_train, "series")
        self._arrays = self._series_arrays(self.train, self._y0)
        self._eval = self._series_arrays(self.eval_series, self._eval_y0)
        # every point of every series observed (no padding): the loss is the plain mean,
        # computed as nodekit.models.trajectory_loss computes it
        self._dense = all(bool(np.all(a["mask"] == 1)) for a in (
            self._arrays, self._eval, *([self._final_test] if self._final_test else [])))
        key = jax.random.PRNGKey(0)
        p = m.physics
        if p is not None and p.type == "python":
            self.physics_user = UserTarget(p.target, p.path, p.kwargs, "model.physics.target")
            self.physics_user.check(self.size, dt, key)
            self._fingerprint_parts.append(self.physics_user.source)
        elif p is not None and self.size != 2:
            raise InputError(f"model.physics.type 'lotka_volterra' acts on a state of 2 "
                             f"(prey, predator); the data have {self.size} coordinates.")
        if self.user is not None:
            self.user.check(self.size, dt, key)
            self._fingerprint_parts.append(self.user.source)

    def _load_file(self, config: Config):
        from ..data import read_trajectories

        d = config.data
        tr = read_trajectories(d.path, time=d.time, state=d.state, series=d.series, task="ude")
        self._fingerprint_parts.append(file_fingerprint(d.path))
        short = [(sid, n) for sid, n in zip(tr.ids, tr.lengths) if n < 2]
        if short:
            raise InputError(f"data file {d.path!r}: series {short[0][0]!r} has {short[0][1]} "
                             "point; the ude task solves each series from its first "
                             "observation, so each needs 2 or more.")
        train_idx, eval_idx, test_idx = split_parts(config, len(tr), "series")
        self.train, self.eval_series = tr.subset(train_idx), tr.subset(eval_idx)
        first = lambda part: np.stack([v[0] for v in part.values])  # noqa: E731
        self._y0, self._eval_y0 = first(self.train), first(self.eval_series)
        if len(test_idx):
            test = tr.subset(test_idx)
            self._final_test = self._series_arrays(test, first(test))
        self.regression_states = np.concatenate(self.train.values)
        self.regression_times = np.concatenate(self.train.times)

    def _series_arrays(self, tr, y0):
        ts, ys, ms = tr.padded()
        dt = self.dtype
        return {"ts": np.asarray(ts, dt), "obs": np.asarray(ys, dt), "mask": np.asarray(ms, dt),
                "y0": np.asarray(y0, dt)}

    # -- the interface

    def _physics(self):
        p, dt = self.config.model.physics, self.dtype
        if p is None:
            return _NoPhysics()
        if p.type == "lotka_volterra":
            from ..models import LotkaVolterraKnown

            d = self.config.data
            alpha = p.kwargs.get("alpha", d.alpha if d.name == "lotka_volterra" else 1.3)
            delta = p.kwargs.get("delta", d.delta if d.name == "lotka_volterra" else 1.8)
            return cast_floats(LotkaVolterraKnown(alpha, delta, learnable=p.learnable), dt)
        physics = self.physics_user.build(jax.random.PRNGKey(0), dt)
        return physics if p.learnable else _Fixed(physics)

    def make_model(self, key):
        from ..models import UDE

        neural = make_field(self.config, self.size, key, self.dtype, self.user)
        return UDE(self._physics(), neural, **solve_kwargs(self.config))

    def batch(self, step: int):
        i = batch_index(self.config, step, self.n_train)  # (train.batch_order)
        return {k: v[i] for k, v in self._arrays.items()}

    def _mse(self, model, b, key, regularisers=()):
        ys, penalties, aux = solve_batch_regularised(model.ode.field, as_data(b["y0"]),
                                                     as_data(b["ts"]), regularisers, key,
                                                     self.config)
        if self._dense:
            err = jnp.mean((ys - b["obs"]) ** 2)
        else:
            mask = jnp.asarray(b["mask"])
            err = jnp.sum(mask * (ys - b["obs"]) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)
        return err, penalties, aux, ys

    def loss(self, model, batch, key):
        err, penalties, aux, _ = self._mse(model, batch, key, self.regularisers)
        return add_penalties(err, penalties, self.regularisers, aux), aux

    def _evaluate(self, model, arrays):
        err, _, aux, ys = self._mse(model, arrays, jax.random.PRNGKey(0))
        out = {"eval_loss": err, "eval_nfe": aux["nfe_forward"],
               "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}
        return out, ys

    def evaluate(self, model):
        out, ys = self._evaluate(model, self._eval)
        if self.clean is not None:
            out["eval_rmse_clean"] = jnp.sqrt(jnp.mean((ys[0] - jnp.asarray(self.clean)) ** 2))
        return out

    def learned_term(self, model, states, times=None) -> np.ndarray:
        """The neural term `neural(t, y)` at `states` `(n, D)` (and `times`, default 0)."""
        states = jnp.asarray(states, self.dtype)
        times = jnp.zeros(states.shape[0], self.dtype) if times is None else jnp.asarray(
            times, self.dtype)
        neural = model.ode.field.neural
        return np.asarray(eqx.filter_jit(jax.vmap(lambda t, y: neural(t, y, None)))(times, states))

    def finalise(self, model) -> dict:
        """The sparse regression of the learned term (`sparse_regression`), the fitted
        physics parameters (`physics_parameters`, when learnable) and the test series'
        loss (`test_loss`, when a validation part was used for evaluation)."""
        out = {}
        sr = self.config.model.sparse_regression
        if sr is not None:
            states, times = self.regression_states, self.regression_times
            learned = self.learned_term(model, states, times).astype(np.float64)
            basis = monomials(self.state_names, sr.degree)
            theta = np.stack([np.prod(states[:, list(idx)], axis=1) if idx else
                              np.ones(len(states)) for _, idx in basis], 1)
            coefs = {name: dict(zip([b for b, _ in basis],
                                    stlsq(theta, learned[:, i], sr.threshold,
                                          sr.iterations).tolist()))
                     for i, name in enumerate(self.state_names)}
            out["sparse_regression"] = {
                "basis": [b for b, _ in basis], "coefficients": coefs,
                "degree": sr.degree, "threshold": sr.threshold, "samples": len(states),
                "sampled_on": "clean trajectory" if self.clean is not None else
                              "training observations"}
        p = self.config.model.physics
        if p is not None and p.learnable:
            from ._trajectory import field_parameters

            out["physics_parameters"] = field_parameters(model.ode.field.known)
        if self._final_test is not None:
            ev, _ = eqx.filter_jit(self._evaluate)(model, self._final_test)
            out["test_loss"] = float(ev["eval_loss"])
        return out

    def plot(self, model, plot_dir: Path):
        from ..plots import plot_trajectory

        _, ys = eqx.filter_jit(self._evaluate)(model, self._eval)
        keep = self._eval["mask"][0].any(-1) > 0
        return [plot_trajectory(self._eval["ts"][0][keep], self._eval["obs"][0][keep],
                                np.asarray(ys[0])[keep], Path(plot_dir) / "trajectory.png")]
