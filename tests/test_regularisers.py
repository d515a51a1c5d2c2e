"""Regularisers: closed forms on linear ODEs, Hutchinson statistics, jet against nested
jvp, gradients against finite differences (both adjoints), batch modes, STEER, errors."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import nodekit
from nodekit._regularisers import (
    REGULARISERS,
    AbstractRegulariser,
    JacobianFrobenius,
    KineticEnergy,
    TaylorRK,
    augmented_field,
    regularised_odeint,
    regularised_odeint_batch,
    sample_noise,
    steer_end_time,
    total_penalty,
)

from .helpers import tree_allclose

A = np.array([[-0.3, 1.2, 0.1], [-0.8, -0.2, 0.4], [0.2, -0.5, -0.1]])  # not symmetric
B = np.array([0.5, -0.2, 0.3])
Y0 = np.array([1.0, -0.5, 0.3])
T1 = 1.5


class Linear(eqx.Module):
    """`y' = A y + t b` (autonomous when b = 0)."""

    A: jax.Array
    b: jax.Array

    def __call__(self, t, y, args):
        return self.A @ y + t * self.b


def quadratic_integral(C, M, z0, T):
    """`integral_0^T z(t)^T M z(t) dt` for `z' = C z`, exactly, by Van Loan's block
    exponential: `expm([[-C^T, M], [0, C]] T) = [[., G], [0, F]]`, integral `= F^T G`."""
    n = C.shape[0]
    big = np.block([[-C.T, M], [np.zeros((n, n)), C]])
    E = scipy.linalg.expm(big * T)
    return float(z0 @ (E[n:, n:].T @ E[:n, n:]) @ z0)


def augmented_linear(b):
    """`y' = A y + t b` as the linear autonomous system `z = (y, t, 1)`, `z' = C z`."""
    d = len(Y0)
    C = np.zeros((d + 2, d + 2))
    C[:d, :d], C[:d, d], C[d, d + 1] = A, b, 1.0
    return C, np.concatenate([Y0, [0.0, 1.0]])


def reference_penalties(b):
    """Kinetic, Frobenius and R_2, R_3 for `y' = A y + t b`, exactly: with
    `z' = C z` (`augmented_linear`), `y^(K) = P C^K z`."""
    d = len(Y0)
    C, z0 = augmented_linear(b)
    P = np.eye(d + 2)[:d]
    rk = {}
    for k in (1, 2, 3):
        L = P @ np.linalg.matrix_power(C, k)
        rk[k] = quadratic_integral(C, L.T @ L, z0, T1)
    return {"kinetic": rk[1], "frobenius": float(np.sum(A**2)) * T1, "R2": rk[2], "R3": rk[3]}


def test_van_loan_reference_matches_quadrature():
    s = np.linspace(0.0, T1, 4001)
    ys = np.stack([scipy.linalg.expm(A * t) @ Y0 for t in s])
    k = scipy.integrate.simpson(np.sum((ys @ A.T) ** 2, axis=1), x=s)
    assert math.isclose(reference_penalties(np.zeros(3))["kinetic"], k, rel_tol=1e-9)


LINEAR_REGS = (
    KineticEnergy(1.0),
    JacobianFrobenius(1.0),  # exact, jacfwd
    JacobianFrobenius(1.0, mode="jacrev"),
    TaylorRK(1.0, 2),
    TaylorRK(1.0, 3),  # jet
    TaylorRK(1.0, 3, method="jvp"),
)


@pytest.mark.parametrize("time_dependent", [False, True])
def test_linear_ode_closed_forms(x64, time_dependent):
    b = B if time_dependent else np.zeros(3)
    field = Linear(jnp.asarray(A), jnp.asarray(b))

    @jax.jit  # one compile for both directions (ts and y0 are traced)
    def solve(y0, ts):
        return regularised_odeint(field, y0, ts, LINEAR_REGS, solver="dopri5",
                                  rtol=1e-11, atol=1e-12, quadrature="augmented")

    ts = jnp.array([0.0, 0.7, T1])
    ys, pen, stats = solve(jnp.asarray(Y0), ts)
    ref = reference_penalties(b)
    expected = [ref["kinetic"], ref["frobenius"], ref["frobenius"], ref["R2"], ref["R3"], ref["R3"]]
    np.testing.assert_allclose(np.asarray(pen), expected, rtol=1e-6)
    assert pen.shape == (len(LINEAR_REGS),) and int(stats.result) == 0
    C, z0 = augmented_linear(b)
    y_exact = np.stack([(scipy.linalg.expm(C * float(t)) @ z0)[:3] for t in ts])
    np.testing.assert_allclose(np.asarray(ys), y_exact, rtol=1e-8, atol=1e-10)
    # The same trajectory solved backwards from y(T1): integrals are over |dt|, so the
    # penalties are the same positive numbers.
    _, pen_back, _ = solve(ys[-1], ts[::-1])
    np.testing.assert_allclose(np.asarray(pen_back), expected, rtol=1e-6)


def test_trapezoid_quadrature_second_order_same_steps(x64):
    """The default quadrature (trapezoid on the step grid): the error in every penalty
    falls 4x when the step halves; the exact Frobenius penalty (constant integrand) is
    exact; an adaptive solve takes exactly the unregularised solve's steps; backward
    solves give the same positive penalties."""
    b = B
    field = Linear(jnp.asarray(A), jnp.asarray(b))
    ref = reference_penalties(b)
    expected = np.array([ref["kinetic"], ref["frobenius"], ref["R2"], ref["R3"]])
    regs = (KineticEnergy(1.0), JacobianFrobenius(1.0), TaylorRK(1.0, 2), TaylorRK(1.0, 3))
    ts = jnp.array([0.0, T1])

    @functools.partial(jax.jit, static_argnums=2)  # dt0 is a setting: a Python float
    def fixed(y0, ts, dt0):
        return regularised_odeint(field, y0, ts, regs, solver="rk4", dt0=dt0)[1]

    errors = []
    for n in (30, 60):
        pen = np.asarray(fixed(jnp.asarray(Y0), ts, T1 / n))
        errors.append(np.abs(pen - expected) / expected)
    assert errors[0][1] < 1e-12 and errors[1][1] < 1e-12  # constant integrand: exact
    for k in (0, 2, 3):
        assert errors[1][k] < 1e-3
        assert 3.5 < errors[0][k] / errors[1][k] < 4.5, (k, errors)

    kw = dict(solver="tsit5", rtol=1e-8, atol=1e-10)
    _, pen, stats = regularised_odeint(field, jnp.asarray(Y0), ts, regs, **kw)
    # (regularised solves run on Diffrax: compare with Diffrax's unregularised solve)
    _, plain = nodekit.odeint(field, jnp.asarray(Y0), ts, return_stats=True, engine="diffrax", **kw)
    assert int(stats.num_steps) == int(plain.num_steps) and int(stats.nfe) == int(plain.nfe)
    np.testing.assert_allclose(np.asarray(pen), expected, rtol=2e-3)
    y1 = nodekit.odeint(field, jnp.asarray(Y0), ts, **kw)[-1]
    _, pen_back, _ = regularised_odeint(field, y1, ts[::-1], regs, **kw)
    np.testing.assert_allclose(np.asarray(pen_back), expected, rtol=2e-3)


def test_kinetic_alone_is_integrated_at_the_stages(x64):
    """Kinetic energy needs only the field value the stages compute anyway, so under the
    default quadrature it is integrated there (`"stages"`): the solver's order of
    accuracy (RK4: the error falls ~16x when the step halves, not 4x), and still
    exactly the unregularised solve's steps."""
    from nodekit._regularisers import integration_of

    field = Linear(jnp.asarray(A), jnp.asarray(B))
    expected = reference_penalties(B)["kinetic"]
    regs = (KineticEnergy(1.0),)
    assert integration_of("trapezoid", regs) == "stages"
    assert integration_of("trapezoid", regs + (JacobianFrobenius(1.0),)) == "trapezoid"
    assert integration_of("augmented", regs) is None
    ts = jnp.array([0.0, T1])
    err = [abs(float(regularised_odeint(field, jnp.asarray(Y0), ts, regs, solver="rk4",
                                        dt0=T1 / n)[1][0]) / expected - 1) for n in (10, 20)]
    assert 12 < err[0] / err[1] < 20, err
    kw = dict(solver="tsit5", rtol=1e-6, atol=1e-8)
    _, pen, stats = regularised_odeint(field, jnp.asarray(Y0), ts, regs, **kw)
    # (regularised solves run on Diffrax: compare with Diffrax's unregularised solve)
    _, plain = nodekit.odeint(field, jnp.asarray(Y0), ts, return_stats=True, engine="diffrax", **kw)
    assert int(stats.num_steps) == int(plain.num_steps)
    assert float(pen[0]) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ Hutchinson


