"""odeint on both integrators (nodekit's engine and Diffrax): analytic solutions,
gradients against finite differences and against each other, both adjoints, pytrees,
reversed time, vmap/jit, exact NFE, the edges (empty states, mixed dtypes, repeated
times, failed backward solves), dense output and events, the solver settings, and the
message each common mistake gets."""

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import nodekit
from nodekit._odeint import result_name

from .helpers import central_fd, tree_allclose

ENGINES = ["nodekit", "diffrax"]

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


def exact(ts=TS):
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


# (solver, dt0 or None, tolerance on the max error) — tolerances match each order. On
# Diffrax (every solver); the engine's two solvers are covered, on both integrators, by
# test_analytic_pytree_forwards_and_backwards.
SOLVER_CASES = [
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
]


@pytest.fixture(scope="module")
def reference():
    return exact()


@pytest.mark.parametrize("solver,dt0,tol", SOLVER_CASES)
def test_solvers_match_analytic(solver, dt0, tol, reference):
    """A pytree of four analytic problems (decay, a linear system, an oscillator, a
    time-dependent linear ODE) against their exact solutions."""
    with jax.enable_x64(True):
        y0 = jax.tree_util.tree_map(jnp.asarray, Y0)
        ys, stats = nodekit.odeint(problems, y0, TS, solver=solver, dt0=dt0, rtol=1e-9,
                                   atol=1e-11, return_stats=True, max_steps=20000,
                                   engine="diffrax")
        assert stats.integrator == "diffrax"
        for name, ref in reference.items():
            err = np.max(np.abs(np.asarray(ys[name]) - ref))
            assert err < tol, (solver, name, err)
        assert int(stats.result) == 0
        assert int(stats.num_steps) == int(stats.num_accepted) + int(stats.num_rejected)
        assert int(stats.nfe) >= int(stats.num_steps) > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_analytic_pytree_forwards_and_backwards(engine, reference):
    """The pytree of analytic problems on each integrator, forwards from y0 and backwards
    from the exact end state (the trajectory, reversed). (tsit5; dopri5 on the engine is
    checked against a closed form in tests/test_engine.py.)"""
    with jax.enable_x64(True):
        kw = dict(solver="tsit5", rtol=1e-10, atol=1e-12, engine=engine, return_stats=True)
        y0 = jax.tree_util.tree_map(jnp.asarray, Y0)
        end = jax.tree_util.tree_map(lambda r: jnp.asarray(r[-1]), reference)
        ys, stats = nodekit.odeint(problems, y0, TS, **kw)
        back, _ = nodekit.odeint(problems, end, TS[::-1], **kw)
        assert stats.integrator == engine and int(stats.result) == 0
        for name, ref in reference.items():
            np.testing.assert_allclose(np.asarray(ys[name]), ref, atol=1e-8)
            np.testing.assert_allclose(np.asarray(back[name]), ref[::-1], atol=1e-8)


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


# =================================================================== gradients

_W = np.array([[0.2, -0.7], [0.5, 0.1]])
_X = dict(a=1.3, y0=np.array([0.4, -0.9]))
TS_FORWARD, TS_BACKWARD = np.array([0.1, 0.7, 0.9, 1.5]), np.array([2.0, 1.2, 1.2, 0.3])


@functools.lru_cache(maxsize=None)
def _gradients(engine):
    """Value and gradients with respect to a closed-over weight, `args`, `y0` and `ts`
    (backwards with a repeated time), for both adjoints, forwards and backwards, from one
    compiled function per integrator; and central finite differences of the recursive
    adjoint's value (float64, tight tolerance). Cached: the tests below share it."""
    with jax.enable_x64(True):
        def loss(w, a, y0, ts, adjoint):
            f = lambda t, y, args: jnp.tanh(y @ w.T) * args + 0.1 * jnp.sin(t)  # noqa: E731
            ys = nodekit.odeint(f, y0, ts, solver="tsit5", rtol=1e-10, atol=1e-12, args=a,
                                adjoint=adjoint, engine=engine, max_steps=2000)
            return jnp.sum(jnp.sin(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape))

        @jax.jit
        def both(w, a, y0, ts):
            return {adj: jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(w, a, y0, ts, adj)
                    for adj in ("recursive", "backsolve")}

        out = {}
        for label, ts in (("forward", TS_FORWARD), ("backward", TS_BACKWARD)):
            x = [jnp.asarray(_W), jnp.asarray(_X["a"]), jnp.asarray(_X["y0"]), jnp.asarray(ts)]
            res = both(*x)
            out[label] = {adj: jax.tree_util.tree_map(np.asarray, g[1]) for adj, g in res.items()}
            if label == "forward":
                fd = []
                for i in range(4):
                    def along(v, i=i):
                        return both(*x[:i], v, *x[i + 1:])["recursive"][0]
                    fd.append(central_fd(along, x[i]))
                out["fd"] = fd
        return out


