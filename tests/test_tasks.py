"""Config-driven runs with regularisation, and the density task (FFJORD from config).

Each run is a handful of steps on a tiny problem; the assertions are invariants of the
logged metrics (every configured term is logged, finite, and the total is the task loss
plus the weighted terms) and of the files a run writes.
"""

import json
import math

import numpy as np
import pytest

import nodekit
from nodekit import ConfigError

TRAJ = {
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 16, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-4, "atol": 1e-6, "batch_mode": "joint"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 8, "batch_size": 8, "eval_every": 4, "checkpoint_every": 4,
              "progress": False, "compile_cache": False},
}

DENSITY = {
    "task": "density",
    "data": {"distribution": "8gaussians", "n_train": 256, "n_test": 64},
    "model": {"field": {"width": 16, "depth": 1}, "cnf": {"trace": "hutchinson"}},
    "solver": {"name": "tsit5", "rtol": 1e-3, "atol": 1e-3, "batch_mode": "joint"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 8, "batch_size": 32, "eval_every": 4, "checkpoint_every": 4,
              "progress": False, "compile_cache": False},
}

WEIGHTS = {"kinetic": 0.1, "jacobian": 0.05, "taylor": 0.01}


def _rows(workdir):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("eval")], [r for r in rows if r.get("eval")]


def _check_terms(rows, names):
    for r in rows:
        total = r["loss_task"]
        for name in names:
            assert math.isfinite(r[f"reg_{name}"]) and r[f"reg_{name}"] > 0, (name, r)
            total += WEIGHTS[name] * r[f"reg_{name}"]
        assert r["loss"] == pytest.approx(total, rel=1e-5), r
        assert r["nfe_forward"] > 0 and r["solver_steps"] > 0


def test_trajectory_run_logs_every_regulariser(tmp_path):
    cfg = dict(TRAJ, regularisation={"kinetic": WEIGHTS["kinetic"],
                                     "jacobian": {"weight": WEIGHTS["jacobian"],
                                                  "estimator": "hutchinson"},
                                     "taylor": {"weight": WEIGHTS["taylor"], "order": 2}})
    summary = nodekit.train(cfg, tmp_path / "w")
    assert summary["status"] == "ok" and summary["steps"] == 8
    train_rows, eval_rows = _rows(tmp_path / "w")
    assert [r["step"] for r in train_rows] == list(range(8))
    _check_terms(train_rows, ["kinetic", "jacobian", "taylor"])
    assert eval_rows and all(math.isfinite(r["eval_loss"]) for r in eval_rows)


def test_density_task_trains_with_regularisers_and_steer(tmp_path):
    cfg = dict(DENSITY, regularisation={"kinetic": WEIGHTS["kinetic"],
                                        "jacobian": {"weight": WEIGHTS["jacobian"],
                                                     "estimator": "exact"},
                                        "steer": {"width": 0.5}})
    summary = nodekit.train(cfg, tmp_path / "d")
    assert summary["status"] == "ok"
    train_rows, eval_rows = _rows(tmp_path / "d")
    _check_terms(train_rows, ["kinetic", "jacobian"])
    # the NLL of a 2-D density near N(0, I)-scale data: finite and not absurd
    assert all(0.0 < r["eval_loss"] < 20.0 for r in eval_rows)
    assert summary["eval_nfe"] > 0
    assert (tmp_path / "d" / "plots" / "density.png").stat().st_size > 1000
    # the loss went down over 8 steps from an untrained flow
    assert np.mean([r["loss_task"] for r in train_rows[-3:]]) < train_rows[0]["loss_task"]


def test_density_eval_is_exact_nll_of_a_linear_flow():
    """At initialisation the eval NLL equals the exact-trace NLL computed directly."""
    import jax
    import jax.numpy as jnp

    from nodekit.tasks import make_task
    from nodekit.models import nll

    task = make_task(nodekit.validate_config(DENSITY))
    model = task.make_model(jax.random.PRNGKey(0))
    ev = task.evaluate(model)
    exact = task._exact(model)
    assert exact.trace == "exact" and model.trace == "hutchinson"
    ref, _ = nll(exact, jnp.asarray(task.test_x), None, mode="vmap")
    assert float(ev["eval_loss"]) == pytest.approx(float(ref), rel=1e-3)


