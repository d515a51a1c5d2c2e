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