@pytest.mark.parametrize("engine", ENGINES)
def test_gradients_match_finite_differences_both_adjoints(engine):
    """The recursive adjoint's gradients (closed-over weights, args, y0, ts) equal
    central differences; the continuous adjoint's equal those, forwards and backwards
    in time, including the repeated time."""
    g = _gradients(engine)
    for ad, fd in zip(g["forward"]["recursive"], g["fd"]):
        np.testing.assert_allclose(ad, fd, rtol=1e-5, atol=1e-6)
    for label in ("forward", "backward"):
        for b, r in zip(g[label]["backsolve"], g[label]["recursive"]):
            np.testing.assert_allclose(b, r, rtol=1e-6, atol=1e-8)


def test_engine_gradients_equal_diffrax():
    """The same losses differentiated on each integrator: equal gradients (recursive:
    both the exact gradient of solves equal to the tolerance; backsolve: the continuous
    adjoint, to the tolerance)."""
    engine, diffrax = _gradients("nodekit"), _gradients("diffrax")
    for label in ("forward", "backward"):
        for adjoint in ("recursive", "backsolve"):
            for a, b in zip(engine[label][adjoint], diffrax[label][adjoint]):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_backward_solve_is_never_a_silent_gradient(engine):
    """A forcing far below the tolerance in y but fast in the parameter's adjoint: the
    forward solve takes a few steps, the backward (adjoint) solve runs out of max_steps.
    throw=True raises naming the backward solve; throw=False gives NaN gradients."""
    f = lambda t, y, p: -y + 1e-8 * jnp.sin(p * 1e6 * t)  # noqa: E731
    kw = dict(rtol=1e-6, atol=1e-6, max_steps=32, adjoint="backsolve", engine=engine)
    ts, y0 = jnp.array([0.0, 1.0]), jnp.ones(1)

    def loss(p, throw):
        ys, st = nodekit.odeint(f, y0, ts, args=p, throw=throw, return_stats=True, **kw)
        return jnp.sum(ys[-1]), st

    (_, st), g = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(1.0), False)
    assert int(st.result) == 0  # the forward solve succeeded
    assert np.isnan(float(g))
    if engine == "diffrax":  # (the error is raised by the same code after either backward solve)
        return
    with pytest.raises(Exception, match="backward .adjoint. solve of adjoint='backsolve' hit "
                                        "max_steps=32"):
        jax.block_until_ready(jax.grad(lambda p: loss(p, True)[0])(jnp.asarray(1.0)))


# =================================================================== transforms and NFE