@pytest.mark.parametrize("mode", ["jacfwd", "jacrev"])
def test_hutchinson_unbiased_with_expected_variance(x64, mode):
    """Mean of ||J eps||^2 (jvp) or ||eps^T J||^2 (vjp) over many keys is ||A||_F^2
    within a few standard errors; the sample variance matches theory, and Rademacher
    noise has the smaller variance."""
    n = 20000
    field = Linear(jnp.asarray(A), jnp.zeros(3))
    y, keys = jnp.asarray(Y0), jax.random.split(jax.random.PRNGKey(0), n)
    exact = float(np.sum(A**2))
    # For jvp the quadratic form is eps^T (A^T A) eps; for vjp eps^T (A A^T) eps.
    S = A.T @ A if mode == "jacfwd" else A @ A.T
    var = {"gaussian": 2 * np.sum(S**2), "rademacher": 2 * np.sum(S**2) - 2 * np.sum(np.diag(S) ** 2)}
    for noise in ("gaussian", "rademacher"):
        reg = JacobianFrobenius(1.0, "hutchinson", noise, mode=mode)

        @jax.jit
        def draws(keys):
            def one(k):
                (eps,) = sample_noise((reg,), k, y.shape, y.dtype)
                return reg.integrand(field, 0.0, y, None, eps)

            return jax.vmap(one)(keys)

        x = np.asarray(draws(keys))
        se = x.std() / math.sqrt(n)
        assert abs(x.mean() - exact) < 4 * se, (noise, x.mean(), exact, se)
        assert abs(x.var() / var[noise] - 1) < 0.1, (noise, x.var(), var[noise])
        # variance of a mean of m draws shrinks like 1/m
        means = x.reshape(-1, 100).mean(axis=1)
        assert abs(means.var() * 100 / var[noise] - 1) < 0.35
    assert var["rademacher"] < var["gaussian"]


