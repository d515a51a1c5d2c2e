"""Helpers shared by the model zoo: solving with a `NeuralODE`'s settings, combining
solver statistics, and argument checks that raise `InputError`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError, unknown_name_message
from .._neural_ode import NeuralODE
from .._odeint import SolveStats


def check_int(owner: str, name: str, value: Any, low: int) -> None:
    """Raise `InputError` unless `value` is an integer `>= low`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{owner} {name} must be an integer >= {low}, got {value!r}.")


def check_positive(owner: str, name: str, value: Any) -> None:
    """Raise `InputError` unless `value` is a positive finite number."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0:
        raise InputError(f"{owner} {name} must be a positive number, got {value!r}.")


def check_choice(kind: str, value: Any, options) -> None:
    """Raise `InputError` (with a did-you-mean hint) unless `value` is in `options`."""
    if value not in options:
        raise InputError(unknown_name_message(kind, value, list(options)))


def check_ndim(owner: str, name: str, x, ndims: tuple[int, ...], meaning: str) -> None:
    """Raise `InputError` unless `x.ndim` is one of `ndims`; `meaning` describes the
    expected layout, e.g. `"(B, T, D)"`."""
    ndim = jnp.ndim(x)
    if ndim not in ndims:
        raise InputError(
            f"{owner}: {name} must have shape {meaning}, got shape {tuple(jnp.shape(x))}."
        )


def is_concrete(x) -> bool:
    """Whether `x` holds values on the host (not a tracer inside `jit`/`vmap`/`grad`)."""
    return not isinstance(x, jax.core.Tracer)


def solve(node: NeuralODE, func, y0, ts, *, args=None, throw: bool = True,
          integrals: str | None = None):
    """`nodekit.odeint(func, y0, ts)` with the solver settings (solver, tolerances, dt0,
    adjoint, max_steps) held by `node`. Returns `(ys, stats)`.

    With `integrals` (`"trapezoid"` or `"stages"`), the state's last item holds running
    integrals that do not steer the step size (see
    `nodekit._odeint.odeint_step_quadrature`).

    `func` should be a pytree (an Equinox module) rather than a closure over arrays, so
    that `adjoint="backsolve"` sees its parameters.
    """
    return node._odeint(func, y0, ts, args, throw, integrals=integrals)


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
    return SolveStats(nfe=z, num_steps=z, num_accepted=z, num_rejected=z, result=z)


def constant_stats(nfe: int) -> SolveStats:
    """Statistics of a discrete model that evaluates `nfe` functions in `nfe` steps."""
    n = jnp.asarray(nfe, jnp.int32)
    z = jnp.zeros((), jnp.int32)
    return SolveStats(nfe=n, num_steps=n, num_accepted=n, num_rejected=z, result=z)


def add_stats(a: SolveStats, b: SolveStats) -> SolveStats:
    """Statistics of two solves done one after the other (counts add; a failure in
    either is kept)."""
    return SolveStats(
        nfe=a.nfe + b.nfe,
        num_steps=a.num_steps + b.num_steps,
        num_accepted=a.num_accepted + b.num_accepted,
        num_rejected=a.num_rejected + b.num_rejected,
        result=jnp.maximum(a.result, b.result),
    )


def sum_stats(stats: SolveStats, axis: int = 0) -> SolveStats:
    """Collapse stacked statistics (e.g. from `lax.scan`) along `axis`: counts add up,
    the result is the first non-zero code (0 when every solve succeeded)."""
    return SolveStats(
        nfe=jnp.sum(stats.nfe, axis),
        num_steps=jnp.sum(stats.num_steps, axis),
        num_accepted=jnp.sum(stats.num_accepted, axis),
        num_rejected=jnp.sum(stats.num_rejected, axis),
        result=jnp.max(stats.result, axis),
    )


def stats_aux(stats: SolveStats, n_samples: int) -> dict:
    """Scalar metrics from batch statistics: mean `nfe` and `solver_steps` per sample and
    the number of samples whose solve failed (`failures`).

    `stats` holds either one entry per sample (a `vmap`-ed batch) or one scalar entry
    for the whole batch (a joint solve, where a failure fails every sample).
    """
    failed = jnp.asarray(stats.result) != 0
    per_sample = jnp.ndim(stats.result) > 0
    n_fail = jnp.sum(failed) if per_sample else failed * n_samples
    return {
        "nfe": jnp.mean(stats.nfe).astype(jnp.float32),
        "solver_steps": jnp.mean(stats.num_steps).astype(jnp.float32),
        "failures": jnp.asarray(n_fail).astype(jnp.float32),
    }