@pytest.fixture(scope="module")
def field():
    return nodekit.MLPField(3, 16, 1, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("engine", ENGINES)
def test_vmap_equals_loop_and_jit_equals_eager(field, engine):
    ts = jnp.linspace(0, 1, 4)
    y0s = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
    solve = jax.jit(lambda y0: nodekit.odeint(field, y0, ts, engine=engine))
    batched = jax.vmap(solve)(y0s)
    looped = jnp.stack([solve(y) for y in y0s])
    assert tree_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    if engine == "nodekit":  # (an eager Diffrax solve is jitted inside Diffrax anyway)
        eager = nodekit.odeint(field, y0s[0], ts, engine=engine)
        assert tree_allclose(eager, looped[0], rtol=1e-5, atol=1e-6)


def _counted(field):
    count = []

    def counted(t, y, args):
        jax.debug.callback(lambda: count.append(1))
        return field(t, y, args)

    return counted, count


@pytest.mark.parametrize("engine", ENGINES)
def test_nfe_is_exact(field, engine):
    """`stats.nfe` equals the field evaluations counted at run time. Adaptive tsit5 (6
    new evaluations a step, FSAL): Diffrax 0.7.2 evaluates once to start (its first step
    is 0.01, chosen without evaluations); the engine once more, for Hairer's first step."""
    counted, count = _counted(field)
    ys, stats = nodekit.odeint(counted, jnp.ones(3), jnp.linspace(0, 2, 3), solver="tsit5",
                               rtol=1e-6, atol=1e-8, return_stats=True, engine=engine,
                               check=False)
    jax.effects_barrier()
    start = {"nodekit": 2, "diffrax": 1}[engine]
    assert int(stats.nfe) == start + 6 * int(stats.num_steps) == len(count)
    assert int(stats.num_accepted) > 0


def test_nfe_counts_every_evaluation_for_fixed_steps(field):
    counted, count = _counted(field)
    for solver, per_step in (("rk4", 4), ("euler", 1)):
        count.clear()
        ys, stats = nodekit.odeint(counted, jnp.ones(3), jnp.linspace(0, 1, 3), solver=solver,
                                   dt0=0.1, return_stats=True, check=False)
        jax.effects_barrier()
        assert int(stats.nfe) == len(count) == per_step * int(stats.num_steps)


# =================================================================== edges, same on both


@pytest.mark.parametrize("engine", ENGINES)
def test_edges_empty_state_mixed_dtypes_repeated_times(engine):
    f = lambda t, y, a: -y  # noqa: E731
    # an empty state is an empty trajectory, not a failure
    ys, st = nodekit.odeint(f, jnp.zeros((0,)), jnp.linspace(0, 1, 3), engine=engine,
                            return_stats=True)
    assert ys.shape == (3, 0) and int(st.result) == 0 and int(st.nfe) == 0
    # times equal to t0 (and t0 == t1) return y0; repeats give the same state; eager
    # and under jit alike (one rule); times that go both ways are refused: eagerly with
    # the first offending time, under jit as a result code
    y0 = jnp.array([1.0, 2.0])
    run = jax.jit(lambda ts: nodekit.odeint(f, y0, ts, engine=engine, throw=False,
                                            return_stats=True))
    e = list(np.exp(-1.0) * np.asarray(y0))
    for ts, expect in (([0.5] * 4, [[1, 2]] * 4), ([0.0, 0.0, 1.0, 1.0], [[1, 2]] * 2 + [e] * 2)):
        eager = nodekit.odeint(f, y0, jnp.array(ts), engine=engine)
        traced, st = run(jnp.array(ts))
        assert int(st.result) == 0
        for ys in (eager, traced):
            np.testing.assert_allclose(np.asarray(ys), expect, rtol=1e-5)
    with pytest.raises(nodekit.InputError, match=r"ts must be monotonic.*ts\[2\] = 0.5"):
        nodekit.odeint(f, y0, jnp.array([0.0, 1.0, 0.5, 1.0]), engine=engine)
    assert result_name(int(run(jnp.array([0.0, 1.0, 0.5, 1.0]))[1].result)) == "unordered_times"
    # the state's dtype decides: a float32 state with float64 times solves in float32,
    # as an all-float32 call does
    with jax.enable_x64(True):
        ts64 = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float64)
        mixed = nodekit.odeint(f, y0, ts64, engine=engine)
    assert mixed.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(eager))
    # half precision cannot resolve the step-size control: refused with the fix
    for half in (jnp.float16, jnp.bfloat16):
        with pytest.raises(nodekit.InputError, match="half precision.*float32"):
            nodekit.odeint(f, y0.astype(half), jnp.linspace(0, 1, 3), engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_solver_failures_say_where_and_what_to_try(engine):
    stiff = lambda t, y, a: -1e5 * (y - jnp.cos(t))  # noqa: E731
    ts = jnp.linspace(0, 1, 3)
    with pytest.raises(nodekit.SolverError,
                       match=r"max_steps=16.*stopped at t=\S+ of \[0, 1\].*stiff solver.*max_steps"):
        nodekit.odeint(stiff, jnp.ones(1), ts, max_steps=16, engine=engine)
    ys, stats = nodekit.odeint(stiff, jnp.ones(1), ts, max_steps=16, throw=False,
                               return_stats=True, engine=engine)
    assert result_name(int(stats.result)) == "max_steps_reached"
    assert 0.0 < float(stats.t_reached) < 0.1
    assert float(ys[0, 0]) == 1.0 and np.all(np.isinf(np.asarray(ys[1:])))  # not reached
    # a finite-time blow-up (y' = y**2 from 1 explodes at t = 1) in a plain solve
    with pytest.raises(nodekit.SolverError, match=r"stopped at t=(0.99|1) .*blow up in finite "
                                                  r"time.*jax_debug_nans"):
        nodekit.odeint(lambda t, y, a: y**2, jnp.ones(1), jnp.array([0.0, 2.0]), engine=engine)
    if engine == "diffrax":  # (the rest is the same code after the solve: once is enough)
        return
    # inside jit the same advice comes back through Equinox's runtime error
    with pytest.raises(Exception, match="max_steps=16"):
        jax.block_until_ready(jax.jit(lambda y: nodekit.odeint(stiff, y, ts, max_steps=16,
                                                               engine=engine))(jnp.ones(1)))
    # a field that turns NaN (beyond t = 0.5): the state turns non-finite there; the
    # message says where, and how to find the NaN (on Diffrax, which rejects such steps
    # until max_steps, the max_steps message says the same)
    with pytest.raises(nodekit.SolverError, match=r"t=0.5 .*jax_debug_nans"):
        nodekit.odeint(lambda t, y, a: y * jnp.log(0.5 - t), jnp.ones(1), jnp.array([0.0, 1.0]),
                       engine=engine, max_steps=512)


def test_stiff_solver_the_message_suggests_solves_it():
    """kvaerno5 (in float64, as the message says) solves the stiff problem, also with a
    fixed step: its root finder then takes rtol and atol (Diffrax alone would ask for
    tolerances no nodekit argument sets); the adaptive form is in SOLVER_CASES."""
    stiff = lambda t, y, a: -1e5 * (y - jnp.cos(t))  # noqa: E731
    with jax.enable_x64(True):
        ys, stats = nodekit.odeint(stiff, jnp.ones(1), jnp.linspace(0, 1, 3), solver="kvaerno5",
                                   dt0=0.05, rtol=1e-5, atol=1e-7, return_stats=True)
    assert int(stats.num_steps) == 20 and stats.integrator == "diffrax"
    assert abs(float(ys[-1, 0]) - np.cos(1.0)) < 1e-3


def test_failure_wording_speaks_the_callers_language():
    from nodekit._errors import solver_failure_message

    kw = dict(solver="tsit5", rtol=1e-6, atol=1e-8, max_steps=16, t_reached=0.25,
              t_span=(0.0, 1.0))
    python = solver_failure_message("max_steps_reached", **kw)
    config = solver_failure_message("max_steps_reached", language="config", **kw)
    assert "rtol=1e-4" in python and "solver='kvaerno5'" in python and "t=0.25" in python
    assert "solver.rtol: 1e-4" in config and "solver.name: kvaerno5" in config
    assert "precision: float64" in config and "regularisation.kinetic" in config
    assert "rtol=" not in config
    assert "learning rate" in solver_failure_message("nonfinite", language="config")
    assert "finite time" in solver_failure_message("nonfinite")


# =================================================================== dense output and events


@pytest.mark.parametrize("engine", ENGINES)
def test_dense_output_matches_the_exact_solution_between_save_points(engine):
    """`Solution.evaluate` between two save points far apart, against the exact solution
    of a damped oscillator; differentiable (the gradient with respect to y0 is the
    exact flow's), jit-able, and a batch (joint and vmap) evaluates per sample."""
    with jax.enable_x64(True):
        M = jnp.array([[0.0, 1.0], [-4.0, -0.4]])
        model = nodekit.NeuralODE(lambda t, y, args: M @ y, rtol=1e-9, atol=1e-11, engine=engine)
        y0, ts = jnp.array([1.0, 0.0]), jnp.array([0.0, 3.0])
        query = jnp.linspace(0.1, 2.9, 9)
        flow = [scipy.linalg.expm(np.asarray(M) * float(t)) for t in query]

        @jax.jit
        def run(y0, t):
            def at(y0, t):
                sol = model.solve(ts, y0, dense=True)
                return sol.evaluate(t)[0], (sol.evaluate(query), sol.stats)

            (_, (values, stats)), (d_y0, d_t) = jax.value_and_grad(
                at, argnums=(0, 1), has_aux=True)(y0, t)
            y0s = jnp.stack([y0, 2 * y0])
            # (the batch modes' evaluate is the same code on both integrators)
            batch = [model.solve_batch(ts, y0s, mode=m, dense=True).evaluate(query[:2])
                     for m in ("joint", "vmap")] if engine == "nodekit" else []
            return values, d_y0, d_t, batch, stats

        values, d_y0, d_t, batch, stats = run(y0, query[4])
        assert stats.integrator == engine
        np.testing.assert_allclose(np.asarray(values), np.stack([F @ np.asarray(y0) for F in flow]),
                                   atol=1e-7)
        np.testing.assert_allclose(np.asarray(d_y0), flow[4][0], atol=1e-6)
        # d y0(t) / dt = y1(t)
        np.testing.assert_allclose(float(d_t), (flow[4] @ np.asarray(y0))[1], atol=1e-5)
        for out in batch:
            assert out.shape == (2, 2, 2)
            np.testing.assert_allclose(np.asarray(out[1]), 2 * np.asarray(out[0]), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(out[0]), np.asarray(values[:2]), atol=1e-7)
        with pytest.raises(nodekit.InputError, match="dense=True"):
            model.solve(ts, y0).evaluate(1.0)


def test_event_ends_the_solve_at_a_falling_balls_impact():
    """y = (height, velocity), y' = (v, -g): the ball dropped from h0 lands at
    sqrt(2 h0 / g), and d t_impact / d h0 = 1 / sqrt(2 g h0). Diffrax locates the event
    (auto routes there); insisting on the engine says what to do instead."""
    g, h0 = 9.81, 10.0
    ball = lambda t, y, args: jnp.stack([y[1], -g * jnp.ones_like(y[0])])  # noqa: E731
    hit = lambda t, y, args: y[0]  # noqa: E731
    ts = jnp.array([0.0, 0.5, 5.0])

    def impact(h):
        ys, t_event, st = nodekit.odeint(ball, jnp.stack([h, jnp.zeros_like(h)]), ts,
                                         event=hit, rtol=1e-8, atol=1e-8, return_stats=True)
        return t_event, ys, st

    with jax.enable_x64(True):
        (t_event, (ys, st)), dt_dh = jax.jit(jax.value_and_grad(
            lambda h: (impact(h)[0], impact(h)[1:]), has_aux=True))(jnp.asarray(h0))
    assert st.integrator == "diffrax" and "event" in st.reason
    assert result_name(int(st.result)) == "event_occurred" and not bool(st.failed)
    np.testing.assert_allclose(float(t_event), np.sqrt(2 * h0 / g), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ys[1]), [h0 - g * 0.125, -g * 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ys[2]), [0.0, -np.sqrt(2 * g * h0)], atol=1e-4)
    np.testing.assert_allclose(float(dt_dh), 1 / np.sqrt(2 * g * h0), rtol=1e-5)
    with pytest.raises(nodekit.InputError, match="engine='nodekit' cannot solve with an event"):
        nodekit.odeint(ball, jnp.array([h0, 0.0]), ts, event=hit, engine="nodekit")
    # float32 at the default tolerances (atol=1e-8 is below float32's resolution of the
    # event time): the root find's tolerances are floored at the dtype's, so it converges
    # whatever XLA's rounding (the suite compiles at optimisation level 0, where it did not)
    _, t32 = nodekit.odeint(ball, jnp.array([h0, 0.0]), ts, event=hit)
    np.testing.assert_allclose(float(t32), np.sqrt(2 * h0 / g), rtol=1e-5)