def test_hutchinson_penalty_through_solve_is_unbiased():
    """Integrated along a nonlinear solve: the mean over keys of the Hutchinson
    penalty matches the exact penalty (same fixed steps, so the same discretisation)."""
    field = nodekit.MLPField(2, 8, 1, key=jax.random.PRNGKey(3))
    regs = (JacobianFrobenius(1.0), JacobianFrobenius(1.0, "hutchinson", "rademacher"))
    ts, y0 = jnp.array([0.0, 1.0]), jnp.array([0.5, -1.0])
    keys = jax.random.split(jax.random.PRNGKey(1), 400)
    pen = jax.jit(jax.vmap(lambda k: regularised_odeint(
        field, y0, ts, regs, key=k, solver="rk4", dt0=0.1)[1]))(keys)
    exact, hutch = np.asarray(pen[:, 0]), np.asarray(pen[:, 1])
    assert np.ptp(exact) < 1e-6 * abs(exact[0])  # the exact one does not depend on the key
    se = hutch.std() / math.sqrt(len(hutch))
    assert abs(hutch.mean() - exact[0]) < 4 * se
    assert hutch.std() > 0


# ------------------------------------------------------------------ Taylor mode


@pytest.fixture(scope="module")
def mlp_fields():
    key = jax.random.PRNGKey(7)
    return {
        (td, act): nodekit.MLPField(3, 16, 2, activation=act, time_dependent=td, key=key)
        for td in (False, True)
        for act in ("tanh", "relu")
    }