@pytest.mark.parametrize("raw, key", [
    (dict(TRAJ, regularisation={"steer": {"width": 0.5}}), "regularisation.steer"),
    (dict(DENSITY, regularisation={"steer": {"width": 2.0}}), "regularisation.steer.width"),
    (dict(DENSITY, data={"name": "spiral"}), "data.name"),
    (dict(DENSITY, train=dict(DENSITY["train"], batch_size=1000)), "train.batch_size"),
])
def test_task_level_config_errors_name_the_key(raw, key, tmp_path):
    from nodekit.tasks import make_task

    with pytest.raises(ConfigError) as e:
        make_task(nodekit.validate_config(raw))
    assert e.value.path == key, str(e.value)


@pytest.mark.parametrize("base", ["trajectory", "density"])
def test_config_quadrature_reaches_the_solve(base):
    """`regularisation.quadrature` is passed to the task's solve: `trapezoid` (the
    default) leaves the solver's steps those of the unregularised loss, `augmented` puts
    the integrals under error control; both give nearly the same penalty."""
    import equinox as eqx
    import jax

    from nodekit.tasks import make_task

    base_cfg = TRAJ if base == "trajectory" else DENSITY
    reg = {"kinetic": WEIGHTS["kinetic"], "jacobian": {"weight": 0.05, "estimator": "exact"}}
    out = {}
    for name, r in [("none", {}), ("trapezoid", reg),
                    ("augmented", dict(reg, quadrature="augmented"))]:
        # regularised solves run on Diffrax: the unregularised one too, to compare steps
        solver = dict(base_cfg.get("solver", {}), engine="diffrax")
        cfg = nodekit.validate_config(dict(base_cfg, regularisation=r, solver=solver))
        assert cfg.regularisation.quadrature == ("augmented" if name == "augmented" else "trapezoid")
        task = make_task(cfg)
        model = task.make_model(jax.random.PRNGKey(0))
        loss = eqx.filter_jit(task.loss)
        _, aux = loss(model, task.batch(0), jax.random.PRNGKey(1))
        out[name] = {k: float(v) for k, v in aux.items() if np.ndim(v) == 0}
    assert out["trapezoid"]["nfe_forward"] == out["none"]["nfe_forward"]
    assert out["trapezoid"]["loss_task"] == pytest.approx(out["none"]["loss_task"], rel=1e-6)
    for k in ("reg_kinetic", "reg_jacobian"):
        assert out["trapezoid"][k] == pytest.approx(out["augmented"][k], rel=0.05), k
        assert out["trapezoid"][k] != out["augmented"][k], k  # two different quadratures ran


# --------------------------------------------------------------------------- every task


def _tiny(task: str) -> dict:
    """A tiny config of each task (seconds to compile and train a few steps)."""
    # compile_cache: the rerun of a config loads its step (and the eval's and plots'
    # executables) from the test session's cache instead of compiling again
    train = {"steps": 2, "eval_every": 2, "checkpoint_every": 2, "progress": False}
    mlp = {"width": 8, "depth": 1}
    loose = {"name": "tsit5", "rtol": 1e-3, "atol": 1e-4}
    return {
        "trajectory": {"data": {"n_points": 40, "batch_time": 4}, "model": {"field": mlp},
                       "solver": dict(loose, batch_mode="joint"),
                       "train": dict(train, batch_size=4)},
        "density": {"task": "density", "data": {"n_train": 32, "n_test": 16},
                    "model": {"field": mlp}, "solver": dict(loose, batch_mode="joint"),
                    "train": dict(train, batch_size=8)},
        "classification": {"task": "classification",
                           "data": {"name": "concentric_spheres", "n": 40},
                           "model": {"field": mlp, "augment_dim": 1},
                           "solver": dict(loose, batch_mode="joint"),
                           "train": dict(train, batch_size=8)},
        "latent": {"task": "latent",
                   "data": {"n_samples": 10, "n_points": 12, "n_obs": 4},
                   # the RNN baseline here (the latent ODE trains in the irregular-series
                   # example's test)
                   "model": {"field": mlp, "latent": {"type": "rnn", "hidden_size": 4}},
                   "solver": loose, "train": dict(train, batch_size=4)},
        "ude": {"task": "ude", "data": {"n_obs": 8, "t1": 1.0},
                "model": {"field": {"width": 4, "depth": 1},
                          "physics": {"type": "lotka_volterra"},
                          "sparse_regression": {"degree": 2}},
                "solver": loose, "train": dict(train, batch_size=1)},
    }[task]