# =================================================================== settings and integrator


def test_solve_settings_one_source_of_defaults():
    s = nodekit.SolveSettings()
    assert (s.solver, s.rtol, s.atol, s.dt0, s.adjoint, s.max_steps, s.checkpoints,
            s.engine) == ("tsit5", 1e-6, 1e-8, None, "recursive", 4096, "auto", "auto")
    model = nodekit.NeuralODE(lambda t, y, a: -y)
    assert model.settings == s and model.rtol == 1e-6
    # keyword arguments override single settings; settings= and keywords combine
    loose = s.replace(rtol=1e-3)
    assert nodekit.NeuralODE(lambda t, y, a: -y, loose, atol=1e-4).settings == loose.replace(
        atol=1e-4)
    cfg = nodekit.validate_config({"solver": {"name": "dopri5", "rtol": 1e-5, "batch_mode": "joint"}})
    assert nodekit.SolveSettings.from_config(cfg.solver) == s.replace(solver="dopri5", rtol=1e-5)
    # every model carries the settings, so each can reach engine and checkpoints
    # (built abstractly: the settings are static, no parameter is computed)
    key, m = jax.random.PRNGKey(0), nodekit.models
    built = [eqx.filter_eval_shape(make) for make in (
        lambda: m.CNF.from_mlp(2, 4, 1, key=key, engine="diffrax"),
        lambda: m.ANODEClassifier(2, 1, 4, key=key, engine="diffrax"),
        lambda: m.ODENetClassifier(10, 8, key=key, engine="diffrax"),
        lambda: m.LatentODE(2, 2, 4, 4, key=key, engine="diffrax"),
        lambda: m.LotkaVolterraUDE(4, 1, key=key, engine="diffrax"),
        lambda: m.UDE(lambda t, y, a: -y, nodekit.MLPField(2, 4, key=key), engine="diffrax",
                      checkpoints=None))]
    assert all(m.settings.engine == "diffrax" for m in built)
    assert built[0].settings.rtol == 1e-5 and built[-1].settings.checkpoints is None