@pytest.mark.parametrize("activation", ["tanh", "relu"])  # relu: a custom_jvp inside jet
@pytest.mark.parametrize("time_dependent", [False, True])
def test_jet_equals_nested_jvp(mlp_fields, time_dependent, activation):
    field = mlp_fields[(time_dependent, activation)]
    ys = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    ts = jnp.linspace(0.1, 0.9, 5)
    regs = (TaylorRK(1.0, 2), TaylorRK(1.0, 3), TaylorRK(1.0, 2, "jvp"), TaylorRK(1.0, 3, "jvp"))
    out = jax.jit(jax.vmap(lambda t, y: jnp.stack(
        [r.integrand(field, t, y, None, None) for r in regs])))(ts, ys)
    np.testing.assert_allclose(np.asarray(out[:, :2]), np.asarray(out[:, 2:]), rtol=2e-5, atol=1e-7)
    assert np.all(np.asarray(out) > 0)


def test_jet_penalty_gradients_equal_nested_jvp(mlp_fields):
    """Nested AD: parameter gradients of the jet R_3 and of the nested-jvp R_3 agree."""
    field = mlp_fields[(True, "tanh")]
    ys = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    ts = jnp.linspace(0.1, 0.9, 5)

    @eqx.filter_jit
    def grads(field):
        def total(field, method):
            reg = TaylorRK(1.0, 3, method)
            return jnp.sum(jax.vmap(lambda t, y: reg.integrand(field, t, y, None, None))(ts, ys))

        return [eqx.filter_grad(total)(field, m) for m in ("jet", "jvp")]

    g_jet, g_jvp = grads(field)
    assert tree_allclose(g_jet, g_jvp, rtol=1e-4, atol=1e-6)


def test_taylor_time_dependence_counts():
    """For y' = t (no y dependence): y'' = 1 and y''' = 0, only via dt/dt = 1."""
    field = lambda t, y, args: jnp.broadcast_to(t, y.shape)  # noqa: E731
    y = jnp.zeros(2)
    assert float(TaylorRK(1.0, 2).integrand(field, 0.5, y, None, None)) == pytest.approx(2.0)
    assert float(TaylorRK(1.0, 3).integrand(field, 0.5, y, None, None)) == pytest.approx(0.0)
    # y' = t^2 y-independent: y''' = 2 in each component -> ||.||^2 = 8
    sq = lambda t, y, args: jnp.broadcast_to(t**2, y.shape)  # noqa: E731
    for method in ("jet", "jvp"):
        assert float(TaylorRK(1.0, 3, method).integrand(sq, 0.5, y, None, None)) == pytest.approx(8.0)


# ------------------------------------------------------------------ shared work


def _count(jaxpr, name):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, name)
    return n


