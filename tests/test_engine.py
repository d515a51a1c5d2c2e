"""nodekit's own Runge–Kutta engine (`nodekit._rk`, `odeint(engine=...)`): what is
particular to it (step counts against Diffrax's, its dense output's order, its stored
segments, vmapped custom VJPs, its written-out constants, start-up without Diffrax),
and the house rules of the solver core. Solutions, gradients and edges on both
integrators are in tests/test_odeint.py."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nodekit
from .helpers import run_cli

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
        # accepted steps match Diffrax's to within two (the same PID controller); the
        # rejected ones do not: Diffrax 0.7.2 always tries 0.01 first and shrinks from
        # there, the engine starts from Hairer's estimate (figures in the README)
        assert int(st.result) == 0 and abs(int(st.num_accepted) - int(st_ref.num_accepted)) <= 2
        assert int(st.num_rejected) <= int(st_ref.num_rejected) + 2
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


def test_engine_gradients_do_not_depend_on_the_stored_segments():
    """The backward pass keeps one segment of states and replays earlier segments along
    the stored step sizes: any segment size gives the gradient of storing every step
    (tests/test_odeint.py checks the default against finite differences)."""
    from nodekit._rk import rk_solve, segment_size

    with jax.enable_x64(True):
        w = jnp.array([[0.2, -0.7], [0.5, 0.1]])
        ts = jnp.array([0.0, 0.4, 1.1, 2.0])

        def loss(w, y0, segment):
            f = lambda t, y, args: jnp.tanh(y @ w.T) + 0.1 * jnp.sin(t)  # noqa: E731
            ys, st, _ = rk_solve(f, y0, ts, None, solver="dopri5", rtol=1e-9, atol=1e-10,
                                 max_steps=64, segment=segment)
            return jnp.sum(jnp.cos(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape)), st

        x = (w, jnp.array([0.4, -0.9]))

        @jax.jit
        def all_segments(w, y0):  # one compiled program for the four segment sizes
            return [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(w, y0, s)
                    for s in (64, 1, 5, None)]

        out = all_segments(*x)
        grads = dict(zip((64, 1, 5, None), (g for _, g in out)))
        st = out[-1][0][1]
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


def test_config_engine_nodekit_with_unsupported_settings_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("solver: {name: bosh3, engine: nodekit}\ntrain: {steps: 2}\n")
    r = run_cli("train", str(cfg), "--workdir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "solver.engine" in r.stderr and "solver 'bosh3'" in r.stderr
    assert "Traceback" not in r.stderr


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
    # (nodekit's own codes follow Diffrax's)
    names = [n for n in RESULT_NAMES if isinstance(getattr(diffrax.RESULTS, n, None),
                                                   type(diffrax.RESULTS.successful))]
    assert names == list(RESULT_NAMES[: len(names)]) and len(names) == 14
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


def test_no_private_internals_or_process_wide_switches_in_the_solver_core():
    """The house rule, checked on the source: no `jax._src`, no private Equinox module,
    no cache clearing, no JAX config flags flipped in the solver core (the CLI sets
    Equinox's documented `EQX_ON_ERROR` switch, and only by `setdefault`)."""
    from pathlib import Path

    import re

    root = Path(nodekit.__file__).parent
    banned = (r"jax\._src", r"equinox\._", r"clear_caches", r"^\s*jax\.config\.update\(",
              r"\._value\b", r"import equinox\.internal")
    core = ["_odeint.py", "_rk.py", "_diffrax_solve.py", "_settings.py", "_neural_ode.py",
            "_fields.py", "_regularisers.py", "_quadrature.py", "_checks.py", "_step.py",
            "_errors.py", *[f"models/{p.name}" for p in (root / "models").glob("*.py")]]
    for name in core:
        text = (root / name).read_text()
        for pattern in banned:
            assert not re.search(pattern, text, re.MULTILINE), (name, pattern)
    assert 'os.environ.setdefault("EQX_ON_ERROR", "nan")' in (root / "cli.py").read_text()
    setters = r"(os\.environ\[[\"']EQX_ON_ERROR|environ\.setdefault\([\"']EQX_ON_ERROR|putenv)"
    assert not re.search(setters, "".join((root / n).read_text() for n in core))