@pytest.fixture
def scoped_x64():
    """float64 for the test's own arrays (the tasks and models it builds outside
    `nodekit.train`, which scopes the run's precision itself)."""
    import jax

    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("task", ["density", "classification", "latent", "ude"])
def test_every_task_trains_in_float64_and_resumes_bitwise(task, tmp_path, scoped_x64):
    """Each task trains from its tiny config in float64 (data, model and optimiser
    state in float64), and a run interrupted after 2 steps and resumed to 4 ends bit
    for bit where an uninterrupted 4-step run ends. (The trajectory task: its float64
    run is the CSV example's test below; its resumes are tests/test_train's and
    tests/test_robustness's.)"""
    import jax

    from nodekit._checkpoint import read_header

    raw = dict(_tiny(task), precision="float64")
    full = json.loads(json.dumps(raw))
    full["train"].update(steps=4)
    s_full = nodekit.train(full, tmp_path / "full")
    s_part = nodekit.train(raw, tmp_path / "part")
    assert s_part["status"] == "ok" and s_part["steps"] == 2
    s_res = nodekit.train(full, tmp_path / "part")  # the step of `full`, from the cache
    assert s_res["resumed_from_step"] == 2 and s_res["steps"] == s_full["steps"] == 4
    ckpt = lambda w: read_header(w / "checkpoints" / "latest.nkc")  # noqa: E731
    assert ckpt(tmp_path / "part")[0]["step"] == 4
    assert ckpt(tmp_path / "part")[1] == ckpt(tmp_path / "full")[1]  # model + optimiser state
    rows = [r for r in _rows(tmp_path / "full")[0]]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert s_full["eval_loss"] is not None and math.isfinite(s_full["eval_loss"])
    # the parameters are float64, as are the task's data and batches
    from nodekit.tasks import make_task

    t = make_task(nodekit.validate_config(full))
    model = t.make_model(jax.random.PRNGKey(0))
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(eqx_filter(model))}
    assert dtypes == {np.dtype("float64")}, dtypes
    floats = [np.asarray(v) for v in t.batch(0).values() if np.asarray(v).dtype.kind == "f"]
    assert floats and all(v.dtype == np.float64 for v in floats)


def eqx_filter(model):
    import equinox as eqx

    return eqx.filter(model, eqx.is_inexact_array)


# --------------------------------------------------------------------------- the README's examples


def _trained(config, workdir):
    """`(task, model)` of a finished run, the model read back from its latest checkpoint."""
    import jax

    from nodekit._build import initial_state
    from nodekit._checkpoint import load_checkpoint

    task, model, _, opt_state = initial_state(config, jax.random.PRNGKey(0))
    (model, _), _ = load_checkpoint(workdir / "checkpoints" / "latest.nkc", (model, opt_state),
                                    config_hash=config.hash())
    return task, model


SHORT = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false"]