def test_field_evaluated_once_for_all_regularisers():
    """Kinetic, Hutchinson, exact Jacobian and R_2 share one evaluation of f: the
    augmented field has as many tanh as the field itself (tangents reuse them)."""
    field = nodekit.MLPField(3, 8, 2, key=jax.random.PRNGKey(0))
    regs = (KineticEnergy(1.0), JacobianFrobenius(1.0, "hutchinson"), JacobianFrobenius(1.0),
            TaylorRK(1.0, 2))
    noises = sample_noise(regs, jax.random.PRNGKey(0), (3,), jnp.float32)
    aug = augmented_field(field, regs, noises)
    y, r = jnp.ones(3), jnp.zeros(4)
    plain = jax.make_jaxpr(field)(0.0, y, None).jaxpr
    augj = jax.make_jaxpr(aug)(0.0, (y, r), None).jaxpr
    assert _count(plain, "tanh") == 2
    assert _count(augj, "tanh") == _count(plain, "tanh")
    f, g, f_plain, g_single = jax.jit(lambda y: (
        *aug(0.0, (y, r), None), field(0.0, y, None),
        jnp.stack([reg.integrand(field, 0.0, y, None, e) for reg, e in zip(regs, noises)])))(y)
    assert tree_allclose(f, f_plain) and g.shape == (4,)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_single), rtol=1e-6)


# ------------------------------------------------------------------ gradients


def _grad_problem(**solve_kwargs):
    field = nodekit.MLPField(2, 4, 1, time_dependent=True, key=jax.random.PRNGKey(11))
    field = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    regs = (KineticEnergy(0.5), JacobianFrobenius(0.3, "hutchinson", "rademacher"), TaylorRK(0.2, 2))
    y0, ts, key = jnp.array([0.5, -0.3]), jnp.array([0.0, 1.0]), jax.random.PRNGKey(2)

    def loss(flat, adjoint):
        f = eqx.combine(unravel(flat), static)
        ys, pen, _ = regularised_odeint(f, y0, ts, regs, key=key, adjoint=adjoint,
                                        **solve_kwargs)
        return jnp.sum(ys**2) + total_penalty(regs, pen)

    return flat, loss


def _directional_fd(value, flat, dirs, h=1e-5):
    return jnp.stack([(value(flat + h * d) - value(flat - h * d)) / (2 * h) for d in dirs])


