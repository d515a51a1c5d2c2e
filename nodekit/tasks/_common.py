"""What every task shares: the configured regularisers, the solve settings, a
regularised batch solve that never throws, and the field built from `model.field`."""

from __future__ import annotations

import jax.numpy as jnp

from .._config import Config
from .._errors import ConfigError
from .._fields import MLPField, SecondOrderField
from .._neural_ode import NeuralODE



def build_regularisers(config: Config):
    """The regulariser modules configured in `config.regularisation` (may be empty)."""
    reg = config.regularisation
    if reg.kinetic is None and reg.jacobian is None and reg.taylor is None:
        return ()
    from .._regularisers import JacobianFrobenius, KineticEnergy, TaylorRK

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
    """The config's solver settings as keyword arguments of a solve or a model."""
    from .._settings import SolveSettings

    return dict(settings=SolveSettings.from_config(config.solver))


def solve_batch_regularised(field, y0s, ts, regularisers, key, config: Config):
    """Solve a batch with the configured batch mode and regularisers, never throwing.

    **Returns:** `(ys (B, T, d), penalties (n_reg,), aux)` with aux holding batch-mean
    `nfe_forward`, `solver_steps` and the count of failed solves `failures`.
    """
    mode = config.solver.batch_mode
    if regularisers:
        from .._regularisers import regularised_odeint_batch

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
