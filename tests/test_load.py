"""`nodekit.load`: a trained run back in Python (config, model, metrics, summary)."""

import json
import re
import textwrap

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import nodekit

TINY = {
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 16, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "vmap"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 2,
              "progress": False, "plots": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    nodekit.enable_compile_cache()  # (as the CLI does; one compile per config)
    w = tmp_path_factory.mktemp("load") / "run"
    nodekit.train(TINY, w)
    return w


def test_load_gives_the_trained_model_its_config_and_metrics(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    best = nodekit.load(run_dir)  # which="best"
    assert isinstance(best, nodekit.Run) and best.config == nodekit.validate_config(TINY)
    assert best.summary == summary
    # the best model is the one whose evaluation gave the best eval loss
    ev = eqx.filter_jit(best.task.evaluate)(best.model)
    assert float(ev["eval_loss"]) == summary["best_eval_loss"]
    latest = nodekit.load(run_dir, which="latest")
    assert latest.step == 6 and latest.checkpoint.name == "latest.nkc"
    # callable at once: a trajectory from the observed initial state
    ts = jnp.asarray(latest.task.ts[:10])
    ys = latest.model(ts, jnp.asarray(latest.task.ys[0]))
    assert ys.shape == (10, 2) and bool(jnp.all(jnp.isfinite(ys)))
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert latest.metrics == [r for r in rows if not r.get("eval")]
    assert latest.evals == [r for r in rows if r.get("eval")]
    steps, losses = latest.series("loss")
    np.testing.assert_array_equal(steps, np.arange(6))
    assert losses[-1] == summary["final_loss"]
    steps, ev_losses = latest.series("eval_loss")
    assert steps.tolist() == [2, 5] and ev_losses[-1] == summary["eval_loss"]


def test_load_refuses_what_is_not_there(run_dir, tmp_path):
    with pytest.raises(nodekit.InputError, match="holds no nodekit run"):
        nodekit.load(tmp_path)
    with pytest.raises(nodekit.InputError, match="which: got 'last'"):
        nodekit.load(run_dir, which="last")
    w = tmp_path / "no-best"
    (w / "checkpoints").mkdir(parents=True)
    (w / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(nodekit.InputError, match="which='latest'"):
        nodekit.load(w)


def test_load_docstring_example_runs(tmp_path, monkeypatch):
    """The example in `nodekit.load`'s docstring, as written (it trains a short run)."""
    block = textwrap.dedent(re.search(r"```python\n(.*?)```", nodekit.load.__doc__, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "nodekit.load example", "exec"), {})