def test_gradients_match_finite_differences_both_adjoints(x64):
    """d(loss)/d(params) of MSE-like loss + penalties, for `recursive` and `backsolve`,
    against central differences along random directions; the adjoints agree. (The
    penalties integrated in the ODE state, so that the tight tolerance makes the
    discrete solve the continuous one.)"""
    flat, loss = _grad_problem(solver="dopri5", rtol=1e-11, atol=1e-12, quadrature="augmented")
    dirs = jax.random.normal(jax.random.PRNGKey(0), (3, flat.size))
    value = jax.jit(loss, static_argnums=1)  # forward values do not depend on the adjoint
    fd = _directional_fd(lambda x: value(x, "recursive"), flat, dirs)
    grads = {adj: jax.jit(jax.grad(loss), static_argnums=1)(flat, adj)
             for adj in ("recursive", "backsolve")}
    for adj, g in grads.items():
        np.testing.assert_allclose(np.asarray(dirs @ g), np.asarray(fd), rtol=1e-6, atol=1e-9,
                                   err_msg=adj)
    np.testing.assert_allclose(np.asarray(grads["recursive"]), np.asarray(grads["backsolve"]),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("quadrature", ["augmented", "trapezoid"])
@pytest.mark.parametrize("adjoint", ["recursive", "backsolve"])
def test_gradients_all_regularisers_slow(x64, adjoint, quadrature):
    """Every regulariser (exact and jacrev Jacobians, jet R_3) under both adjoints and
    both quadratures (trapezoid: fixed steps, small enough that the continuous adjoint
    of `backsolve` matches the discrete penalty to 1e-5)."""
    field = nodekit.MLPField(2, 4, 1, activation="softplus", time_dependent=True,
                             key=jax.random.PRNGKey(11))
    field = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    regs = (JacobianFrobenius(0.3), JacobianFrobenius(0.3, "hutchinson", mode="jacrev"),
            TaylorRK(0.2, 3), TaylorRK(0.1, 3, "jvp"))

    def loss(flat):
        f = eqx.combine(unravel(flat), static)
        ys, pen, _ = regularised_odeint(f, jnp.array([0.5, -0.3]), jnp.array([0.0, 1.0]), regs,
                                        key=jax.random.PRNGKey(2), adjoint=adjoint,
                                        quadrature=quadrature, **solve_kwargs)
        return jnp.sum(ys**2) + total_penalty(regs, pen)

    if quadrature == "augmented":
        solve_kwargs, tol = dict(solver="dopri5", rtol=1e-11, atol=1e-12), 1e-6
    else:
        solve_kwargs = dict(solver="rk4", dt0=1 / 400)
        tol = 1e-7 if adjoint == "recursive" else 1e-5

    dirs = jax.random.normal(jax.random.PRNGKey(0), (2, flat.size))
    h = 1e-5
    values = jax.jit(jax.vmap(loss))(jnp.concatenate([flat + h * dirs, flat - h * dirs]))
    fd = (values[:2] - values[2:]) / (2 * h)
    g = jax.jit(jax.grad(loss))(flat)
    np.testing.assert_allclose(np.asarray(dirs @ g), np.asarray(fd), rtol=tol, atol=1e-9)


# ------------------------------------------------------------------ batches


def test_joint_equals_vmap_under_jit(x64):
    field = nodekit.MLPField(2, 8, 1, key=jax.random.PRNGKey(4))
    field = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field)
    regs = (KineticEnergy(1.0), JacobianFrobenius(1.0, "hutchinson", "rademacher"), TaylorRK(1.0, 2))
    y0s = jax.random.normal(jax.random.PRNGKey(5), (6, 2))
    ts, key = jnp.linspace(0.0, 1.0, 4), jax.random.PRNGKey(6)

    @eqx.filter_jit
    def solve(field, y0s, key, mode, quadrature="augmented"):
        return regularised_odeint_batch(field, y0s, ts, regs, key=key, mode=mode,
                                        solver="tsit5", rtol=1e-10, atol=1e-12,
                                        quadrature=quadrature)

    # Integrated in the state, the penalties are solver-accurate in both modes; by the
    # trapezoid rule they sit on each mode's own step grid (shared steps in `joint`).
    _, pen_tv, _ = solve(field, y0s, key, "vmap", "trapezoid")
    _, pen_tj, _ = solve(field, y0s, key, "joint", "trapezoid")
    ys_v, pen_v, st_v = solve(field, y0s, key, "vmap")
    ys_j, pen_j, st_j = solve(field, y0s, key, "joint")
    np.testing.assert_allclose(np.asarray(pen_tv), np.asarray(pen_v), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(pen_tj), np.asarray(pen_v), rtol=1e-3)
    assert ys_v.shape == ys_j.shape == (6, 4, 2) and pen_v.shape == (3,)
    assert st_v.nfe.shape == (6,) and st_j.nfe.shape == ()
    np.testing.assert_allclose(np.asarray(ys_v), np.asarray(ys_j), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.asarray(pen_v), np.asarray(pen_j), rtol=1e-7)
    noises = sample_noise(regs, key, y0s.shape, y0s.dtype)  # one row per sample
    assert noises[0] is None and noises[2] is None and noises[1].shape == (6, 2)


def test_no_regularisers_and_batch_mode_argument():
    """No regularisers: a plain solve with empty penalties. `batch_mode` on
    `regularised_odeint` hands a batch to `regularised_odeint_batch`."""
    field = lambda t, y, args: -y  # noqa: E731
    ys, pen, stats = regularised_odeint(field, jnp.ones((3, 2)), jnp.array([0.0, 1.0]), (),
                                        batch_mode="joint")
    assert ys.shape == (3, 2, 2) and pen.shape == (0,)
    np.testing.assert_allclose(np.asarray(ys[:, -1]), math.exp(-1), rtol=1e-5)
    assert float(total_penalty((), pen)) == 0.0


