"""nodekit's own Runge–Kutta engine (`nodekit._rk`, `odeint(engine=...)`): solutions
against closed forms and Diffrax, gradients against finite differences, the choice
of engine, and failures."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nodekit
from nodekit._odeint import engine_for, result_name

from .helpers import central_fd, run_cli

A = np.array([[-0.3, 1.2], [-1.2, -0.3]])  # a damped rotation: y(t) = expm(A t) y0


def _linear(t, y, args):
    return y @ args.T


def _exact(y0, ts):
    w, v = np.linalg.eig(A)
    return np.real(np.stack([v @ np.diag(np.exp(w * t)) @ np.linalg.solve(v, y0) for t in ts]))


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_engine_matches_the_closed_form_and_diffrax(solver):
    """Outputs at ts (most of them from the dense output, between steps) are as accurate
    as Diffrax's at the same tolerance, forwards and backwards in time, with fewer than
    one evaluation per Diffrax evaluation plus a step or two."""
    with jax.enable_x64(True):
        y0, ts = np.array([1.0, -0.5]), np.linspace(0.0, 4.0, 23)
        kw = dict(solver=solver, rtol=1e-6, atol=1e-9, args=jnp.asarray(A), return_stats=True)
        ys, st = nodekit.odeint(_linear, jnp.asarray(y0), ts, engine="nodekit", **kw)
        ref, st_ref = nodekit.odeint(_linear, jnp.asarray(y0), ts, engine="diffrax", **kw)
        exact = _exact(y0, ts)
        err, err_ref = np.abs(np.asarray(ys) - exact).max(), np.abs(np.asarray(ref) - exact).max()
        assert err < 2e-5 and err < 3 * err_ref + 1e-9, (err, err_ref)
        assert int(st.result) == 0 and abs(int(st.num_accepted) - int(st_ref.num_accepted)) <= 2
        assert int(st.nfe) <= int(st_ref.nfe) + 12
        back = nodekit.odeint(_linear, jnp.asarray(exact[-1]), ts[::-1], engine="nodekit", **kw)[0]
        assert np.abs(np.asarray(back) - exact[::-1]).max() < 1e-4


def test_engine_dense_output_is_fourth_order():
    """A loose tolerance gives few, long steps: the dense output between them must
    converge like the solver (error falls ~16-32x when the tolerance falls 100x with a
    5th-order step length rule), not like linear interpolation."""
    with jax.enable_x64(True):
        y0, ts = np.array([1.0, 0.0]), np.linspace(0.0, 6.0, 81)
        errs = []
        for rtol in (1e-3, 1e-5):
            ys, st = nodekit.odeint(_linear, jnp.asarray(y0), ts, solver="dopri5", rtol=rtol,
                                    atol=rtol * 1e-3, args=jnp.asarray(A), engine="nodekit",
                                    return_stats=True)
            assert int(st.num_accepted) < 40  # most outputs are interpolated
            errs.append(np.abs(np.asarray(ys) - _exact(y0, ts)).max())
        assert errs[1] < errs[0] / 10, errs


def test_engine_gradients_match_finite_differences():
    """Gradients with respect to the field's parameters (closed over), `args`, `y0`
    and `ts`, against central differences of the same solve (float64, tight tolerance)."""
    with jax.enable_x64(True):
        w = jnp.array([[0.2, -0.7], [0.5, 0.1]])

        def loss(w, a, y0, ts):
            f = lambda t, y, args: jnp.tanh(y @ w.T) * args + 0.1 * jnp.sin(t)  # noqa: E731
            ys = nodekit.odeint(f, y0, ts, solver="tsit5", rtol=1e-11, atol=1e-12, args=a,
                                engine="nodekit", max_steps=2000)
            return jnp.sum(jnp.sin(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape))

        x = (w, jnp.asarray(1.3), jnp.array([0.4, -0.9]), jnp.array([0.1, 0.7, 1.5, 2.0]))
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*x)
        loss_jit = jax.jit(loss)
        for i, g in enumerate(grads):
            def along(v, i=i):
                return loss_jit(*x[:i], v, *x[i + 1:])

            np.testing.assert_allclose(np.asarray(g), central_fd(along, x[i]), rtol=1e-5, atol=1e-6)


def test_engine_backsolve_matches_backpropagation():
    """The continuous adjoint, solved backwards by the engine's own loop (per interval
    between output times, restarting the state from the forward solution), gives the
    gradients of the recursive adjoint (itself checked against finite differences above)
    to the tolerance: parameters (closed over), `args`, `y0` and `ts`, including a
    repeated time and a solve backwards in time."""
    with jax.enable_x64(True):
        w = jnp.array([[0.2, -0.7], [0.5, 0.1]])

        def loss(w, a, y0, ts, adjoint):
            f = lambda t, y, args: jnp.tanh(y @ w.T) * args + 0.1 * jnp.sin(t)  # noqa: E731
            ys = nodekit.odeint(f, y0, ts, solver="tsit5", rtol=1e-10, atol=1e-12, args=a,
                                adjoint=adjoint, engine="nodekit", max_steps=2000)
            return jnp.sum(jnp.sin(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape))

        x = (w, jnp.asarray(1.3), jnp.array([0.4, -0.9]), jnp.array([2.0, 1.2, 1.2, 0.3, 0.0]))
        back = jax.grad(loss, argnums=(0, 1, 2, 3))(*x, "backsolve")
        rec = jax.grad(loss, argnums=(0, 1, 2, 3))(*x, "recursive")
        for b, r in zip(back, rec):
            np.testing.assert_allclose(np.asarray(b), np.asarray(r), rtol=1e-6, atol=1e-8)


def test_engine_gradients_do_not_depend_on_the_stored_segments():
    """The backward pass keeps one segment of states and replays earlier segments along
    the stored step sizes: any segment size gives the gradient of storing every step
    (the finite-difference test above covers a two-segment solve too)."""
    from nodekit._rk import rk_solve, segment_size

    with jax.enable_x64(True):
        w = jnp.array([[0.2, -0.7], [0.5, 0.1]])
        ts = jnp.array([0.0, 0.4, 1.1, 2.0])

        def loss(w, y0, segment):
            f = lambda t, y, args: jnp.tanh(y @ w.T) + 0.1 * jnp.sin(t)  # noqa: E731
            ys, st = rk_solve(f, y0, ts, None, solver="dopri5", rtol=1e-9, atol=1e-10,
                              max_steps=64, segment=segment)
            return jnp.sum(jnp.cos(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape)), st

        x = (w, jnp.array([0.4, -0.9]))
        grads = {}
        for segment in (64, 1, 5, None):
            (_, st), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(*x, segment)
            grads[segment] = g
        assert int(st.num_accepted) > 2 * segment_size(64)  # several segments replayed
        for segment in (1, 5, None):
            for a, b in zip(grads[segment], grads[64]):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_engine_gradients_under_vmap_equal_per_sample_gradients():
    """`jax.vmap` of the engine (its custom VJP and while loops batched, every sample
    with its own steps) gives each sample the gradient it gets alone."""
    key = jax.random.PRNGKey(0)
    field = nodekit.MLPField(2, 8, 1, key=key)
    y0s = jax.random.normal(jax.random.PRNGKey(1), (3, 2))
    ts = jnp.linspace(0.0, 1.0, 4)

    def loss(field, y0):
        node = nodekit.NeuralODE(field, solver="dopri5", rtol=1e-6, atol=1e-8, engine="nodekit")
        return jnp.sum(node.solve(ts, y0).ys ** 2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    batched = eqx.filter_jit(eqx.filter_vmap(eqx.filter_grad(loss), in_axes=(None, 0)))(field, y0s)
    for i in range(3):
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(grad(field, y0s[i]))):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_engine_pytree_state():
    y0 = {"a": jnp.array(1.0), "b": jnp.array([2.0, -1.0])}
    ys = nodekit.odeint(lambda t, y, a: jax.tree_util.tree_map(lambda v: -v, y), y0,
                        jnp.linspace(0, 1, 3), solver="tsit5", engine="nodekit")
    np.testing.assert_allclose(np.asarray(ys["b"][-1]), np.exp(-1.0) * np.array([2.0, -1.0]),
                               rtol=1e-5)


def test_engine_choice_and_reasons():
    y0 = jnp.ones(2)
    pick = lambda **kw: engine_for(**{**dict(engine="auto", solver="dopri5",  # noqa: E731
                                            adjoint="recursive", dt0=None, integrals=None,
                                            checkpoints="auto", max_steps=4096, y0=y0), **kw})
    assert pick() == ("nodekit", "supported")
    assert pick(adjoint="backsolve", checkpoints=None) == ("nodekit", "supported")
    # the engine keeps ~2 sqrt(max_steps) states: 40 kB states at max_steps 4096 fit
    # (a max_steps buffer would be 160 MB)
    assert pick(y0=jnp.ones(10**4)) == ("nodekit", "supported")
    for kw, why in [(dict(solver="bosh3"), "solver 'bosh3'"),
                    (dict(adjoint="direct"), "adjoint 'direct'"),
                    (dict(dt0=0.1), "fixed step"),
                    (dict(integrals="trapezoid"), "regularisers"),
                    (dict(checkpoints=None), "checkpoints=None"),
                    (dict(y0=jnp.ones(10**5)), "exceed 16 MiB"),
                    (dict(engine="diffrax"), "asked for")]:
        which, reason = pick(**kw)
        assert which == "diffrax" and why in reason, (kw, reason)
    under_vmap = []
    jax.vmap(lambda y: under_vmap.append(pick(y0=y)) or y)(jnp.ones((3, 2)))
    assert under_vmap[0][0] == "diffrax" and "vmapped" in under_vmap[0][1]
    with pytest.raises(nodekit.InputError, match="engine='nodekit' cannot solve with adjoint 'direct'"):
        nodekit.odeint(_linear, y0, jnp.linspace(0, 1, 3), args=jnp.asarray(A),
                       adjoint="direct", engine="nodekit")
    with pytest.raises(nodekit.InputError, match="unknown engine 'fast'"):
        nodekit.odeint(_linear, y0, jnp.linspace(0, 1, 3), args=jnp.asarray(A), engine="fast")


def test_engine_failures_come_back_as_result_codes():
    ts = jnp.linspace(0, 1, 3)
    _, st = nodekit.odeint(lambda t, y, a: y * jnp.nan, jnp.ones(2), ts, engine="nodekit",
                           throw=False, return_stats=True, check=False)
    assert result_name(int(st.result)) == "nonfinite" and int(st.num_steps) <= 2
    with pytest.raises(nodekit.SolverError, match="non-finite"):
        nodekit.odeint(lambda t, y, a: y * jnp.nan, jnp.ones(2), ts, engine="nodekit", check=False)
    stiff = lambda t, y, a: -1e5 * (y - jnp.cos(t))  # noqa: E731
    _, st = nodekit.odeint(stiff, jnp.ones(1), ts, engine="nodekit", max_steps=16, throw=False,
                           return_stats=True)
    assert result_name(int(st.result)) == "max_steps_reached"
    assert int(st.num_steps) == 16


def test_config_engine_nodekit_with_unsupported_settings_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("solver: {name: bosh3, engine: nodekit}\ntrain: {steps: 2}\n")
    r = run_cli("train", str(cfg), "--workdir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "solver.engine" in r.stderr and "solver 'bosh3'" in r.stderr
    assert "Traceback" not in r.stderr


def test_engine_zero_length_and_repeated_times():
    """Times equal to the start (an ODE-RNN's first, zero-length solve) return y0, under
    jit too, and their gradient is the identity."""
    f = lambda t, y, a: -y  # noqa: E731
    solve = jax.jit(lambda y0, ts: nodekit.odeint(f, y0, ts, engine="nodekit"))
    y0 = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(np.asarray(solve(y0, jnp.array([0.5, 0.5]))), [[1, 2], [1, 2]])
    ys = solve(y0, jnp.array([0.0, 0.0, 1.0, 1.0]))
    np.testing.assert_allclose(np.asarray(ys[2:]), np.exp(-1.0) * np.array([[1, 2], [1, 2]]), rtol=1e-5)
    g = jax.grad(lambda y0: jnp.sum(solve(y0, jnp.array([0.5, 0.5]))))(y0)
    np.testing.assert_allclose(np.asarray(g), [2.0, 2.0])


def test_written_out_constants_match_diffrax():
    """The engine's tableaux, the result-code names and the solver table's evaluation
    counts are written out (so a run on the engine never imports Diffrax): they must be
    Diffrax's."""
    import diffrax

    from nodekit._errors import RESULT_NAMES
    from nodekit._odeint import SOLVERS
    from nodekit._rk import PAIRS

    for name, cls in (("dopri5", diffrax.Dopri5), ("tsit5", diffrax.Tsit5)):
        tab, pair = cls.tableau, PAIRS[name]
        np.testing.assert_array_equal(pair.c[1:], tab.c)
        np.testing.assert_array_equal(pair.b, tab.b_sol)
        np.testing.assert_allclose(pair.e, tab.b_error, rtol=0, atol=1e-16)
        for i, row in enumerate(tab.a_lower):
            np.testing.assert_array_equal(pair.a[i + 1, : len(row)], row)
    assert list(RESULT_NAMES) == list(diffrax.RESULTS._name_to_item.keys())
    for name, info in SOLVERS.items():
        if name == "euler":  # no tableau in Diffrax: one evaluation a step
            assert (info.evals_per_step, info.fsal) == (1, False)
            continue
        tab = info.cls.tableau
        stages = len(tab.c) + 1
        fsal = bool(getattr(tab, "fsal", False))
        assert (info.evals_per_step, info.fsal) == (stages - 1 if fsal else stages, fsal), name


def test_a_training_step_on_the_engine_does_not_import_diffrax():
    """Diffrax (with Optimistix and Lineax, ~0.3 s) is imported only when a solve falls
    back to it: the CLI's modules and a differentiated engine solve must not pull it in."""
    import subprocess
    import sys

    code = (
        "import sys, jax, jax.numpy as jnp, nodekit.cli, nodekit._loop, nodekit\n"
        "f = nodekit.MLPField(2, width=8, depth=1, key=jax.random.PRNGKey(0))\n"
        "loss = lambda f: nodekit.odeint(f, jnp.ones(2), jnp.linspace(0., 1., 3),"
        " solver='dopri5').sum()\n"
        "import equinox; equinox.filter_grad(loss)(f)\n"
        "print(sorted(m for m in ('diffrax', 'optimistix', 'lineax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
