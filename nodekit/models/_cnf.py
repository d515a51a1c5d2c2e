"""Continuous normalising flow, FFJORD-style (Grathwohl et al. 2019, "FFJORD: Free-form
Continuous Dynamics for Scalable Reversible Generative Models"; Chen et al. 2018,
section 4).

A data point `x` at `t = 0` flows by `dy/dt = f(t, y)` to `z = y(T)`, where the base
density is `N(0, I)`. By the instantaneous change of variables,

    log p(x) = log N(z; 0, I) + ∫_0^T tr(∂f/∂y)(t, y(t)) dt,

and the integral is solved alongside `y` as one extra state (`a' = tr J`). The trace is
either exact (a full Jacobian: `d` Jacobian-vector products, for low dimensions) or
Hutchinson's estimate `εᵀ J ε` (one vector-Jacobian product, with a noise vector `ε`
drawn once per solve).

Regularisers (RNODE: Finlay et al. 2020) integrate along the same solve: each adds one
scalar to the state whose derivative is the regulariser's integrand.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._fields import JointField, MLPField, vmap_samples
from .._neural_ode import BATCH_MODES, NeuralODE
from .._odeint import SolveStats
from .._regularisers import integration_of
from .._settings import SolveSettings
from ._common import (
    check_choice,
    check_int,
    check_positive,
    model_settings,
    solve,
    stats_aux,
)

#: A CNF's solve settings unless told otherwise (FFJORD's `rtol = atol = 1e-5`).
CNF_SETTINGS = SolveSettings(rtol=1e-5, atol=1e-5)

#: Trace methods of `CNF`.
TRACES = ("exact", "hutchinson")
#: Distributions of the Hutchinson noise vector.
NOISES = ("gaussian", "rademacher")


def standard_normal_log_prob(z) -> jax.Array:
    """`log N(z; 0, I)` of one vector `z` (summed over its entries).

    **Example:**

    ```python
    import jax.numpy as jnp
    from nodekit.models import standard_normal_log_prob

    print(standard_normal_log_prob(jnp.zeros(2)))   # -log(2 pi) ~ -1.8379
    ```
    """
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * math.log(2 * math.pi)


def _integrand(reg, field, t, y, args, eps):
    """A regulariser's integrand on the flow's `y`: `reg.integrand(field, t, y, args,
    eps)` for objects with that method (`nodekit`'s regulariser modules), otherwise
    `reg(t, y)` for a plain callable."""
    if hasattr(reg, "integrand"):
        out = reg.integrand(field, t, y, args, eps)
    else:
        out = reg(t, y)
    return jnp.asarray(out, y.dtype).reshape(())


class CNFDynamics(eqx.Module):
    """The CNF's dynamics on the augmented state, as a plain vector field
    `func(t, state, args)` (an Equinox module, so it is a pytree and works with every
    adjoint, including `backsolve`).

    The state is `(y, a)` or, with regularisers, `(y, a, r)`, for one sample: `y` of
    shape `(d,)`, `a` the running `∫ tr J` (a scalar), `r` of shape
    `(len(regularisers),)` the running integrals of the regularisers' integrands.

    **Fields:** `field` (the flow `f(t, y, args)`), `trace` (`"exact"` or
    `"hutchinson"`), `eps` (the Hutchinson/regulariser noise vector, or `None`),
    `regularisers` (a tuple; see `CNF.log_prob_and_penalties`).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit
    from nodekit.models import CNF

    cnf = CNF.from_mlp(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    dyn = cnf.dynamics(eps=None)
    x = jnp.array([0.5, -1.0])
    ys = nodekit.odeint(dyn, (x, jnp.zeros(())), jnp.array([0.0, 1.0]))
    ```
    """

    field: Any
    eps: jax.Array | None
    regularisers: tuple
    trace: str = eqx.field(static=True)

    def __call__(self, t, state, args):
        y = state[0]

        def f(y_):
            return self.field(t, y_, args)

        if self.trace == "exact":
            dy, jvp = jax.linearize(f, y)
            jac = jax.vmap(jvp, out_axes=-1)(jnp.eye(y.shape[0], dtype=y.dtype))
            tr = jnp.trace(jac)
        else:
            dy, vjp = jax.vjp(f, y)
            (eps_j,) = vjp(self.eps)
            tr = jnp.sum(eps_j * self.eps)
        out = (dy, tr.astype(y.dtype))
        if self.regularisers:
            reg = jnp.stack([_integrand(r, self.field, t, y, args, self.eps)
                             for r in self.regularisers])
            out = out + (reg,)
        return out


class _JointDynamics(eqx.Module):
    """`CNFDynamics` on a batch state `(B, ...)` with one noise vector per sample."""

    dynamics: CNFDynamics

    def __call__(self, t, state, args):
        d = self.dynamics
        if d.eps is None:
            return vmap_samples(d, t, state, args)
        return vmap_samples(
            lambda t, s, a, eps: CNFDynamics(d.field, eps, d.regularisers, d.trace)(t, s, a),
            t, state, args, d.eps)


class _StepQuadratureDynamics(eqx.Module):
    """CNF dynamics on the state `((y, a), r)` for `quadrature="trapezoid"`: `full` is the
    dynamics with the regularisers on `(y, a, r)` (a `CNFDynamics` or `_JointDynamics`).
    Called with `r=None` it is the flow and its trace alone, which is what the solver's
    stages evaluate; the integrands are evaluated once per step (see
    `nodekit._quadrature`). The log-density `a` stays under the solver's error control."""

    full: Any

    def __call__(self, t, state, args):
        ya, r = state
        if r is None:
            return _without_regularisers(self.full)(t, ya, args), None
        out = self.full(t, (*ya, r), args)
        return out[:2], out[2]


def _without_regularisers(dyn):
    # built per call rather than stored beside `full`: with a stored second copy,
    # BacksolveAdjoint's backward solve failed (Equinox's `tree_at` met a non-array
    # `_DistinctTuple` in the solver state); building it here keeps one copy of the field
    if isinstance(dyn, _JointDynamics):
        return _JointDynamics(_without_regularisers(dyn.dynamics))
    return CNFDynamics(dyn.field, dyn.eps, (), dyn.trace)


class CNF(eqx.Module):
    """A continuous normalising flow (FFJORD): data `x` at `t = 0` flows by
    `dy/dt = field(t, y, args)` to `z = y(t1)` with base density `N(0, I)`.

    **Arguments:**

    - `field`: the flow, `field(t, y, args) -> dy/dt` on vectors of size `data_size`
      (e.g. `nodekit.MLPField(d, time_dependent=True, activation="tanh", key=key)`; see
      `CNF.from_mlp`).
    - `data_size`: dimension `d` of a data point.
    - `t1`: end time `T` of the flow (default 1.0).
    - `trace`: `"exact"` (the full Jacobian's trace; cost `d` JVPs per evaluation, for
      low dimensions) or `"hutchinson"` (unbiased `εᵀ J ε`, one VJP; needs a `key`).
    - `noise`: distribution of `ε`: `"gaussian"` or `"rademacher"`.
    - `settings`: a `nodekit.SolveSettings` (default `CNF_SETTINGS`: FFJORD's `rtol =
      atol = 1e-5`); keyword arguments `solver`, `rtol`, `atol`, `dt0`, `adjoint`,
      `max_steps`, `checkpoints`, `engine` override single settings.

    **Raises:** `InputError` for an unknown trace, noise or solver name.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import CNF, nll

    cnf = CNF.from_mlp(2, width=8, depth=1, trace="hutchinson", key=jax.random.PRNGKey(0))
    logp, stats = cnf.log_prob(jnp.array([0.5, -1.0]), jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(4), (8, 2))
    loss, aux = nll(cnf, xs, jax.random.PRNGKey(2), mode="joint")
    samples, stats = cnf.sample(jax.random.PRNGKey(3), 16)   # (16, 2)
    ```
    """

    ode: NeuralODE
    data_size: int = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)

    def __init__(
        self,
        field,
        data_size: int,
        *,
        t1: float = 1.0,
        trace: str = "exact",
        noise: str = "gaussian",
        settings: SolveSettings | None = None,
        **overrides,
    ):
        check_int("CNF", "data_size", data_size, 1)
        check_positive("CNF", "t1", t1)
        self.ode = NeuralODE(field, model_settings(CNF, CNF_SETTINGS, settings, overrides))
        self.data_size = data_size
        self.t1 = float(t1)
        self.trace = trace
        self.noise = noise

    def __check_init__(self):
        check_choice("trace", self.trace, TRACES)
        check_choice("noise", self.noise, NOISES)

    @classmethod
    def from_mlp(
        cls,
        data_size: int,
        width: int = 64,
        depth: int = 2,
        *,
        activation: str = "tanh",
        key: PRNGKeyArray,
        **kwargs,
    ) -> "CNF":
        """A CNF whose flow is a time-dependent `nodekit.MLPField` (`t` is an input);
        other keyword arguments go to `CNF(...)`. Use a smooth activation (`tanh`,
        `softplus`): the trace needs the field's derivative."""
        field = MLPField(data_size, width, depth, activation=activation,
                         time_dependent=True, key=key)
        return cls(field, data_size, **kwargs)

    def with_trace(self, trace: str) -> "CNF":
        """The same flow (same parameters and solve settings) with another trace method,
        e.g. an exact-trace copy of a Hutchinson-trained CNF for evaluation.

        **Example:** `test_nll, aux = nll(cnf.with_trace("exact"), test_x)`
        """
        if trace == self.trace:
            return self
        return CNF(self.field, self.data_size, t1=self.t1, trace=trace, noise=self.noise,
                   settings=self.settings)

    @property
    def settings(self) -> SolveSettings:
        """The solve settings (held by `ode`)."""
        return self.ode.settings

    @property
    def field(self):
        """The flow `f(t, y, args)` on one data vector."""
        return self.ode.field

    # ------------------------------------------------------------- pieces

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype=None) -> jax.Array:
        """A Hutchinson noise array of `shape` (`noise` distribution, unit variance)."""
        dtype = dtype or jnp.result_type(float)
        if self.noise == "gaussian":
            return jax.random.normal(key, shape, dtype)
        return jax.random.rademacher(key, shape, dtype)

    def dynamics(self, eps=None, regularisers: tuple = ()) -> CNFDynamics:
        """The augmented dynamics `func(t, state, args)` on `(y, a[, r])` (see
        `CNFDynamics`), with noise vector `eps` (needed for `trace="hutchinson"`)."""
        return CNFDynamics(self.field, eps, tuple(regularisers), self.trace)

    def _times(self, t1, dtype):
        return jnp.stack([jnp.zeros((), dtype), jnp.asarray(self.t1 if t1 is None else t1, dtype)])

    def _check_x(self, owner: str, x, ndim: int):
        x = jnp.asarray(x)
        if x.ndim != ndim or x.shape[-1] != self.data_size:
            shape = "(d,)" if ndim == 1 else "(B, d)"
            raise InputError(
                f"CNF.{owner}: x must have shape {shape} with d = {self.data_size}, got "
                f"{tuple(x.shape)}" + (" (use nll for a batch)." if ndim == 1 and x.ndim == 2
                                      else ".")
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        return x

    def _noise_or_none(self, owner: str, key, shape, dtype):
        if key is None:
            if self.trace == "hutchinson":
                raise InputError(
                    f"CNF.{owner}: trace='hutchinson' draws a noise vector per solve, so it "
                    "needs key=jax.random.PRNGKey(...); or use trace='exact'."
                )
            return None
        return self.draw_noise(key, shape, dtype)

    # ------------------------------------------------------------- densities

    def log_prob_and_penalties(
        self, x: Float[ArrayLike, " data_size"], key: PRNGKeyArray | None = None,
        regularisers: tuple = (), *, args=None, throw: bool = True, t1=None,
        quadrature: str = "trapezoid",
    ) -> tuple[Float[Array, ""], Float[Array, " regularisers"], SolveStats]:
        """`log p(x)`, the regularisers' integrals and the solve's stats, for one sample.

        **Arguments:**

        - `x`: one data point `(data_size,)`.
        - `key`: draws the noise vector `ε` for this solve (required by
          `trace="hutchinson"`; with `trace="exact"` it is only passed on to the
          regularisers, and may be `None`, in which case they get `eps=None`).
        - `regularisers`: a tuple whose items are either objects with a method
          `integrand(func, t, y, args, eps) -> scalar` (nodekit's regulariser modules;
          `func` is the flow `field`, `y` the flow's state, `eps` the same noise vector as
          the trace estimator, as in RNODE), or plain callables `g(t, y) -> scalar`.
          Their integrals over `[0, t1]` are taken in the same solve as the density.
        - `quadrature`: how those integrals are taken, as in `nodekit.regularised_odeint`:
          `"trapezoid"` (default; the integrands once per solver step, the steps those of
          the unregularised flow) or `"augmented"` (in the ODE state, under error
          control, evaluated at every stage). The log-density is always in the state.
        - `args`: passed to the field.
        - `throw`: raise on a failed solve (`False`: see `stats.result`).
        - `t1`: end time of this solve instead of `self.t1` (may be traced: STEER draws
          it per training step with `nodekit.steer_end_time`).

        **Returns:** `(logp, penalties, stats)`; `penalties` has shape
        `(len(regularisers),)`.
        """
        return self._log_prob_and_penalties(x, key, regularisers, args, throw, t1, quadrature,
                                            None)

    def _log_prob_and_penalties(self, x, key, regularisers, args, throw, t1, quadrature,
                                vmap_size):
        x = self._check_x("log_prob", x, 1)
        eps = self._noise_or_none("log_prob", key, x.shape, x.dtype)
        regularisers = tuple(regularisers)
        z, a, penalties, stats = self._solve_flow(
            lambda dyn: dyn, eps, regularisers, (x, jnp.zeros((), x.dtype)),
            jnp.zeros(len(regularisers), x.dtype), self._times(t1, x.dtype), args, throw,
            quadrature, vmap_size)
        return standard_normal_log_prob(z) + a, penalties, stats

    def _solve_flow(self, wrap, eps, regularisers, state, r0, ts, args, throw, quadrature,
                    vmap_size=None):
        """Solve the flow from `state = (y, a)` with the regularisers' integrals starting
        at `r0`; `wrap` turns a `CNFDynamics` into the field on that state (identity for
        one sample, `_JointDynamics` for a batch). Returns `(y(t1), a(t1), r(t1), stats)`."""
        integrals = integration_of(quadrature, regularisers)  # validates `quadrature`
        kw = dict(args=args, throw=throw, vmap_size=vmap_size, caller="CNF")
        if not regularisers:
            ys, stats = solve(self.ode, wrap(self.dynamics(eps, ())), state, ts, **kw)
            return ys[0][-1], ys[1][-1], r0, stats
        full = wrap(self.dynamics(eps, regularisers))
        if integrals != "trapezoid":
            ys, stats = solve(self.ode, full, (*state, r0), ts, integrals=integrals, **kw)
            return ys[0][-1], ys[1][-1], ys[2][-1], stats
        func = _StepQuadratureDynamics(full)
        ((y, a), r), stats = solve(self.ode, func, (state, r0), ts, integrals="trapezoid", **kw)
        return y[-1], a[-1], r[-1], stats

    def log_prob(self, x: Float[ArrayLike, " data_size"], key: PRNGKeyArray | None = None, *,
                 args=None, throw: bool = True) -> tuple[Float[Array, ""], SolveStats]:
        """`(log p(x), stats)` for one data point `x` of shape `(data_size,)`.

        `key` draws the Hutchinson noise (required for `trace="hutchinson"`).

        **Example:**

        ```python
        import jax
        import jax.numpy as jnp
        from nodekit.models import CNF

        cnf = CNF.from_mlp(2, width=8, depth=1, key=jax.random.PRNGKey(0))
        logp, stats = cnf.log_prob(jnp.zeros(2))            # trace="exact"
        grid = jnp.stack(jnp.meshgrid(jnp.linspace(-1, 1, 3), jnp.linspace(-1, 1, 3)), -1).reshape(-1, 2)
        logps, _ = jax.vmap(cnf.log_prob)(grid)             # a density image
        ```
        """
        logp, _, stats = self.log_prob_and_penalties(x, key, (), args=args, throw=throw)
        return logp, stats

    def log_prob_batch(
        self, xs: Float[ArrayLike, "batch data_size"], key: PRNGKeyArray | None = None,
        regularisers: tuple = (), *,
        mode: str = "vmap", args=None, throw: bool = True, t1=None,
        quadrature: str = "trapezoid",
    ) -> tuple[jax.Array, jax.Array, SolveStats]:
        """Log-densities `(B,)`, penalties `(B, n_reg)` and stats for a batch `(B, d)`.

        `mode="vmap"`: one solve per sample (stats of shape `(B,)`); `mode="joint"`: the
        batch as one state with one shared step size, as FFJORD does (scalar stats).
        Each sample gets its own noise vector either way. `regularisers` and
        `quadrature` as in `log_prob_and_penalties`.
        """
        check_choice("batch mode", mode, BATCH_MODES)
        xs = self._check_x("log_prob_batch", xs, 2)
        n = xs.shape[0]
        regularisers = tuple(regularisers)
        if mode == "vmap":
            keys = None if key is None else jax.random.split(key, n)
            return jax.vmap(
                lambda x, k: self._log_prob_and_penalties(x, k, regularisers, args, throw, t1,
                                                          quadrature, n),
                in_axes=(0, None if keys is None else 0),
            )(xs, keys)
        eps = self._noise_or_none("log_prob_batch", key, xs.shape, xs.dtype)
        z, a, penalties, stats = self._solve_flow(
            _JointDynamics, eps, regularisers, (xs, jnp.zeros((n,), xs.dtype)),
            jnp.zeros((n, len(regularisers)), xs.dtype), self._times(t1, xs.dtype), args,
            throw, quadrature)
        return jax.vmap(standard_normal_log_prob)(z) + a, penalties, stats

    def sample(self, key: PRNGKeyArray, n: int, *, args=None, throw: bool = True
               ) -> tuple[Float[Array, "n data_size"], SolveStats]:
        """`n` samples `(n, data_size)`: draw `z ~ N(0, I)` and solve the flow backwards
        from `t1` to 0 (the batch as one state), and the solve's stats."""
        check_int("CNF.sample", "n", n, 1)
        z = jax.random.normal(key, (n, self.data_size))
        ts = jnp.array([self.t1, 0.0], z.dtype)
        ys, stats = solve(self.ode, JointField(self.field), z, ts, args=args, throw=throw,
                          caller="CNF.sample")
        return ys[-1], stats


def nll(
    model: CNF,
    xs,
    key: jax.Array | None = None,
    *,
    mode: str = "vmap",
    regularisers: tuple = (),
    throw: bool = False,
    t1=None,
    quadrature: str = "trapezoid",
) -> tuple[jax.Array, dict]:
    """The mean negative log-likelihood of a CNF on a batch `xs (B, d)`.

    **Arguments:**

    - `model`: a `CNF`.
    - `xs`: `(B, data_size)` data.
    - `key`: the noise for the Hutchinson estimator (one vector per sample); may be
      `None` with `trace="exact"` and no noisy regulariser.
    - `mode`: `"vmap"` (one solve per sample) or `"joint"` (one solve for the batch, one
      shared step size, as FFJORD).
    - `regularisers`: as in `CNF.log_prob_and_penalties`, integrated in the same solve.
    - `throw`: raise on a failed solve; default `False` counts failures in `aux`.
    - `t1`: end time of the flow for this batch (default `model.t1`; STEER passes a
      random one).
    - `quadrature`: how the penalties are integrated, `"trapezoid"` (default) or
      `"augmented"` (see `CNF.log_prob_and_penalties`).

    **Returns:**

    `(loss, aux)`; `loss` is the mean NLL only (add the weighted penalties yourself);
    `aux` holds scalars `nll`, `bits_per_dim`, `nfe`, `solver_steps`, `failures`, and
    `penalties`, an array `(len(regularisers),)` of batch-mean integrals in the order
    given.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit
    from nodekit.models import CNF, nll

    cnf = CNF.from_mlp(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    xs, key = jax.random.normal(jax.random.PRNGKey(1), (8, 2)), jax.random.PRNGKey(2)
    kinetic, jacobian = nodekit.KineticEnergy(1.0), nodekit.JacobianFrobenius(1.0)
    loss, aux = nll(cnf, xs, key, mode="joint", regularisers=(kinetic, jacobian))
    total = loss + 0.01 * aux["penalties"][0] + 0.01 * aux["penalties"][1]
    ```
    """
    logp, penalties, stats = model.log_prob_batch(xs, key, regularisers, mode=mode,
                                                  throw=throw, t1=t1, quadrature=quadrature)
    loss = -jnp.mean(logp)
    aux = stats_aux(stats, jnp.shape(xs)[0])
    aux.update(
        nll=loss,
        bits_per_dim=loss / (model.data_size * math.log(2.0)),
        penalties=jnp.mean(penalties, axis=0),
    )
    return loss, aux