# ------------------------------------------------------------------ STEER


def test_steer_end_time_bounds_and_reproducible():
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    draws = np.asarray(jax.vmap(lambda k: steer_end_time(k, 1.0, 0.4, t0=0.0))(keys))
    assert draws.min() >= 0.6 and draws.max() <= 1.4
    assert draws.min() < 0.62 and draws.max() > 1.38  # it covers the interval
    assert abs(draws.mean() - 1.0) < 4 * 0.8 / math.sqrt(12 * 2000)
    k = jax.random.PRNGKey(42)
    assert float(steer_end_time(k, 1.0, 0.4)) == float(steer_end_time(k, 1.0, 0.4))
    assert float(steer_end_time(k, 2.0, 0.0, t0=0.0)) == 2.0
    ts = jnp.linspace(0.0, 1.0, 2)
    ts = ts.at[-1].set(steer_end_time(k, ts[-1], 0.5, t0=ts[0]))  # the documented use
    assert 0.5 <= float(ts[-1]) <= 1.5
    jitted = jax.jit(lambda k, b: steer_end_time(k, 1.0, b))(k, 0.4)  # traced b
    assert float(jitted) == pytest.approx(float(steer_end_time(k, 1.0, 0.4)))


@pytest.mark.parametrize("b, t0", [(-0.1, None), (float("nan"), None), (1.0, 0.0), (2.0, 0.0)])
def test_steer_rejects_bad_width(b, t0):
    with pytest.raises(nodekit.InputError, match="STEER"):
        steer_end_time(jax.random.PRNGKey(0), 1.0, b, t0=t0)


# ------------------------------------------------------------------ API and errors


def test_sample_noise_reproducible_per_key():
    regs = (KineticEnergy(1.0), JacobianFrobenius(1.0, "hutchinson"),
            JacobianFrobenius(1.0, "hutchinson", "rademacher"))
    k1, k2 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    a, b, c = sample_noise(regs, k1, (4, 3), jnp.float32), sample_noise(regs, k1, (4, 3)), \
        sample_noise(regs, k2, (4, 3))
    assert a[0] is None and a[1].shape == (4, 3) and a[1].dtype == jnp.float32
    assert tree_allclose(a, b) and not np.allclose(a[1], c[1])
    assert set(np.unique(np.asarray(a[2]))) == {-1.0, 1.0}
    assert not np.allclose(a[1], a[2])  # each regulariser draws its own noise


def test_registry_and_properties():
    assert REGULARISERS == {"kinetic": KineticEnergy, "jacobian": JacobianFrobenius,
                            "taylor": TaylorRK}
    assert all(issubclass(c, AbstractRegulariser) for c in REGULARISERS.values())
    assert not KineticEnergy(1.0).needs_noise and KineticEnergy(1.0).noise_distribution is None
    assert not JacobianFrobenius(1.0).needs_noise
    hutch = JacobianFrobenius(1.0, "hutchinson", "rademacher")
    assert hutch.needs_noise and hutch.noise_distribution == "rademacher"
    assert not TaylorRK(1.0).needs_noise
    regs = (KineticEnergy(2.0), TaylorRK(0.5))
    assert float(total_penalty(regs, jnp.array([3.0, 4.0]))) == 8.0
    # regularisers are static: no array leaves, hashable, usable as jit arguments
    assert jax.tree_util.tree_leaves(regs) == []
    hash(regs)


def test_trapezoid_gradients_match_finite_differences(x64):
    """The default quadrature differentiated through fixed steps (`recursive`) is the
    exact gradient of the discrete penalty, so it matches central differences tightly."""
    flat, loss = _grad_problem(solver="rk4", dt0=0.05)
    dirs = jax.random.normal(jax.random.PRNGKey(1), (3, flat.size))
    fd = _directional_fd(jax.jit(lambda x: loss(x, "recursive")), flat, dirs)
    g = jax.jit(jax.grad(loss), static_argnums=1)(flat, "recursive")
    np.testing.assert_allclose(np.asarray(dirs @ g), np.asarray(fd), rtol=1e-7, atol=1e-10)