def test_example_csv_of_trajectories_trains(tmp_path, scoped_x64):
    """configs/examples/trajectories.yaml (a CSV with a series column) trains as
    shipped, a few steps here and in float64 (the trajectory task's float64 run); the
    state is standardised by the training series."""
    import jax

    from nodekit.data import read_trajectories

    cfg = nodekit.load_config("examples/trajectories", SHORT + ["precision=float64"])
    assert cfg.data.path.endswith("examples/trajectories.csv") and cfg.data.normalise
    summary = nodekit.train(cfg, tmp_path / "w")
    assert summary["status"] == "ok" and math.isfinite(summary["eval_loss"])
    assert (tmp_path / "w" / "plots" / "trajectory.png").stat().st_size > 1000
    task, model = _trained(cfg, tmp_path / "w")
    assert {x.dtype for x in jax.tree_util.tree_leaves(eqx_filter(model))} == {
        np.dtype("float64")}
    tr = read_trajectories(cfg.data.path, time="t", state=["theta", "omega"], series="run")
    values = np.concatenate(tr.values)
    assert task.state_names == ("theta", "omega") and len(tr) == 3
    np.testing.assert_allclose(task.normalisation.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(task.normalisation.std, values.std(0), rtol=1e-12)


def _irregular_example(tmp_path, overrides):
    cfg = nodekit.load_config("examples/irregular", SHORT + overrides)
    summary = nodekit.train(cfg, tmp_path / "w")
    assert summary["status"] == "ok" and math.isfinite(summary["eval_loss"])
    rows = _rows(tmp_path / "w")[0]
    assert all(r["nfe_forward"] > 0 and math.isfinite(r["loss"]) for r in rows)  # ODE solves ran
    from nodekit.tasks import make_task

    task = make_task(cfg)
    assert task.train_mask.min() == 0 and task.train_mask.max() == 1  # missing cells masked
    assert len(task.eval_values) == 10 and task.n_train == 38       # 48 series, 20 % held out


def test_example_latent_ode_on_irregular_series_trains(tmp_path):
    """configs/examples/irregular.yaml (a latent ODE on irregular series with empty
    cells) trains, a few steps here, with the GRU encoder: the shipped ODE-RNN
    encoder's compile costs half a minute on a 2-core CPU, so it runs as shipped in the
    slow suite (below)."""
    _irregular_example(tmp_path, ["model.latent.encoder=gru"])


@pytest.mark.slow
def test_example_latent_ode_on_irregular_series_trains_as_shipped(tmp_path):
    _irregular_example(tmp_path, [])


def test_example_python_field_recovers_its_constants(tmp_path):
    """configs/examples/oscillator.yaml: the user's damped oscillator (two constants,
    started at k = 1, c = 0.1) fitted to noiseless data of k = 4, c = 0.3 recovers both
    within 1 %."""
    import importlib.util

    from nodekit import builtin_configs

    script = builtin_configs()["examples/oscillator"].parent / "make_data.py"
    spec = importlib.util.spec_from_file_location("make_data", script)
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)  # the constants the data were made with
    STIFFNESS, DAMPING = make_data.STIFFNESS, make_data.DAMPING

    cfg = nodekit.load_config("examples/oscillator", ["train.progress=false"])
    summary = nodekit.train(cfg, tmp_path / "w")
    assert summary["status"] == "ok"
    task, model = _trained(cfg, tmp_path / "w")
    got = task.finalise(model)["field_parameters"]
    assert got["stiffness"] == pytest.approx(STIFFNESS, rel=0.01), got
    assert got["damping"] == pytest.approx(DAMPING, rel=0.01), got
    assert type(model.field).__name__ == "DampedOscillator"


def test_ude_sparse_regression_recovers_a_known_interaction():
    """`finalise` of the ude task regresses the learned term on the state's monomials
    (STLSQ): with the true Lotka-Volterra interaction in place of the network, it
    finds -beta x*y and gamma x*y and nothing else."""
    import equinox as eqx
    import jax

    from nodekit.models import LotkaVolterraInteraction
    from nodekit.tasks import make_task

    raw = dict(_tiny("ude"))
    raw["data"] = dict(raw["data"], beta=0.7, gamma=1.1)
    task = make_task(nodekit.validate_config(raw))
    model = task.make_model(jax.random.PRNGKey(0))
    truth = LotkaVolterraInteraction(beta=0.7, gamma=1.1)
    model = eqx.tree_at(lambda m: m.ode.field.neural, model, truth)
    out = task.finalise(model)["sparse_regression"]
    assert out["basis"] == ["1", "x", "y", "x^2", "x*y", "y^2"]
    coef = out["coefficients"]
    assert coef["x"]["x*y"] == pytest.approx(-0.7, rel=1e-4)
    assert coef["y"]["x*y"] == pytest.approx(1.1, rel=1e-4)
    others = [abs(v) for name in ("x", "y") for k, v in coef[name].items() if k != "x*y"]
    assert max(others) == 0.0  # thresholded away exactly
    assert out["sampled_on"] == "clean trajectory" and out["samples"] == 8


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_tasks_make_data_and_models_in_the_config_precision(precision, scoped_x64):
    """Inside a float64 scope (a notebook with x64 on, or after a float64 run) a
    float32 config still gets float32 data, batches and parameters, and a float64
    config float64 ones: nothing is hard-coded to either."""
    import equinox as eqx
    import jax

    from nodekit.tasks import make_task

    for task in ("trajectory", "density", "classification", "latent", "ude"):
        t = make_task(nodekit.validate_config(dict(_tiny(task), precision=precision)))
        model = eqx.filter_eval_shape(t.make_model, jax.random.PRNGKey(0))
        dtypes = {x.dtype for x in jax.tree_util.tree_leaves(model)
                  if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)}
        assert dtypes == {np.dtype(precision)}, (task, dtypes)
        floats = {np.asarray(v).dtype for v in t.batch(0).values()
                  if np.asarray(v).dtype.kind == "f"}
        assert floats == {np.dtype(precision)}, (task, floats)
