"""Helpers shared by the model zoo: solving with a `NeuralODE`'s settings and combining
solver statistics. (The argument checks are `nodekit._checks`'.)"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._checks import (
    check_choice as check_choice,
    check_float,
    check_int as _check_int,
    check_ndim as check_ndim,
    is_concrete as is_concrete,
)
from .._errors import InputError
from .._neural_ode import NeuralODE
from .._odeint import SolveStats
from .._settings import SolveSettings


def check_int(owner: str, name: str, value: Any, low: int) -> int:
    """`nodekit._checks.check_int` for a model's argument (`owner` names the model)."""
    return _check_int(name, value, minimum=low, owner=owner)


def check_positive(owner: str, name: str, value: Any) -> float:
    """`nodekit._checks.check_float(positive=True)` for a model's argument."""
    return check_float(name, value, positive=True, owner=owner)


def model_settings(owner: type, defaults: SolveSettings, settings: SolveSettings | None,
                   overrides: dict) -> SolveSettings:
    """A model's `SolveSettings`: `settings` (else the model's own `defaults`) with the
    keyword `overrides` (`solver=`, `rtol=`, ...) applied and validated; a keyword that
    is neither a setting nor the model's own is refused naming the model."""
    import dataclasses
    import inspect

    from .._checks import unexpected_keywords

    names = [f.name for f in dataclasses.fields(SolveSettings)]
    unknown = {k: v for k, v in overrides.items() if k not in names}
    if unknown:
        own = [p for p in inspect.signature(owner.__init__).parameters
               if p not in ("self", "overrides")]
        raise unexpected_keywords(owner.__name__, unknown, own + names)
    return SolveSettings.resolve(settings if settings is not None else defaults, **overrides)


def solve(node: NeuralODE, func, y0, ts, *, args=None, throw: bool = True,
          integrals: str | None = None, vmap_size: int | None = None,
          caller: str = "NeuralODE.solve"):
    """`nodekit.odeint(func, y0, ts)` with the `SolveSettings` held by `node`. Returns
    `(ys, stats)`.

    With `integrals` (`"trapezoid"` or `"stages"`), the state's last item holds running
    integrals that do not steer the step size (see `nodekit._odeint.solve`).
    `vmap_size`: this solve is one sample of a per-sample batch of that size (the
    model's `mode="vmap"`; it steers the integrator as `NeuralODE.solve_batch` does).

    `func` should be a pytree (an Equinox module) rather than a closure over arrays, so
    that `adjoint="backsolve"` sees its parameters.
    """
    ys, stats, _ = node._odeint(func, y0, ts, args, throw, integrals=integrals,
                                vmap_size=vmap_size, caller=caller)
    return ys, stats


def solve_from(node: NeuralODE, func, y0, t0, ts, *, args=None, throw: bool = True):
    """Solve from `y0` at time `t0` and return the states at `ts` (all `>= t0`, or all
    `<= t0` for a backward solve), `(ys, stats)` with `ys.shape[0] == len(ts)`.

    When `ts[0] == t0` the solve starts at `ts[0]`; otherwise `t0` is prepended and its
    state dropped.
    """
    ts = jnp.asarray(ts)
    t0 = jnp.asarray(t0, ts.dtype)
    if is_concrete(ts) and is_concrete(t0):
        if float(ts[0]) == float(t0):
            return solve(node, func, y0, ts, args=args, throw=throw)
        if len(ts) > 1 and (float(ts[0]) - float(t0)) * (float(ts[-1]) - float(ts[0])) < 0:
            raise InputError(
                f"prediction times must start at or after the initial time {float(t0):g} "
                f"(in the direction of the solve), got ts[0]={float(ts[0]):g}."
            )
    full = jnp.concatenate([t0[None], ts])
    ys, stats = solve(node, func, y0, full, args=args, throw=throw)
    return jax.tree_util.tree_map(lambda y: y[1:], ys), stats


def zero_stats(dtype=jnp.int32) -> SolveStats:
    """The statistics of no solve at all (for discrete models such as a ResNet or GRU)."""
    z = jnp.zeros((), dtype)
    return SolveStats(nfe=z, num_steps=z, num_accepted=z, num_rejected=z, result=z,
                      integrator="none", reason="no ODE solve")


def constant_stats(nfe: int) -> SolveStats:
    """Statistics of a discrete model that evaluates `nfe` functions in `nfe` steps."""
    n = jnp.asarray(nfe, jnp.int32)
    z = jnp.zeros((), jnp.int32)
    return SolveStats(nfe=n, num_steps=n, num_accepted=n, num_rejected=z, result=z,
                      integrator="none", reason="no ODE solve")


def _integrator(a: SolveStats, b: SolveStats) -> tuple[str, str]:
    if a.integrator == b.integrator or b.integrator == "none":
        return a.integrator, a.reason
    if a.integrator == "none":
        return b.integrator, b.reason
    return f"{a.integrator}+{b.integrator}", f"{a.reason}; {b.reason}"


def add_stats(a: SolveStats, b: SolveStats) -> SolveStats:
    """Statistics of two solves done one after the other (counts add; a failure in
    either is kept; the time reached is the second's)."""
    integrator, reason = _integrator(a, b)
    return SolveStats(
        nfe=a.nfe + b.nfe,
        num_steps=a.num_steps + b.num_steps,
        num_accepted=a.num_accepted + b.num_accepted,
        num_rejected=a.num_rejected + b.num_rejected,
        result=jnp.maximum(a.result, b.result),
        t_reached=b.t_reached if b.t_reached is not None else a.t_reached,
        integrator=integrator, reason=reason,
    )


def sum_stats(stats: SolveStats, axis: int = 0) -> SolveStats:
    """Collapse stacked statistics (e.g. from `lax.scan`) along `axis`: counts add up,
    the result is the first non-zero code (0 when every solve succeeded)."""
    return SolveStats(
        nfe=jnp.sum(stats.nfe, axis, dtype=stats.nfe.dtype),
        num_steps=jnp.sum(stats.num_steps, axis, dtype=stats.num_steps.dtype),
        num_accepted=jnp.sum(stats.num_accepted, axis, dtype=stats.num_accepted.dtype),
        num_rejected=jnp.sum(stats.num_rejected, axis, dtype=stats.num_rejected.dtype),
        result=jnp.max(stats.result, axis),
        integrator=stats.integrator, reason=stats.reason,
    )


def stats_aux(stats: SolveStats, n_samples: int) -> dict:
    """Scalar metrics from batch statistics: mean `nfe` and `solver_steps` per sample and
    the number of samples whose solve failed (`failures`).

    `stats` holds either one entry per sample (a `vmap`-ed batch) or one scalar entry
    for the whole batch (a joint solve, where a failure fails every sample).
    """
    failed = jnp.asarray(stats.result) != 0
    per_sample = jnp.ndim(stats.result) > 0
    n_fail = jnp.sum(failed) if per_sample else failed.astype(jnp.int32) * n_samples
    return {
        "nfe": jnp.mean(stats.nfe).astype(jnp.float32),
        "solver_steps": jnp.mean(stats.num_steps).astype(jnp.float32),
        "failures": jnp.asarray(n_fail).astype(jnp.float32),
    }