def test_custom_regulariser_in_solve():
    class Speed(AbstractRegulariser):
        weight: float = eqx.field(static=True)

        @property
        def noise_distribution(self):
            return None

        def integrand(self, func, t, y, args, eps):
            return jnp.sum(jnp.abs(func(t, y, args)))

    decay = lambda t, y, args: -y  # noqa: E731
    exact = [1 - math.exp(-1), (1 - math.exp(-2)) / 2]
    # trapezoid: second order on tsit5's few large steps at the default tolerance
    for quadrature, rtol in (("augmented", 1e-5), ("trapezoid", 2e-2)):
        _, pen, _ = regularised_odeint(decay, jnp.array([1.0]), jnp.array([0.0, 1.0]),
                                       (Speed(1.0), KineticEnergy(1.0)), quadrature=quadrature)
        np.testing.assert_allclose(np.asarray(pen), exact, rtol=rtol, err_msg=quadrature)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KineticEnergy(-1.0), "weight must be a finite number >= 0"),
        (lambda: KineticEnergy(float("inf")), "weight"),
        (lambda: KineticEnergy(float("nan")), "weight"),
        (lambda: KineticEnergy(True), "weight"),
        (lambda: KineticEnergy("0.1"), "weight"),
        (lambda: TaylorRK(1.0, order=1), "order must be an integer >= 2"),
        (lambda: TaylorRK(1.0, order=2.5), "order"),
        (lambda: TaylorRK(1.0, order=True), "order"),
        (lambda: TaylorRK(1.0, method="jets"), "did you mean 'jet'"),
        (lambda: JacobianFrobenius(1.0, estimator="hutchinsn"), "did you mean 'hutchinson'"),
        (lambda: JacobianFrobenius(1.0, noise="gauss"), "did you mean 'gaussian'"),
        (lambda: JacobianFrobenius(1.0, mode="jacfw"), "did you mean 'jacfwd'"),
    ],
)
def test_bad_settings_raise_input_error(make, match):
    with pytest.raises(nodekit.InputError, match=match):
        make()


def test_bad_calls_raise_input_error():
    field = lambda t, y, args: -y  # noqa: E731
    ts, y0 = jnp.array([0.0, 1.0]), jnp.ones(2)
    hutch = (JacobianFrobenius(1.0, "hutchinson"),)
    with pytest.raises(nodekit.InputError, match="needs a PRNG key"):
        regularised_odeint(field, y0, ts, hutch)
    with pytest.raises(nodekit.InputError, match="1-D array"):
        regularised_odeint(field, jnp.ones((2, 2)), ts, (KineticEnergy(1.0),))
    with pytest.raises(nodekit.InputError, match="shape \\(B, d\\)"):
        regularised_odeint_batch(field, y0, ts, (KineticEnergy(1.0),))
    with pytest.raises(nodekit.InputError, match="did you mean 'joint'"):
        regularised_odeint_batch(field, jnp.ones((2, 2)), ts, (KineticEnergy(1.0),), mode="jont")
    with pytest.raises(nodekit.InputError, match="return_stats"):
        regularised_odeint(field, y0, ts, (KineticEnergy(1.0),), return_stats=True)
    with pytest.raises(nodekit.InputError, match="tuple of nodekit regularisers"):
        regularised_odeint(field, y0, ts, ("kinetic",))
    with pytest.raises(nodekit.InputError, match="shape"):
        total_penalty((KineticEnergy(1.0),), jnp.zeros(2))
    with pytest.raises(nodekit.InputError, match="needs gaussian noise"):
        augmented_field(field, hutch, (None,))
    with pytest.raises(nodekit.InputError, match="noise entries"):
        augmented_field(field, hutch, ())