def test_integrator_is_chosen_from_what_was_asked_and_recorded():
    """`SolveSettings.integrator` (a pure function, for a run's files) names what a solve
    then records in its stats, for each batch mode."""
    model = nodekit.NeuralODE(nodekit.MLPField(2, 4, 1, key=jax.random.PRNGKey(0)),
                              solver="dopri5")
    ts, y0s = jnp.linspace(0, 1, 3), jnp.ones((4, 2))
    for mode in ("joint", "vmap"):
        name, reason = model.integrator(y0s, batch_mode=mode)
        stats = jax.eval_shape(lambda y: model.solve_batch(ts, y, mode=mode).stats, y0s)
        assert (stats.integrator, stats.reason) == (name, reason)
        assert name == {"joint": "nodekit", "vmap": "diffrax"}[mode]
    assert "per-sample batch" in model.integrator(y0s, batch_mode="vmap")[1]
    s = model.settings
    regs = (nodekit.JacobianFrobenius(0.1),)
    assert s.integrator(y0s, batch_mode="joint", regularisers=regs)[0] == "diffrax"
    assert s.integrator(y0s, batch_mode="joint", regularisers=regs,
                        quadrature="augmented")[0] == "nodekit"
    pick = lambda **kw: s.replace(**kw).integrator(jnp.ones(2))  # noqa: E731
    for kw, why in [(dict(solver="bosh3"), "solver 'bosh3'"),
                    (dict(adjoint="direct"), "adjoint 'direct'"),
                    (dict(dt0=0.1), "fixed step"),
                    (dict(checkpoints=None), "checkpoints=None"),
                    (dict(engine="diffrax"), "asked for")]:
        which, reason = pick(**kw)
        assert which == "diffrax" and why in reason, (kw, reason)
    assert "exceed 16 MiB" in s.integrator(jnp.ones(10**5))[1]
    with pytest.raises(nodekit.InputError, match="engine='nodekit' cannot solve with adjoint 'direct'"):
        nodekit.odeint(lambda t, y, a: -y, jnp.ones(2), ts, adjoint="direct", engine="nodekit")


