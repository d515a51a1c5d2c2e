"""Regularisers that keep learned dynamics cheap to solve, integrated along the solve.

Each regulariser is a scalar integrand `g(t, y)` whose time integral along the
trajectory is the penalty. The state is augmented with one running integral per
regulariser,

    d/dt (y, r) = (f(t, y), [g_1(t, y), ..., g_n(t, y)]),   r(t0) = 0,

so `r(t1)` holds the penalties (Finlay et al. 2020, "How to train your neural ODE";
Kelly et al. 2020, "Learning differential equations that are easy to solve"). How `r`
is integrated is the `quadrature`:

- `"trapezoid"` (default): the solver steps `y` alone and `g` is evaluated once per
  step, at its end, and summed by the trapezoid rule (`nodekit._quadrature`). The steps
  are exactly the unregularised solve's, and a penalty costs one evaluation of its
  integrand per step rather than one per stage. Kinetic energy alone needs only the
  field value that every stage computes anyway, so it is integrated at the stages
  (free, the solver's order, still without steering the step size).
- `"augmented"`: `r` is part of the ODE state, so every stage evaluates `g` and
  adaptive solvers also control its error (RNODE's and TayNODE's own formulation).

- `KineticEnergy`: `||f(t, y)||^2` (RNODE).
- `JacobianFrobenius`: `||df/dy||_F^2`, exact or by Hutchinson's estimator (RNODE).
- `TaylorRK`: `||d^K y/dt^K||^2`, the K-th total time derivative along the flow, by
  Taylor-mode AD (`jax.experimental.jet`) applied to the field inside the solve (TayNODE).
- `steer_end_time`: STEER (Ghosh et al. 2020), a random end time for each training solve.

Sharing work: for one state, all regularisers of a solve share one evaluation of the
field. `jax.linearize` evaluates `f(t, y)` once and keeps the linear map
`(dt, dy) -> df`; every tangent the built-in regularisers need (Hutchinson's `eps`,
the identity columns of the exact Jacobian, Taylor's `(1, f)`) goes through that map in
one batched call, so the primal `f` is never evaluated twice.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax.experimental.jet import jet
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_choice, check_flat_state, is_concrete, unexpected_keywords
from ._errors import InputError, unknown_name_message
from ._fields import JointField, vmap_samples
from ._odeint import solve
from ._settings import BATCH_MODES as BATCH_MODES, DEFAULT, SolveSettings


#: Noise distributions for stochastic (Hutchinson) estimators.
NOISES = ("gaussian", "rademacher")
#: Estimators of the Jacobian Frobenius norm.
ESTIMATORS = ("exact", "hutchinson")
#: How the Jacobian (or its product with the noise) is formed.
JACOBIAN_MODES = ("auto", "jacfwd", "jacrev")
#: How Taylor-mode derivatives are computed.
TAYLOR_METHODS = ("jet", "jvp")
#: How the running integrals are computed: `"trapezoid"` (once per solver step, on the
#: step grid) or `"augmented"` (inside the ODE state, at every solver stage).
QUADRATURES = ("trapezoid", "augmented")


_is_concrete = is_concrete


def _check_weight(owner: str, weight) -> None:
    if (
        isinstance(weight, bool)
        or not isinstance(weight, numbers.Real)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise InputError(
            f"{owner} weight must be a finite number >= 0 (a Python float), got {weight!r}."
        )


def _check_name(kind: str, value, options: Sequence[str]) -> None:
    check_choice(kind, value, options)


# ------------------------------------------------------------------------ interface


class AbstractRegulariser(eqx.Module):
    """A penalty `weight * integral of g(t, y(t)) dt` along the trajectory.

    Subclasses hold `weight` (a static Python float, `>= 0`), implement
    `integrand(func, t, y, args, eps)` for one unbatched state and say which noise they
    need (`noise_distribution`: `None`, `"gaussian"` or `"rademacher"`).

    The penalties come back from `regularised_odeint` unweighted; `total_penalty`
    applies the weights.

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import nodekit

    class Speed(nodekit.AbstractRegulariser):   # integral of ||f||_1
        weight: float = eqx.field(static=True)

        @property
        def noise_distribution(self):
            return None

        def integrand(self, func, t, y, args, eps):
            return jnp.sum(jnp.abs(func(t, y, args)))

    ys, penalties, stats = nodekit.regularised_odeint(
        lambda t, y, args: -y, jnp.ones(2), jnp.linspace(0.0, 1.0, 3), (Speed(0.1),))
    ```
    """

    weight: eqx.AbstractVar[float]

    def __check_init__(self):
        _check_weight(type(self).__name__, self.weight)

    @property
    @abc.abstractmethod
    def noise_distribution(self) -> str | None:
        """`None` (deterministic) or the name of the noise the integrand takes as `eps`."""

    @property
    def needs_noise(self) -> bool:
        """Whether `integrand` takes a noise vector `eps` (drawn once per solve)."""
        return self.noise_distribution is not None

    @property
    def field_value_only(self) -> bool:
        """Whether the integrand needs nothing but the field's value `f(t, y)`, which the
        solver's stages compute anyway (`KineticEnergy`). Such integrals are free at every
        stage, so `quadrature="trapezoid"` integrates them there instead (see
        `integration_of`). Default `False`; override to `True` only if so."""
        return False

    @abc.abstractmethod
    def integrand(self, func: Callable, t: ArrayLike, y: Float[Array, " d"], args: Any,
                  eps: Float[Array, " d"] | None) -> Float[Array, ""]:
        """The scalar integrand at one unbatched state.

        **Arguments:**

        - `func`: the vector field `func(t, y, args) -> dy/dt`.
        - `t`: the time (a scalar); `y`: the state (a 1-D array); `args`: passed to `func`.
        - `eps`: this regulariser's noise (shape of `y`), or `None` when it needs none.

        **Returns:** a scalar array in the dtype of `y`.
        """


class _SharedWork(AbstractRegulariser):
    """The built-in regularisers: they ask for tangents of one shared linearisation of
    the field (`_tangents`) and reduce the results to a scalar (`_reduce`), so that all
    regularisers of one solve share one field evaluation (see `_evaluate`)."""

    @property
    @abc.abstractmethod
    def _uses_linearisation(self) -> bool:
        """Whether `_tangents` asks for Jacobian-vector products."""

    @abc.abstractmethod
    def _tangents(self, f, t, y, eps):
        """`None` or `(dts (m,), dys (m, d))`: the tangents to push through the field."""

    @abc.abstractmethod
    def _reduce(self, fy, t, y, f, jf, eps) -> jax.Array:
        """The integrand from `f = fy(t, y)` and `jf (m, d)`, the pushed tangents."""

    def integrand(self, func, t, y, args, eps):
        _, values = _evaluate((self,), func, t, y, args, (eps,))
        return values[0]


def _evaluate(regularisers, func, t, y, args, noises):
    """`f(t, y)` and the stacked integrands of `regularisers` at one unbatched state,
    sharing one field evaluation (one `jax.linearize`) between the built-ins."""
    y = jnp.asarray(y)
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(y.dtype)

    def fy(t_, y_):
        return func(t_, y_, args)

    shared = [isinstance(r, _SharedWork) for r in regularisers]
    if any(s and r._uses_linearisation for s, r in zip(shared, regularisers)):
        f, lin = jax.linearize(fy, t, y)
    else:
        f, lin = fy(t, y), None

    requests = [
        r._tangents(f, t, y, eps) if s and r._uses_linearisation else None
        for s, r, eps in zip(shared, regularisers, noises)
    ]
    pushed = [None] * len(regularisers)
    wanted = [q for q in requests if q is not None]
    if wanted:
        dts = jnp.concatenate([q[0] for q in wanted])
        dys = jnp.concatenate([q[1] for q in wanted])
        out = jax.vmap(lin)(dts, dys)  # one batched Jacobian-vector product
        start = 0
        for i, q in enumerate(requests):
            if q is not None:
                m = q[1].shape[0]
                pushed[i] = out[start : start + m]
                start += m

    values = []
    for s, r, eps, jf in zip(shared, regularisers, noises, pushed):
        if s:
            v = r._reduce(fy, t, y, f, jf, eps)
        else:
            v = r.integrand(func, t, y, args, eps)
        values.append(jnp.asarray(v, y.dtype).reshape(()))
    if not values:
        return f, jnp.zeros((0,), y.dtype)
    return f, jnp.stack(values)


# ------------------------------------------------------------------------ kinetic energy


class KineticEnergy(_SharedWork):
    """Kinetic energy: `integral of ||f(t, y)||^2 dt` (Finlay et al. 2020, RNODE).

    Penalises fast dynamics and favours straight, constant-speed trajectories (optimal
    transport). It costs almost nothing: the field value is the one the solver needs.

    **Arguments:**

    - `weight`: the penalty weight, a finite Python number `>= 0`.

    **Raises:** `InputError` for a negative, non-finite or non-numeric weight.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    reg = nodekit.KineticEnergy(0.01)
    ys, penalties, stats = nodekit.regularised_odeint(field, y0, ts, [reg])
    ```
    """

    weight: float = eqx.field(static=True)

    def __init__(self, weight: float):
        self.weight = weight

    @property
    def noise_distribution(self):
        return None

    @property
    def _uses_linearisation(self):
        return False

    @property
    def field_value_only(self):
        return True

    def _tangents(self, f, t, y, eps):
        return None

    def _reduce(self, fy, t, y, f, jf, eps):
        return jnp.sum(f**2)


# ------------------------------------------------------------------------ Jacobian


class JacobianFrobenius(_SharedWork):
    """Jacobian Frobenius norm: `integral of ||df/dy||_F^2 dt` (Finlay et al. 2020).

    Penalises stiffness (large Jacobians). Two estimators:

    - `"exact"`: the full `d x d` Jacobian, `d` Jacobian-vector products. Fine for small
      states (`d` up to a few dozen).
    - `"hutchinson"`: the unbiased one-sample estimate `||J eps||^2` with
      `E[eps eps^T] = I` (`eps` drawn once per solve, per sample). One Jacobian-vector
      product, whatever `d`.

    `mode` picks forward or reverse mode:

    - `"jacfwd"` (forward; `J eps` for Hutchinson, `J I` for exact) shares work: the
      tangents go through the same `jax.linearize` as the field value the solver needs
      (and as the other regularisers' tangents), so `f` is evaluated once, and the
      training gradient is then reverse-over-forward, the cheapest nesting.
    - `"jacrev"` (reverse; `eps^T J` for Hutchinson, as FFJORD/RNODE code does, `I J`
      for exact) runs its own `jax.vjp`, which evaluates `f` a second time and costs a
      backward pass per product (about twice a forward one); the training gradient is
      then reverse-over-reverse.
    - `"auto"` picks `"jacfwd"`. For a vector field the Jacobian is square, so both modes
      need the same number of products (`d`, or 1 for Hutchinson); reverse mode only wins
      when outputs are fewer than inputs, which never happens here. (On 2 CPU cores,
      `benchmarks/bench_regularisers.py` measures jacfwd as the faster.)

    Both Hutchinson forms are unbiased. Their variance (one draw) is
    `2 ||S||_F^2` for Gaussian noise and `2 ||S||_F^2 - 2 sum_i S_ii^2` (never larger)
    for Rademacher noise, with `S = J^T J` for `jacfwd` and `S = J J^T` for `jacrev`
    (the same `||S||_F`, so the Gaussian variances agree).

    **Arguments:**

    - `weight`: the penalty weight, a finite Python number `>= 0`.
    - `estimator`: `"exact"` or `"hutchinson"`.
    - `noise`: `"gaussian"` or `"rademacher"` (Hutchinson only).
    - `mode`: `"auto"`, `"jacfwd"` or `"jacrev"`.

    **Raises:** `InputError` for a bad weight or an unknown name.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    reg = nodekit.JacobianFrobenius(0.01, estimator="hutchinson", noise="rademacher")
    ys, penalties, stats = nodekit.regularised_odeint(field, y0, ts, [reg], key=key)
    ```
    """

    weight: float = eqx.field(static=True)
    estimator: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    mode: str = eqx.field(static=True)

    def __init__(
        self,
        weight: float,
        estimator: str = "exact",
        noise: str = "gaussian",
        mode: str = "auto",
    ):
        self.weight = weight
        self.estimator = estimator
        self.noise = noise
        self.mode = mode

    def __check_init__(self):
        _check_name("Jacobian estimator", self.estimator, ESTIMATORS)
        _check_name("noise", self.noise, NOISES)
        _check_name("Jacobian mode", self.mode, JACOBIAN_MODES)

    @property
    def noise_distribution(self):
        return self.noise if self.estimator == "hutchinson" else None

    @property
    def _forward(self) -> bool:
        return self.mode in ("auto", "jacfwd")

    @property
    def _uses_linearisation(self):
        return self._forward

    def _directions(self, y, eps):
        if self.estimator == "hutchinson":
            return jnp.asarray(eps, y.dtype)[None]
        return jnp.eye(y.shape[0], dtype=y.dtype)

    def _tangents(self, f, t, y, eps):
        dys = self._directions(y, eps)
        return jnp.zeros(dys.shape[:1], t.dtype), dys

    def _reduce(self, fy, t, y, f, jf, eps):
        if self._forward:
            return jnp.sum(jf**2)
        _, vjp = jax.vjp(lambda y_: fy(t, y_), y)
        (rows,) = jax.vmap(vjp)(self._directions(y, eps))
        return jnp.sum(rows**2)


# ------------------------------------------------------------------------ Taylor mode


def _eval_inlined(jaxpr, consts, args):
    """Evaluate a jaxpr, inlining custom-derivative and nested-jit calls, so that
    `jax.experimental.jet` only meets primitives. (In jax 0.10, `jet` of a function with
    a `custom_jvp` such as `jax.nn.relu` or `jax.nn.softplus` fails with an
    UnexpectedTracerError; evaluated through here it works.)"""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        params = eqn.params
        inner = None
        if "call_jaxpr" in params and eqn.primitive.name.startswith("custom"):
            inner = params["call_jaxpr"]  # custom_jvp_call: the primal function
        elif "fun_jaxpr" in params and eqn.primitive.name.startswith("custom"):
            inner = params["fun_jaxpr"]  # custom_vjp_call: the primal function
        elif eqn.primitive.name in ("jit", "pjit", "closed_call") and "jaxpr" in params:
            inner = params["jaxpr"]
        if inner is not None:
            if isinstance(inner, jex.ClosedJaxpr):
                outvals = _eval_inlined(inner.jaxpr, inner.consts, invals)
            else:
                outvals = _eval_inlined(inner, (), invals)
        else:
            bind_params = eqn.primitive.get_bind_params(params)
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for v, x in zip(eqn.outvars, outvals):
            if not isinstance(v, jex.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _jet_ready(fy, t, y):
    """`fy` traced once and re-evaluated primitive by primitive (see `_eval_inlined`)."""
    closed = jax.make_jaxpr(fy)(t, y)

    def g(t_, y_):
        (out,) = _eval_inlined(closed.jaxpr, closed.consts, (t_, y_))
        return out

    return g


def _taylor_jet(fy, t, y, y1, y2, order):
    """`d^order y/dt^order` along the flow from `y' = y1`, `y'' = y2`, by `jet`.

    Works with Taylor coefficients `c_k = y^(k) / k!` (`jet2`, no factorial scaling,
    so no `lgamma` round-off): a jet of order `k` of `f(t(s), y(s))` with
    `t(s) = t + s` and `y(s) = y + sum_j c_j s^j` gives the coefficients `d_j` of
    `f`, and `c_(k+1) = d_k / (k + 1)` because `y' = f`.
    """
    g = _jet_ready(fy, t, y)
    coeffs = [y1, y2 / 2]
    one, zero = jnp.ones_like(t), jnp.zeros_like(t)
    while len(coeffs) < order:
        k = len(coeffs)
        try:
            _, out = jet(g, (t, y), ((one,) + (zero,) * (k - 1), tuple(coeffs)),
                         factorial_scaled=False)
        except KeyError as e:  # jet_rules[primitive] has no entry
            raise InputError(
                f"jax.experimental.jet has no Taylor rule for the primitive {e.args[0]} used "
                "by the vector field; use TaylorRK(..., method='jvp') (nested forward "
                "mode) instead."
            ) from e
        coeffs.append(out[-1] / (k + 1))
    return coeffs[-1] * math.factorial(order)


def _taylor_nested_jvp(fy, t, y, order):
    """`d^order y/dt^order` by nested forward mode: `D_1 = f`,
    `D_(k+1)(t, y) = dD_k/dt + dD_k/dy f(t, y)` (one `jax.jvp` each)."""

    def step(d):
        def next_d(t_, y_):
            return jax.jvp(d, (t_, y_), (jnp.ones_like(t_), fy(t_, y_)))[1]

        return next_d

    d = fy
    for _ in range(order - 1):
        d = step(d)
    return d(t, y)


class TaylorRK(_SharedWork):
    """Taylor-mode penalty `R_K = integral of ||d^K y/dt^K||^2 dt` (Kelly et al. 2020).

    `d^K y/dt^K` is the K-th total time derivative along the flow (`y' = f(t, y)`,
    `dt/dt = 1`, so time-dependent fields are handled). Penalising it favours dynamics
    that adaptive solvers integrate in few steps.

    The derivatives are computed on the field inside the solve (never through the
    solver):

    - `y'' = df/dt + df/dy f` is one Jacobian-vector product, taken from the
      linearisation the field evaluation already made (order 1 Taylor mode is forward
      mode), so `K = 2` costs about as much as a Hutchinson Jacobian estimate.
    - `method="jet"` gets orders 3 and up from `jax.experimental.jet` (Taylor-mode AD),
      one jet of order `k` for each `k = 2, ..., K-1`: cost grows about quadratically
      with `K`.
    - `method="jvp"` nests `jax.jvp` `K - 1` times: an independent cross-check (and the
      way out where `jet` lacks a rule for a primitive), whose cost grows exponentially
      with `K`.

    **Arguments:**

    - `weight`: the penalty weight, a finite Python number `>= 0`.
    - `order`: `K`, an integer `>= 2` (TayNODE uses 2 or 3).
    - `method`: `"jet"` or `"jvp"`.

    **Raises:** `InputError` for a bad weight or order or an unknown method.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    reg = nodekit.TaylorRK(0.01, order=3)
    ys, penalties, stats = nodekit.regularised_odeint(field, y0, ts, [reg])
    ```
    """

    weight: float = eqx.field(static=True)
    order: int = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __init__(self, weight: float, order: int = 2, method: str = "jet"):
        self.weight = weight
        self.order = order
        self.method = method

    def __check_init__(self):
        if (
            isinstance(self.order, bool)
            or not isinstance(self.order, numbers.Integral)
            or self.order < 2
        ):
            raise InputError(
                f"TaylorRK order must be an integer >= 2 (the order K of d^K y/dt^K), "
                f"got {self.order!r}."
            )
        _check_name("Taylor method", self.method, TAYLOR_METHODS)

    @property
    def noise_distribution(self):
        return None

    @property
    def _uses_linearisation(self):
        return self.method == "jet"

    def _tangents(self, f, t, y, eps):
        return jnp.ones((1,), t.dtype), f[None]

    def _reduce(self, fy, t, y, f, jf, eps):
        if self.method == "jvp":
            dk = _taylor_nested_jvp(fy, t, y, int(self.order))
        elif self.order == 2:
            dk = jf[0]
        else:
            dk = _taylor_jet(fy, t, y, f, jf[0], int(self.order))
        return jnp.sum(dk**2)


#: Regulariser classes by config name.
REGULARISERS: dict[str, type] = {
    "kinetic": KineticEnergy,
    "jacobian": JacobianFrobenius,
    "taylor": TaylorRK,
}


# ------------------------------------------------------------------------ augmented field


def _as_regularisers(regularisers) -> tuple:
    if isinstance(regularisers, AbstractRegulariser):
        regularisers = (regularisers,)
    if not isinstance(regularisers, (tuple, list)) or not all(
        isinstance(r, AbstractRegulariser) for r in regularisers
    ):
        raise InputError(
            "regularisers must be a tuple of nodekit regularisers (e.g. "
            f"(nodekit.KineticEnergy(0.01),)), got {regularisers!r}."
        )
    return tuple(regularisers)


def _check_noises(regularisers, noises) -> tuple:
    if noises is None:
        noises = (None,) * len(regularisers)
    noises = tuple(noises)
    if len(noises) != len(regularisers):
        raise InputError(
            f"got {len(noises)} noise entries for {len(regularisers)} regularisers; "
            "pass one per regulariser (None where none is needed), e.g. from sample_noise."
        )
    for r, eps in zip(regularisers, noises):
        if r.needs_noise and eps is None:
            raise InputError(
                f"{r!r} needs {r.noise_distribution} noise but got None; draw it with "
                "nodekit.sample_noise(regularisers, key, y.shape, y.dtype)."
            )
    return noises


class _AugmentedField(eqx.Module):
    """`(t, (y, r), args) -> (f(t, y, args), integrands)` for one unbatched state;
    `(t, (y, None), args) -> (f, None)`, the field alone (for `StepQuadrature`)."""

    func: Any
    regularisers: tuple
    noises: tuple

    def __call__(self, t, state, args):
        y, r = state
        if r is None:
            return self.func(t, y, args), None
        return _evaluate(self.regularisers, self.func, t, y, args, self.noises)


class _JointAugmentedField(eqx.Module):
    """The batch `(B, d)` as one state: the field and the per-sample integrands are
    vmapped over samples, and the integrands summed over the batch."""

    func: Any
    regularisers: tuple
    noises: tuple

    def __call__(self, t, state, args):
        ys, r = state
        if r is None:
            return vmap_samples(self.func, t, ys, args), None

        def one(t, y, args, noises):
            return _evaluate(self.regularisers, self.func, t, y, args, noises)

        f, values = vmap_samples(one, t, ys, args, self.noises)
        return f, jnp.sum(values, axis=0)


def augmented_field(func: Callable, regularisers, noises=None) -> Callable:
    """The vector field of the state augmented with the running penalty integrals.

    **Arguments:**

    - `func`: the vector field `func(t, y, args)` on one unbatched 1-D state.
    - `regularisers`: a tuple of regularisers (`AbstractRegulariser`).
    - `noises`: one entry per regulariser, `None` where it needs no noise (as returned by
      `sample_noise`); `None` for all-deterministic regularisers.

    **Returns:**

    An Equinox module `aug(t, (y, r), args) -> (f(t, y, args), g)` where `r` and `g`
    have shape `(len(regularisers),)` and `g` stacks the integrands. The field value is
    computed once and shared with the regularisers. A module (not a closure) so that
    the field's parameters stay visible to `adjoint="backsolve"`.

    **Raises:** `InputError` for a bad regulariser list or missing noise.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    aug = nodekit.augmented_field(field, (nodekit.KineticEnergy(1.0),))
    dy, dr = aug(0.0, (y0, jnp.zeros(1)), None)
    ```
    """
    regularisers = _as_regularisers(regularisers)
    return _AugmentedField(func, regularisers, _check_noises(regularisers, noises))


def sample_noise(regularisers, key, y_shape, dtype=jnp.float32) -> tuple:
    """Draw each regulariser's noise: one array of shape `y_shape`, or `None`.

    Regulariser `i` draws from `jax.random.fold_in(key, i)`. Pass a fresh key each
    training step (e.g. `jax.random.fold_in(run_key, step)`), so that runs are
    reproducible from their seed. For a batch pass `y_shape=(B, d)`: each sample gets
    its own noise, held fixed along its solve.

    **Arguments:**

    - `regularisers`: the tuple of regularisers.
    - `key`: a `jax.random.PRNGKey`; may be `None` only when no regulariser needs noise.
    - `y_shape`, `dtype`: the shape and dtype of the state (or of the batch of states).

    **Returns:** a tuple with one entry per regulariser.

    **Raises:** `InputError` when noise is needed but `key` is `None`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    regs = (nodekit.JacobianFrobenius(0.01, estimator="hutchinson"),)
    (eps,) = nodekit.sample_noise(regs, jax.random.PRNGKey(0), (2,), jnp.float32)
    ```
    """
    regularisers = _as_regularisers(regularisers)
    needing = [r for r in regularisers if r.needs_noise]
    if needing and key is None:
        raise InputError(
            f"{type(needing[0]).__name__} draws noise once per solve, so it needs a PRNG "
            "key: pass key=jax.random.PRNGKey(...) (a fresh key each training step)."
        )
    out = []
    for i, r in enumerate(regularisers):
        dist = r.noise_distribution
        if dist is None:
            out.append(None)
            continue
        k = jax.random.fold_in(key, i)
        if dist == "gaussian":
            out.append(jax.random.normal(k, tuple(y_shape), dtype))
        elif dist == "rademacher":
            out.append(jax.random.rademacher(k, tuple(y_shape), dtype))
        else:
            raise InputError(unknown_name_message("noise", dist, NOISES))
    return tuple(out)


# ------------------------------------------------------------------------ solves


_SOLVE_KEYWORDS = ("settings", "solver", "rtol", "atol", "dt0", "adjoint", "max_steps",
                   "checkpoints", "engine", "args", "throw", "check")


class _Call(NamedTuple):
    settings: SolveSettings
    args: Any
    throw: bool
    check: bool


def _solve_arguments(caller: str, odeint_kwargs: dict) -> _Call:
    """The solve's settings and options from `odeint`-style keyword arguments."""
    if "return_stats" in odeint_kwargs:
        raise InputError(
            f"{caller} always returns (ys, penalties, stats); do not pass return_stats."
        )
    unknown = {k: v for k, v in odeint_kwargs.items() if k not in _SOLVE_KEYWORDS}
    if unknown:
        raise unexpected_keywords(caller, unknown, ("key", "batch_mode", "quadrature")
                                  + _SOLVE_KEYWORDS)
    kw = dict(odeint_kwargs)
    settings = SolveSettings.resolve(kw.pop("settings", None),
                                     **{k: kw.pop(k, DEFAULT) for k in _SOLVE_KEYWORDS[1:9]})
    return _Call(settings, kw.get("args"), kw.get("throw", True), kw.get("check", True))


def _direction(ts, dtype):
    ts = jnp.asarray(ts)
    return jnp.where(ts[-1] >= ts[0], 1, -1).astype(dtype)


def regularised_odeint(
    func: Callable,
    y0: Float[ArrayLike, " d"],
    ts: Float[ArrayLike, " times"],
    regularisers: Sequence[AbstractRegulariser] | AbstractRegulariser,
    *,
    key: PRNGKeyArray | None = None,
    batch_mode: str | None = None,
    quadrature: str = "trapezoid",
    **odeint_kwargs,
):
    """Solve `dy/dt = func(t, y, args)` and integrate the regularisers along the solve.

    The state is augmented with one running integral per regulariser (see the module
    docstring); the solver's own steps compute the penalties, by default with one
    evaluation of the integrands per step (`quadrature`).

    **Arguments:**

    - `func`: the vector field on one unbatched state.
    - `y0`: one initial state, a 1-D array. (With `batch_mode` set, a batch `(B, d)`:
      this then calls `regularised_odeint_batch(..., mode=batch_mode)`.)
    - `ts`: the save times, as in `nodekit.odeint`. With STEER, replace `ts[-1]` by
      `steer_end_time(...)` first.
    - `regularisers`: a tuple of regularisers (may be empty).
    - `key`: a PRNG key, needed when a regulariser draws noise (Hutchinson); use a fresh
      key each training step.
    - `batch_mode`: `None` (one state) or `"vmap"` / `"joint"` (a batch).
    - `quadrature`: `"trapezoid"` (default): the solver steps `y` alone and the
      integrands are evaluated once per step, at its end, and summed by the trapezoid
      rule (second order; the steps, and the NFE, are exactly those of the
      unregularised solve). When every integrand needs only the field value (kinetic
      energy alone), they are integrated at the stages instead, which is free and of
      the solver's order, with the same steps (see `integration_of`).
      `"augmented"`: the running integrals are part of the ODE
      state, evaluated at every solver stage and error-controlled (the solver's order;
      several times the cost for Jacobian and Taylor penalties, and the steps can
      differ from the unregularised solve's). See `nodekit._quadrature`.
    - `**odeint_kwargs`: `settings` (a `nodekit.SolveSettings`) and `solver`, `rtol`,
      `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`, `args`, `throw`,
      `check`, as in `nodekit.odeint`.

    **Returns:**

    `(ys, penalties, stats)`: `ys` of shape `(len(ts), d)`, the penalties at the final
    time (shape `(len(regularisers),)`, integrals over `|dt|`, not yet weighted: see
    `total_penalty`) and the `SolveStats` of the solve (the solver's evaluations of
    the field; with `quadrature="trapezoid"` the integrands add one evaluation per
    attempted step, not counted in `nfe`).

    **Raises:** `InputError` for bad arguments (as `nodekit.odeint`, plus a missing key).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    regs = (nodekit.KineticEnergy(0.01), nodekit.JacobianFrobenius(0.01, "hutchinson"))
    ys, pen, stats = nodekit.regularised_odeint(field, y0, ts, regs, key=key)
    loss = jnp.mean((ys - 0.5) ** 2) + nodekit.total_penalty(regs, pen)
    ```
    """
    if batch_mode is not None:
        return regularised_odeint_batch(
            func, y0, ts, regularisers, key=key, mode=batch_mode, quadrature=quadrature,
            **odeint_kwargs
        )
    regularisers = _as_regularisers(regularisers)
    call = _solve_arguments("regularised_odeint", odeint_kwargs)
    integrals = integration_of(quadrature, regularisers)
    y0 = check_flat_state("regularised_odeint", "y0", y0, 1,
                          "one state, a 1-D array of floats (for a batch use "
                          "regularised_odeint_batch or batch_mode=...)")
    noises = sample_noise(regularisers, key, y0.shape, y0.dtype)
    return _solve_one(func, y0, ts, regularisers, noises, integrals, call, None)


def integration_of(quadrature: str, regularisers) -> str | None:
    """How the running integrals of `regularisers` are taken for `quadrature`:
    `"trapezoid"` (once per step), `"stages"` (in the state at every stage, not steering
    the step size: what `"trapezoid"` becomes when every integrand needs only the field
    value, e.g. kinetic energy alone, which the stages compute anyway, so it is both
    free and of the solver's order) or `None` (`"augmented"`: in the state, under error
    control)."""
    _check_name("quadrature", quadrature, QUADRATURES)
    if quadrature == "augmented":
        return None
    if regularisers and all(getattr(r, "field_value_only", False) for r in regularisers):
        return "stages"
    return "trapezoid"


def _explicit(func, ts, y, call: _Call):
    """`func` with the arrays it closes over made explicit leaves, for `backsolve` (the
    continuous adjoint differentiates only explicit inputs; `odeint` does this for a bare
    field, but here the field sits inside the augmented module)."""
    if call.settings.adjoint != "backsolve" or isinstance(func, eqx.Module):
        return func
    t0 = jnp.asarray(ts)[0]
    if not jnp.issubdtype(t0.dtype, jnp.floating) or t0.dtype != y.dtype:
        t0 = t0.astype(y.dtype)
    return eqx.filter_closure_convert(func, t0, y, call.args)


def _solve_one(func, y0, ts, regularisers, noises, integrals, call: _Call, vmap_size):
    kw = dict(args=call.args, throw=call.throw, check=call.check, vmap_size=vmap_size,
              caller="regularised_odeint")
    if not regularisers:
        ys, stats, _ = solve(func, y0, ts, call.settings, **kw)
        return ys, jnp.zeros((0,), y0.dtype), stats
    aug = _AugmentedField(_explicit(func, ts, y0, call), regularisers, noises)
    r0 = jnp.zeros((len(regularisers),), y0.dtype)
    (ys, rs), stats, _ = solve(aug, (y0, r0), ts, call.settings, integrals=integrals, **kw)
    return ys, rs[-1] * _direction(ts, rs.dtype), stats


def regularised_odeint_batch(
    func: Callable,
    y0s: Float[ArrayLike, "batch d"],
    ts: Float[ArrayLike, " times"],
    regularisers: Sequence[AbstractRegulariser] | AbstractRegulariser,
    *,
    key: PRNGKeyArray | None = None,
    mode: str = "vmap",
    quadrature: str = "trapezoid",
    **odeint_kwargs,
):
    """`regularised_odeint` for a batch of initial states `y0s` of shape `(B, d)`.

    - `mode="vmap"`: one solve per sample (each picks its own steps; per-sample stats).
    - `mode="joint"`: the whole batch is one ODE state `(B, d)` with one shared step
      size; the field is vmapped inside, and the running integrals hold the sum over
      samples of the per-sample integrands (each regulariser sees one sample: the
      Jacobian is never taken of the joint state).

    Each sample gets its own noise, drawn once for its solve; the noise depends only on
    `key` and the sample's position, so both modes see the same noise.

    **Arguments:** as `regularised_odeint` (including `quadrature`), with `y0s` of
    shape `(B, d)` and `mode`.

    **Returns:**

    `(ys, penalties, stats)`: `ys` of shape `(B, len(ts), d)`, the penalties averaged
    over the batch (shape `(len(regularisers),)`, unweighted) and the `SolveStats`
    (fields of shape `(B,)` for `vmap`, scalars for `joint`).

    **Raises:** `InputError` for bad arguments or an unknown mode.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    regs = (nodekit.KineticEnergy(0.01),)
    y0s = jnp.ones((4, 2))
    ys, pen, stats = nodekit.regularised_odeint_batch(
        field, y0s, ts, regs, key=key, mode="joint", solver="tsit5")
    ```
    """
    check_choice("batch mode", mode, BATCH_MODES)
    regularisers = _as_regularisers(regularisers)
    call = _solve_arguments("regularised_odeint_batch", odeint_kwargs)
    integrals = integration_of(quadrature, regularisers)
    y0s = check_flat_state("regularised_odeint_batch", "y0s", y0s, 2,
                           "a batch of states, a float array of shape (B, d)")
    noises = sample_noise(regularisers, key, y0s.shape, y0s.dtype)
    if mode == "vmap":
        ys, penalties, stats = jax.vmap(
            lambda y0, eps: _solve_one(func, y0, ts, regularisers, eps, integrals, call,
                                       y0s.shape[0])
        )(y0s, noises)
        return ys, jnp.mean(penalties, axis=0), stats
    kw = dict(args=call.args, throw=call.throw, check=call.check,
              caller="regularised_odeint_batch")
    if not regularisers:
        ys, stats, _ = solve(JointField(func), y0s, ts, call.settings, **kw)
        return jnp.moveaxis(ys, 0, 1), jnp.zeros((0,), y0s.dtype), stats
    aug = _JointAugmentedField(_explicit(func, ts, y0s[0], call), regularisers, noises)
    r0 = jnp.zeros((len(regularisers),), y0s.dtype)
    (ys, rs), stats, _ = solve(aug, (y0s, r0), ts, call.settings, integrals=integrals, **kw)
    penalties = rs[-1] * _direction(ts, rs.dtype) / y0s.shape[0]
    return jnp.moveaxis(ys, 0, 1), penalties, stats


# ------------------------------------------------------------------------ STEER and totals


def steer_end_time(key: PRNGKeyArray, t1: Float[ArrayLike, ""], b: float, *,
                   t0: Float[ArrayLike, ""] | None = None) -> Float[Array, ""]:
    """STEER (Ghosh et al. 2020): a random end time, uniform on `[t1 - b, t1 + b]`.

    Draw one per training solve and use it in place of the last save time:
    `ts = ts.at[-1].set(nodekit.steer_end_time(key, ts[-1], b, t0=ts[0]))`. Only
    the end time moves, so the loss should depend on the final state only (density and
    classification tasks); with intermediate save times keep `b < ts[-1] - ts[-2]`.
    Evaluate at the fixed `t1`.

    **Arguments:**

    - `key`: a PRNG key (a fresh one each step; the same key gives the same time).
    - `t1`: the nominal end time; `b`: the half-width, `>= 0`.
    - `t0`: the start time; when given, `b < |t1 - t0|` is checked so that the solve
      never ends at or before its start.

    **Returns:** a scalar array in the floating dtype of `t1`.

    **Raises:** `InputError` for a negative or non-finite `b`, or `b >= |t1 - t0|`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    t_end = nodekit.steer_end_time(jax.random.PRNGKey(3), 1.0, 0.5, t0=0.0)  # in [0.5, 1.5]
    ```
    """
    if _is_concrete(b):
        bv = np.asarray(b)
        if bv.shape != () or not np.isfinite(bv) or bv < 0:
            raise InputError(f"STEER half-width b must be a finite number >= 0, got {b!r}.")
        if t0 is not None and _is_concrete(t0) and _is_concrete(t1):
            span = abs(float(np.asarray(t1)) - float(np.asarray(t0)))
            if not float(bv) < span:
                raise InputError(
                    f"STEER half-width b={float(bv):g} must be smaller than the solve's "
                    f"length |t1 - t0| = {span:g}, or the end time could reach the start."
                )
    t1 = jnp.asarray(t1)
    dtype = t1.dtype if jnp.issubdtype(t1.dtype, jnp.floating) else jnp.result_type(float)
    t1 = t1.astype(dtype)
    u = jax.random.uniform(key, (), dtype, minval=-1.0, maxval=1.0)
    return t1 + jnp.asarray(b, dtype) * u


def total_penalty(regularisers: Sequence[AbstractRegulariser] | AbstractRegulariser,
                  penalties: Float[ArrayLike, " regularisers"]) -> Float[Array, ""]:
    """`sum_i weight_i * penalties[i]`: the term to add to the loss.

    **Arguments:**

    - `regularisers`: the tuple of regularisers.
    - `penalties`: the unweighted penalties, shape `(len(regularisers),)`, as returned
      by `regularised_odeint`.

    **Returns:** a scalar (0 for no regularisers).

    **Raises:** `InputError` when the lengths differ.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import nodekit

    field = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))
    y0, ts, key = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3), jax.random.PRNGKey(1)
    regs = (nodekit.KineticEnergy(0.01),)
    ys, penalties, stats = nodekit.regularised_odeint(field, y0, ts, regs)
    loss = jnp.mean(ys**2) + nodekit.total_penalty(regs, penalties)
    ```
    """
    regularisers = _as_regularisers(regularisers)
    penalties = jnp.asarray(penalties)
    if penalties.shape != (len(regularisers),):
        raise InputError(
            f"penalties has shape {tuple(penalties.shape)} but there are "
            f"{len(regularisers)} regularisers; pass the penalties returned with them."
        )
    weights = jnp.asarray([float(r.weight) for r in regularisers], penalties.dtype)
    return jnp.sum(weights * penalties)
