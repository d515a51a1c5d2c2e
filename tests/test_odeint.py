"""odeint against analytic solutions, gradients, vmap/jit, statistics and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import nodekit

from .helpers import central_fd, tree_allclose

A = np.array([[-0.3, 1.2], [-0.8, -0.2]])
OMEGA = 2.0
T1 = 1.5
TS = np.linspace(0.0, T1, 7)


def problems(t, y, args):
    """Four analytic problems solved at once as one pytree state."""
    return {
        "decay": -0.7 * y["decay"],
        "linear": jnp.asarray(A, y["linear"].dtype) @ y["linear"],
        "harmonic": jnp.stack([y["harmonic"][1], -(OMEGA**2) * y["harmonic"][0]]),
        "timedep": jnp.cos(t) * y["timedep"] + t,  # y' = cos(t) y + t, solved below by quadrature
    }


Y0 = {"decay": np.array([1.5]), "linear": np.array([1.0, -0.5]),
      "harmonic": np.array([1.0, 0.0]), "timedep": np.array([0.3])}


def exact():
    ts = TS
    out = {
        "decay": 1.5 * np.exp(-0.7 * ts)[:, None],
        "linear": np.stack([scipy.linalg.expm(A * t) @ Y0["linear"] for t in ts]),
        "harmonic": np.stack([np.cos(OMEGA * ts), -OMEGA * np.sin(OMEGA * ts)], -1),
    }
    # y(t) = e^{sin t} (y0 + \int_0^t s e^{-sin s} ds), integrated with fine Simpson.
    td = []
    for t in ts:
        s = np.linspace(0, t, 20001)
        integral = scipy.integrate.simpson(s * np.exp(-np.sin(s)), x=s) if t > 0 else 0.0
        td.append(np.exp(np.sin(t)) * (0.3 + integral))
    out["timedep"] = np.array(td)[:, None]
    return out


# (solver, dt0 or None, tolerance on the max error) — tolerances match each order.
SOLVER_CASES = (
    ("euler", 1e-3, 5e-3),
    ("midpoint", 1e-2, 5e-4),
    ("heun", 1e-2, 5e-4),
    ("ralston", 1e-2, 5e-4),
    ("rk4", 2e-2, 5e-7),
    ("bosh3", None, 1e-6),
    ("dopri5", None, 1e-7),
    ("tsit5", None, 1e-7),
    ("dopri8", None, 1e-7),
    ("kvaerno5", None, 1e-6),
)


@pytest.fixture(scope="module")
def reference():
    return exact()


@pytest.mark.parametrize("solver,dt0,tol", SOLVER_CASES)
def test_solvers_match_analytic(solver, dt0, tol, reference):
    with jax.enable_x64(True):
        y0 = jax.tree_util.tree_map(jnp.asarray, Y0)
        ys, stats = nodekit.odeint(problems, y0, TS, solver=solver, dt0=dt0, rtol=1e-9,
                                   atol=1e-11, return_stats=True, max_steps=20000)
        for name, ref in reference.items():
            err = np.max(np.abs(np.asarray(ys[name]) - ref))
            assert err < tol, (solver, name, err)
        assert int(stats.result) == 0
        # statistics are consistent
        assert int(stats.num_steps) == int(stats.num_accepted) + int(stats.num_rejected)
        assert int(stats.nfe) >= int(stats.num_steps) > 0


def test_fixed_step_order_of_convergence():
    """Halving the step of rk4 divides the error by ~2**4, of euler by ~2."""
    with jax.enable_x64(True):
        f = lambda t, y, a: -0.7 * y
        y0 = jnp.array([1.0])
        ref = np.exp(-0.7 * TS[-1])
        for solver, order in (("euler", 1), ("rk4", 4)):
            e1 = abs(float(nodekit.odeint(f, y0, TS, solver=solver, dt0=0.05)[-1, 0]) - ref)
            e2 = abs(float(nodekit.odeint(f, y0, TS, solver=solver, dt0=0.025)[-1, 0]) - ref)
            assert 0.7 * 2**order < e1 / e2 < 1.4 * 2**order, (solver, e1 / e2)


class Decay(eqx.Module):
    k: jax.Array

    def __call__(self, t, y, args):
        return -self.k * y * (1 + 0.3 * jnp.sin(y)) + jnp.tanh(self.k[::-1]) * t


def _loss(adjoint):
    def loss(k):
        ys = nodekit.odeint(Decay(k), jnp.array([1.0, -0.4]), jnp.linspace(0, 1, 5),
                            solver="dopri5", rtol=1e-10, atol=1e-12, adjoint=adjoint)
        return jnp.sum(ys**2)
    return loss


@pytest.mark.parametrize("adjoint", ["recursive", "backsolve"])
def test_gradients_match_finite_differences(adjoint):
    with jax.enable_x64(True):
        k = jnp.array([0.8, 1.3])
        g = jax.grad(_loss(adjoint))(k)
        fd = central_fd(_loss(adjoint), k)
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-7)


def test_adjoints_agree():
    with jax.enable_x64(True):
        k = jnp.array([0.5, 2.0])
        g1 = jax.grad(_loss("recursive"))(k)
        g2 = jax.grad(_loss("backsolve"))(k)
        assert tree_allclose(g1, g2, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def field():
    return nodekit.MLPField(3, 16, 1, key=jax.random.PRNGKey(0))


def test_vmap_equals_loop_and_jit_equals_eager(field):
    ts = jnp.linspace(0, 1, 4)
    y0s = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
    solve = lambda y0: nodekit.odeint(field, y0, ts, solver="tsit5")
    batched = jax.vmap(solve)(y0s)
    looped = jnp.stack([solve(y) for y in y0s])
    assert tree_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    jitted = eqx.filter_jit(solve)(y0s[0])
    assert tree_allclose(jitted, looped[0], rtol=1e-5, atol=1e-6)


def test_nfe_counts_every_evaluation_for_fixed_steps(field):
    count = []

    def counted(t, y, args):
        jax.debug.callback(lambda: count.append(1))
        return field(t, y, args)

    for solver, per_step in (("rk4", 4), ("euler", 1), ("midpoint", 2)):
        count.clear()
        ys, stats = nodekit.odeint(counted, jnp.ones(3), jnp.linspace(0, 1, 3), solver=solver,
                                   dt0=0.1, return_stats=True, check=False)
        jax.effects_barrier()
        assert int(stats.nfe) == len(count) == per_step * int(stats.num_steps)


@pytest.mark.parametrize("engine,start", [("diffrax", 3), ("nodekit", 2)])
def test_nfe_adaptive_consistent_with_steps(field, engine, start):
    # tsit5: 6 new evaluations per attempted step (FSAL); Diffrax spends 1 to start and
    # 2 to pick dt0, nodekit's engine reuses the starting evaluation for dt0 (2 in all).
    count = []

    def counted(t, y, args):
        jax.debug.callback(lambda: count.append(1))
        return field(t, y, args)

    ys, stats = nodekit.odeint(counted, jnp.ones(3), jnp.linspace(0, 2, 3), solver="tsit5",
                               rtol=1e-8, atol=1e-8, return_stats=True, engine=engine,
                               check=False)
    jax.effects_barrier()
    assert int(stats.nfe) == start + 6 * int(stats.num_steps)
    if engine == "nodekit":  # exact (Diffrax's solver loop evaluates the field more)
        assert len(count) == int(stats.nfe)
    assert int(stats.num_accepted) > 0


def test_pytree_state_and_backward_time():
    y0 = (jnp.array(1.0), {"b": jnp.ones(2)})
    ys = nodekit.odeint(lambda t, y, a: jax.tree_util.tree_map(lambda v: -v, y), y0,
                        jnp.array([1.0, 0.5, 0.0]), solver="dopri5")
    np.testing.assert_allclose(np.asarray(ys[0]), np.exp([0.0, 0.5, 1.0]), rtol=1e-4)
    assert ys[1]["b"].shape == (3, 2)


def test_shape_mismatch_refused_before_compile():
    class Wrong(eqx.Module):
        def __call__(self, t, y, args):
            return jnp.zeros(3)

    with pytest.raises(nodekit.InputError, match=r"Wrong returns \(3,\) float32 but the state y0 is \(2,\) float32"):
        nodekit.odeint(Wrong(), jnp.ones(2), jnp.linspace(0, 1, 3))
    with pytest.raises(nodekit.InputError, match="float64"):
        with jax.enable_x64(True):
            nodekit.odeint(lambda t, y, a: y.astype(jnp.float64), jnp.ones(2, jnp.float32),
                           jnp.linspace(0, 1, 3))


def test_bad_arguments():
    f = lambda t, y, a: -y
    y0, ts = jnp.ones(1), jnp.linspace(0, 1, 3)
    with pytest.raises(nodekit.InputError, match="unknown solver 'tsit'; did you mean 'tsit5'"):
        nodekit.odeint(f, y0, ts, solver="tsit")
    with pytest.raises(nodekit.InputError, match="unknown adjoint"):
        nodekit.odeint(f, y0, ts, adjoint="adjoint")
    with pytest.raises(nodekit.InputError, match="needs a fixed step size"):
        nodekit.odeint(f, y0, ts, solver="rk4")
    with pytest.raises(nodekit.InputError, match="rtol and atol must be positive"):
        nodekit.odeint(f, y0, ts, rtol=0.0)
    with pytest.raises(nodekit.InputError, match="strictly increasing"):
        nodekit.odeint(f, y0, jnp.array([0.0, 1.0, 0.5]))


def test_max_steps_message_suggests_fixes():
    stiff = lambda t, y, a: -1e5 * (y - jnp.cos(t))
    with pytest.raises(nodekit.SolverError, match="max_steps=16.*stiff solver.*larger max_steps"):
        nodekit.odeint(stiff, jnp.ones(1), jnp.linspace(0, 1, 3), max_steps=16)
    # inside jit the same words come back through Equinox's runtime error
    with pytest.raises(Exception, match="max_steps=16"):
        eqx.filter_jit(lambda y: nodekit.odeint(stiff, y, jnp.linspace(0, 1, 3), max_steps=16))(jnp.ones(1))
    # and with throw=False the failure is a result code, not an exception
    _, stats = nodekit.odeint(stiff, jnp.ones(1), jnp.linspace(0, 1, 3), max_steps=16,
                              throw=False, return_stats=True)
    assert nodekit._odeint.result_name(int(stats.result)) == "max_steps_reached"
    # the stiff solver the message suggests (in float64, as it says) does solve it
    with jax.enable_x64(True):
        ys, stats = nodekit.odeint(stiff, jnp.ones(1), jnp.linspace(0, 1, 3), solver="kvaerno5",
                                   rtol=1e-5, atol=1e-7, return_stats=True)
    assert int(stats.num_steps) < 50
    assert abs(float(ys[-1, 0]) - np.cos(1.0)) < 1e-3


def test_backsolve_differentiates_closed_over_parameters():
    """A closure over parameters (e.g. a vmapped field) works with the continuous adjoint."""
    with jax.enable_x64(True):
        y0s = jnp.array([[1.0, 0.5], [-0.3, 0.2]])

        def loss(k, adjoint):
            field = lambda t, y, a: jax.vmap(Decay(k), (None, 0, None))(t, y, a)
            ys = nodekit.odeint(field, y0s, jnp.linspace(0, 1, 3), solver="dopri5",
                                rtol=1e-10, atol=1e-12, adjoint=adjoint)
            return jnp.sum(ys**2)

        k = jnp.array([0.8, 1.3])
        g_back = jax.grad(loss)(k, "backsolve")
        g_rec = jax.grad(loss)(k, "recursive")
        assert tree_allclose(g_back, g_rec, rtol=1e-6, atol=1e-9)


@pytest.mark.slow  # three Diffrax backward compiles (~20 s on 2 cores)
def test_checkpoint_choices_give_the_same_gradients(field):
    """`checkpoints` changes memory and recomputation, never the result: 'auto' (every
    step stored), None (Diffrax's binomial scheme) and a small count agree."""
    y0, ts = jnp.array([1.0, -0.5, 0.25]), jnp.linspace(0.0, 2.0, 5)

    def loss(f, checkpoints):
        return jnp.sum(nodekit.odeint(f, y0, ts, solver="tsit5", rtol=1e-6, atol=1e-8,
                                      checkpoints=checkpoints, engine="diffrax") ** 2)

    grads = [eqx.filter_grad(loss)(field, c) for c in ("auto", None, 3)]
    assert tree_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert tree_allclose(grads[0], grads[2], rtol=1e-5, atol=1e-7)


def test_checkpoints_must_be_auto_none_or_positive(field):
    y0, ts = jnp.array([1.0, -0.5, 0.25]), jnp.linspace(0.0, 2.0, 5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(nodekit.InputError, match="checkpoints"):
            nodekit.odeint(field, y0, ts, checkpoints=bad, engine="diffrax")


def test_auto_checkpoints_respects_the_memory_budget():
    from nodekit._odeint import SOLVERS, auto_checkpoints

    info = SOLVERS["dopri5"]
    small, big = jnp.zeros(2), jnp.zeros(100_000)
    assert auto_checkpoints(small, info, 4096) == 4096  # 2 floats x 4096 steps fit
    assert auto_checkpoints(big, info, 4096) is None  # 400 kB per state: Diffrax's default
    # under vmap the whole batch counts: 2 floats x 10^5 samples no longer fit
    sizes = jax.vmap(lambda y: jnp.asarray(auto_checkpoints(y, info, 4096) or 0))(
        jnp.zeros((100_000, 2)))
    assert int(sizes[0]) == 0