def test_checkpoints_must_be_auto_none_or_positive():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(nodekit.InputError, match="checkpoints"):
            nodekit.SolveSettings(checkpoints=bad)


def test_auto_checkpoints_respects_the_memory_budget():
    from nodekit._settings import SOLVERS, auto_checkpoints

    info = SOLVERS["dopri5"]
    small, big = jnp.zeros(2), jnp.zeros(100_000)
    assert auto_checkpoints(small, info, 4096) == 4096  # 2 floats x 4096 steps fit
    assert auto_checkpoints(big, info, 4096) is None  # 400 kB per state: Diffrax's default
    # a per-sample batch counts in full: 2 floats x 10^5 samples no longer fit
    assert auto_checkpoints(small, info, 4096, copies=100_000) is None


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


# =================================================================== common mistakes


def _message(fn):
    with pytest.raises(nodekit.InputError) as info:
        fn()
    assert info.value.__cause__ is None  # nodekit's own check, not a chained JAX error
    return str(info.value)


def test_each_common_mistake_gets_a_message_with_the_fix():
    f = lambda t, y, args: -y  # noqa: E731
    ts, key = jnp.linspace(0.0, 1.0, 5), jax.random.PRNGKey(0)
    mlp = nodekit.MLPField(2, 4, 1, key=key)
    model = nodekit.NeuralODE(mlp)
    cases = [
        (lambda: nodekit.odeint(f, [1.0, 2.0], ts), r"y0 is a Python list.*jnp.asarray\(\[1.0, 2.0\]\)"),
        (lambda: nodekit.odeint(f, 1.0, ts), r"y0 is a Python float.*jnp.asarray\(1.0\)"),
        (lambda: nodekit.regularised_odeint(f, {"a": jnp.ones(2), "b": jnp.ones(1)}, ts,
                                            (nodekit.KineticEnergy(1.0),)),
         "needs y0 as one state.*pytree.*ravel_pytree"),
        (lambda: nodekit.odeint(lambda y, t: -y, jnp.ones(2), ts),
         r"takes \(y, t\) \(state first.*f\(t, y, args\)"),
        (lambda: nodekit.odeint(lambda t, y: -y, jnp.ones(2), ts),
         r"takes \(t, y\).*f\(t, y, args\)"),
        (lambda: model.solve(ts, jnp.ones((5, 2))), r"a batch of 5\? Use model.solve_batch"),
        (lambda: model.solve_batch(ts, jnp.ones(2)), "got one state of shape .2,.*model.solve"),
        (lambda: nodekit.NeuralODE(nodekit.MLPField(3, 4, key=key)).solve(ts, jnp.ones(2)),
         "MLPField has size 3 but the state y0 has size 2"),
        (lambda: model(jnp.ones(2), jnp.linspace(0.0, 1.0, 7)), r"called as model\(ts, y0\)"),
        (lambda: jax.jit(lambda r: nodekit.odeint(f, jnp.ones(2), ts, rtol=r))(1e-3),
         "rtol must be a Python number.*traced"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, rtol=1e-9),
         "rtol=1e-09 is below what float32 can resolve"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, solver="RK45"),
         "SciPy's RK45 is the Dormand-Prince 5.4. pair; nodekit's equivalent is solver='dopri5'"),
        (lambda: nodekit.SolveSettings(solver="LSODA"), "solver='kvaerno5'"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, method="dopri5"),
         r"method= \(nodekit names the solver with solver=: odeint\(..., solver='dopri5'\)"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, method="RK45"), "solver='dopri5'"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, solver="tsit"), "did you mean 'tsit5'"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, solver="rk4"), "needs a fixed step size"),
        (lambda: nodekit.odeint(f, jnp.ones(2), ts, rtol=0.0), "rtol must be > 0"),
    ]
    for call, pattern in cases:
        msg = _message(call)
        assert re.search(pattern, msg), (pattern, msg)


def test_shape_mismatch_refused_before_compile():
    class Wrong(eqx.Module):
        def __call__(self, t, y, args):
            return jnp.zeros(3)

    with pytest.raises(nodekit.InputError,
                       match=r"Wrong returns \(3,\) float32 but the state y0 is \(2,\) float32"):
        nodekit.odeint(Wrong(), jnp.ones(2), jnp.linspace(0, 1, 3))
    with pytest.raises(nodekit.InputError, match=r"float64.*astype\(float32\)"):
        with jax.enable_x64(True):
            nodekit.odeint(lambda t, y, a: y.astype(jnp.float64), jnp.ones(2, jnp.float32),
                           jnp.linspace(0, 1, 3))
