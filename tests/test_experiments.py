"""Paper reproductions (`nodekit reproduce`): the registry and each experiment's runs
(built-in configs, quick overrides, dependencies), claims whose verdict is computed from
numbers, the report/summary writer, the CLI's handling of names, and the machinery
that trains only what is missing (with a stand-in for `nodekit.train`) run in
milliseconds; one reproduction runs end to end through `nodekit.train` with tiny
overrides in seconds; every experiment's `--quick` run, and `reproduce` from an
installed wheel, are `slow` tests."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import nodekit
from nodekit._errors import InputError
from nodekit.cli import main
from nodekit.experiments import EXPERIMENTS, _REGISTRY, run_experiment
from nodekit.experiments._common import Check, check, claim, write_report
from nodekit.experiments._runs import QUICK_DIR, Runs, config_name, train_missing

#: The issue's eight experiments, in its order.
NAMES = (
    "chen2018-spiral",
    "chen2018-odenet-digits",
    "chen2018-latent-ode",
    "dupont2019-anode",
    "grathwohl2019-ffjord",
    "finlay2020-rnode",
    "kelly2020-taynode",
    "rackauckas2020-ude",
)
CLAIM_KEYS = {"claim", "paper", "measured", "holds", "checks"}


# ----------------------------------------------------------------- registry


def test_registry_lists_the_eight_experiments_in_order():
    assert tuple(EXPERIMENTS) == NAMES
    for exp in EXPERIMENTS.values():
        assert exp.paper and exp.claim and callable(exp.run)


@pytest.mark.parametrize("name,module", [(r[0], r[1]) for r in _REGISTRY])
def test_each_module_names_itself_and_runs(name, module):
    mod = importlib.import_module(f"nodekit.experiments.{module}")
    assert mod.NAME == name
    assert callable(mod.run) and callable(mod.report)


@pytest.mark.parametrize("name,module", [(r[0], r[1]) for r in _REGISTRY])
def test_each_run_is_a_shipped_config(name, module):
    """Every declared run is a built-in config `papers/<name>/<run>` (and every such
    config is a declared run), its quick overrides validate, a dependency names an
    earlier run, and each file opens with its command and expected result."""
    mod = importlib.import_module(f"nodekit.experiments.{module}")
    builtin = nodekit.builtin_configs()
    shipped = {k.split("/")[2] for k in builtin if k.startswith(f"papers/{name}/")}
    declared = [spec.name for spec in mod.RUNS]
    assert sorted(declared) == sorted(shipped) and len(set(declared)) == len(declared)
    assert any(spec.in_quick for spec in mod.RUNS)
    for i, spec in enumerate(mod.RUNS):
        path = builtin[config_name(name, spec.name)]
        head = path.read_text().splitlines()
        assert head[0].startswith(f"# nodekit reproduce {name}"), (path, head[0])
        assert any(line.startswith("# Expected:") for line in head[:4]), path
        full = nodekit.load_config(config_name(name, spec.name))
        quick = nodekit.load_config(config_name(name, spec.name), list(spec.quick))
        assert quick.train.steps <= full.train.steps
        if spec.init_from is not None:
            assert spec.init_from in declared[:i], (spec.name, spec.init_from)


def test_spiral_reproduction_is_the_builtin_spiral():
    """The spiral experiment's run is the built-in `spiral` config (two files, one run)."""
    assert (nodekit.load_config("papers/chen2018-spiral/spiral").hash()
            == nodekit.load_config("spiral").hash())


def test_no_second_training_loop():
    """The experiments train only through `nodekit.train`: no step, optimiser or
    compile cache of their own (helpers are reports, claims and figures)."""
    import re

    folder = Path(importlib.import_module("nodekit.experiments").__file__).parent
    for path in sorted(folder.glob("*.py")):
        text = path.read_text()
        for needle in (r"make_step", r"make_optimizer", r"import optax", r"\bid\(",
                       r"(?m)^_(STEPS|LOSSES)\b", r"def fit\(", r"def loss_fn\("):
            assert not re.search(needle, text), (path.name, needle)


def test_unknown_experiment_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="chen2018-spiral"):
        run_experiment("chen2018-spira", tmp_path)


# ----------------------------------------------------------------- checks and claims


@pytest.mark.parametrize(
    "lhs,op,rhs,holds",
    [(1, "<", 2, True), (2, "<", 2, False), (2, "<=", 2, True), (3, ">", 2, True),
     (2, ">=", 3, False), (np.float32(0.5), "<", 1, True), (np.int64(4), ">=", 4, True)],
)
def test_check_is_computed_from_the_numbers(lhs, op, rhs, holds):
    c = check(lhs, op, rhs, "a", "b")
    assert c.holds is holds
    assert str(c).startswith("a = ") and op in str(c) and "b = " in str(c)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_non_finite_numbers_never_hold(bad, op):
    assert not check(bad, op, 1.0).holds
    assert not check(1.0, op, bad).holds
    assert not check(bad, op, bad).holds


def test_check_refuses_an_unknown_comparison():
    with pytest.raises(ValueError, match="comparison"):
        Check(1.0, "==", 1.0)


def test_claim_holds_only_when_all_checks_hold():
    good, bad = check(1, "<", 2), check(3, "<", 2)
    row = claim("c", "p", "m", good, good)
    assert set(row) == CLAIM_KEYS and row["holds"] is True and len(row["checks"]) == 2
    assert claim("c", "p", "m", good, bad)["holds"] is False
    assert claim("c", "p", "m", check(math.nan, "<", 2))["holds"] is False
    with pytest.raises(ValueError):
        claim("c", "p", "m")
    with pytest.raises(ValueError):
        claim("c", "p", "m", True)  # a hand-written verdict is refused


# ----------------------------------------------------------------- report writer


def test_write_report_schema(tmp_path):
    fig = tmp_path / "sub" / "fig.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    claims = [claim("fits", "paper says", "we measured 0.1", check(0.1, "<", 0.2, "err")),
              claim("diverged", "paper says", "nan", check(math.nan, "<", 0.2, "err"))]
    report = write_report(
        tmp_path, name="x-demo", title="x-demo: title", paper="Someone 2020", quick=True,
        claims=claims, settings={"steps": 3, "lr": 1e-3}, notes=["small scale"],
        figures=[fig], metrics={"loss": np.float32(0.25), "curve": np.array([1.0, np.nan])},
        tables=[("Extra", "| a |\n|---|\n| 1 |")], timings={"train": 1.5}, batch_mode="vmap",
    )
    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert "x-demo --quick" in text and "1 of 2 claims hold" in text
    assert "**Batch mode:** vmap" in text and "## Extra" in text
    assert "![fig](sub/fig.png)" in text and "**no**" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["experiment"] == "x-demo" and summary["quick"] is True
    assert summary["batch_mode"] == "vmap"
    assert [c["holds"] for c in summary["claims"]] == [True, False]
    for c in summary["claims"]:
        assert set(c) == CLAIM_KEYS
    assert summary["metrics"] == {"loss": 0.25, "curve": [1.0, None]}  # NaN -> null
    assert summary["figures"] == ["sub/fig.png"]


def test_report_links_figures_from_its_folder(tmp_path, monkeypatch):
    """A relative workdir (the CLI's default, runs/reproduce/NAME) still links each
    figure from the report's own folder."""
    monkeypatch.chdir(tmp_path)
    workdir = Path("runs") / "x"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "sub" / "fig.png").write_bytes(b"png")
    report = write_report(workdir, name="x", title="x", paper="p", quick=False,
                          claims=[claim("c", "p", "m", check(1, "<", 2))], settings={},
                          notes=[], figures=[workdir / "sub" / "fig.png"], batch_mode="vmap")
    assert "![fig](sub/fig.png)" in report.read_text()
    assert json.loads((workdir / "summary.json").read_text())["figures"] == ["sub/fig.png"]


# ----------------------------------------------------------------- CLI


def test_cli_lists_the_experiments(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(NAMES)


@pytest.mark.parametrize("argv", [["reproduce", "no-such-paper"], ["reproduce"]])
def test_cli_bad_name_exits_2_with_one_message(argv, capsys, tmp_path):
    assert main(argv + ["--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodekit: error:") and "Traceback" not in err
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------- what the paper runs need


def test_init_seed_draws_the_initial_weights():
    """`model.init_seed: k` starts from `task.make_model(PRNGKey(k))` (the weights a
    Python loop with that key starts from); unset, the model key is split from `seed`;
    the training key is the run's either way."""
    import equinox as eqx
    import jax

    from nodekit._build import _builder
    from nodekit._optim import make_optimizer
    from nodekit.tasks import make_task

    from .helpers import tree_allclose

    def start(cfg):  # what train starts from (the builder, unjitted: a tiny model)
        task = make_task(cfg)
        optim = make_optimizer(cfg.optimizer, cfg.train.steps)
        model, _, train_key = _builder(task, optim, True)(np.uint32(cfg.seed))
        return task, eqx.filter(model, eqx.is_array), train_key

    arrays = lambda m: eqx.filter(m, eqx.is_array)  # noqa: E731
    seeded = nodekit.load_config("tiny", ["model.init_seed=3"])
    task, model, key = start(seeded)
    assert tree_allclose(model, arrays(task.make_model(jax.random.PRNGKey(3))), rtol=0, atol=0)
    default = nodekit.load_config("tiny")
    task0, model0, key0 = start(default)
    first = jax.random.split(jax.random.PRNGKey(0))[0]
    assert tree_allclose(model0, arrays(task0.make_model(first)), rtol=0, atol=0)
    assert not tree_allclose(model, model0)
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(key0))
    assert seeded.hash() != default.hash()  # a checkpoint resumes under its own weights only


def test_batch_order_random_draws_each_batch_anew():
    from nodekit.tasks import make_task

    raw = {"task": "classification", "seed": 2,
           "data": {"name": "concentric_spheres", "n": 100, "seed": 0},
           "train": {"batch_size": 8}}
    epochs = make_task(nodekit.validate_config(raw))
    per_epoch = epochs.n_train // 8
    seen = np.concatenate([epochs.batch(s)["x"] for s in range(per_epoch)])
    assert len(np.unique(seen, axis=0)) == len(seen)  # every item at most once an epoch
    cfg = nodekit.validate_config({**raw, "train": {"batch_size": 8, "batch_order": "random"}})
    task = make_task(cfg)
    for step in (0, 5, 123):
        idx = np.random.default_rng(2 * 2**32 + step).choice(task.n_train, 8, replace=False)
        assert np.array_equal(task.batch(step)["x"], task.train_x[idx])
    assert cfg.hash() != nodekit.validate_config(raw).hash()
    explicit = nodekit.validate_config({**raw, "train": {"batch_size": 8, "batch_order": "epochs"}})
    assert explicit.hash() == nodekit.validate_config(raw).hash()
    with pytest.raises(nodekit.ConfigError) as e:
        nodekit.load_config("tiny", ["train.batch_order=random"])
    assert e.value.path == "train.batch_order"


def test_ude_task_loss_is_trajectory_loss():
    """On a fully observed trajectory the ude task's loss is what
    `nodekit.models.trajectory_loss` computes, to the last bit (the UDE reproduction's
    L-BFGS stage ends where it ended before only with the same rounding)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from nodekit.models import trajectory_loss
    from nodekit.tasks import make_task

    cfg = nodekit.load_config("papers/rackauckas2020-ude/ude-adam")
    task = make_task(cfg)
    model = task.make_model(jax.random.PRNGKey(0))
    lv = task.lv
    ours = eqx.filter_jit(task.loss)(model, task.batch(0), jax.random.PRNGKey(1))[0]
    theirs = eqx.filter_jit(lambda m, *data: trajectory_loss(m, *data)[0])(
        model, *map(jnp.asarray, (lv.ts, lv.y0, lv.observations)))  # (arguments, as a batch)
    assert float(ours) == float(theirs)


# ----------------------------------------------------------------- the machinery


def _fake_train(calls: list, stop_at: str | None = None):
    """A stand-in for `nodekit._loop._train` that writes what a finished run leaves
    (summary ok at its steps, a checkpoint), records its calls, and raises `Stopped` for
    the run named `stop_at` (after writing its checkpoint and a stopped summary)."""

    def fake(config, workdir, *, init_from=None, console=None, cli=False, **kw):
        workdir = Path(workdir)
        calls.append((workdir.name, init_from))
        (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (workdir / "checkpoints" / "latest.nkc").write_bytes(b"x")
        stopped = workdir.name == stop_at
        summary = {"status": "stopped (SIGINT)" if stopped else "ok",
                   "steps": 7 if stopped else config.train.steps, "config_hash": config.hash()}
        (workdir / "summary.json").write_text(json.dumps(summary))
        if stopped:
            raise nodekit.Stopped("stopped at step 7 (SIGINT); ...", step=7)
        return summary

    return fake


class _Quiet:
    mode = "quiet"

    def __init__(self):
        self.lines = []

    def say(self, text, **kw):
        self.lines.append(text)


def test_trains_what_is_missing_with_dependencies(tmp_path, monkeypatch):
    """Runs train in order; an L-BFGS run starts from its Adam run's weights on a fresh
    start only; finished runs are kept; an interrupted run resumes (no init_from); quick
    runs live apart from the full ones."""
    from nodekit import _loop

    calls = []
    monkeypatch.setattr(_loop, "_train", _fake_train(calls))
    mod = importlib.import_module("nodekit.experiments.rackauckas2020_ude")
    runs = Runs(mod.NAME, mod.RUNS, tmp_path, quick=False)
    console = _Quiet()
    assert train_missing(runs, console=console) == {n: "trained" for n in runs.names}
    assert calls == [("ude-adam", None), ("ude-lbfgs", tmp_path / "ude-adam"),
                     ("node-adam", None), ("node-lbfgs", tmp_path / "node-adam")]
    assert any(line.startswith("run 2/4 ude-lbfgs: training 1000 steps from ude-adam's weights")
               for line in console.lines), console.lines
    calls.clear()
    assert set(train_missing(runs, console=console).values()) == {"kept"}
    assert calls == []
    # an interrupted run resumes from its own checkpoint (init_from is for fresh starts)
    summary = tmp_path / "ude-lbfgs" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "stopped"}))
    assert train_missing(runs, console=console)["ude-lbfgs"] == "resumed"
    assert calls == [("ude-lbfgs", None)]
    # another config in a run's folder (here: the quick steps) is not taken as finished
    calls.clear()
    quick_here = Runs(mod.NAME, mod.RUNS, tmp_path, quick=True)
    train_missing(quick_here, console=console)
    assert [c[0] for c in calls] == list(quick_here.names)


def test_stop_during_a_run_writes_no_report(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second run: exit 130 naming the run, the first run kept, no report;
    rerunning continues with the stopped run."""
    from nodekit import _loop

    calls = []
    monkeypatch.setattr(_loop, "_train", _fake_train(calls, stop_at="g1d-anode"))
    rc = main(["reproduce", "dupont2019-anode", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "stopped in run 2/8 g1d-anode at step 7 (SIGINT) during reproduce dupont2019-anode" in err
    assert "no report was written" in err and "Traceback" not in err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "summary.json").exists()
    assert [c[0] for c in calls] == ["g1d-node", "g1d-anode"]
    calls.clear()
    monkeypatch.setattr(_loop, "_train", _fake_train(calls, stop_at="spheres-node-seed0"))
    assert main(["reproduce", "dupont2019-anode", "--workdir", str(tmp_path)]) == 130
    assert [c[0] for c in calls] == ["g1d-anode", "spheres-node-seed0"]


#: Tiny overrides for the end-to-end test: a few steps of a small model on a short series.
TINY = ["train.steps=3", "train.plots=false", "data.n_points=60", "train.batch_size=4",
        "model.field.width=8"]


def test_reproduction_end_to_end_through_train(tmp_path, capsys):
    """chen2018-spiral with tiny overrides: its run is a standard nodekit.train run in
    quick/, a second pass trains nothing, and the report's claims are the numbers in
    the run's files."""
    report = run_experiment("chen2018-spiral", tmp_path, quick=True, overrides=TINY)
    err = capsys.readouterr().err
    assert "run 1/1 spiral: training 3 steps" in err and "training 3 steps" in err
    root = tmp_path / QUICK_DIR
    assert report == root / "report.md" and not (tmp_path / "spiral").exists()
    run_dir = root / "spiral"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest.nkc"):
        assert (run_dir / f).is_file(), f
    run_summary = json.loads((run_dir / "summary.json").read_text())
    assert run_summary["status"] == "ok" and run_summary["steps"] == 3

    # a second pass trains nothing
    before = {p: p.read_bytes() for p in (run_dir / "metrics.jsonl",
                                          run_dir / "checkpoints" / "latest.nkc")}
    mod = importlib.import_module("nodekit.experiments.chen2018_spiral")
    console = _Quiet()
    runs = Runs(mod.NAME, mod.RUNS, root, quick=True, overrides=TINY)
    assert train_missing(runs, console=console) == {"spiral": "kept"}
    assert "finished earlier (3 steps), kept" in console.lines[0]
    assert all(p.read_bytes() == b for p, b in before.items())

    # the claims are computed from the run's files
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if not r.get("eval")]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["quick"] is True and len(summary["claims"]) == 3
    first, final = np.mean(losses[:3]), np.mean(losses[-3:])
    fits, whole, _ = summary["claims"]
    assert f"{first:.3f}" in fits["measured"] and f"{final:.4f}" in fits["measured"]
    assert fits["holds"] is bool(final < first / 10)
    assert f"{run_summary['eval_loss']:.4f}" in whole["measured"]
    assert summary["metrics"]["eval_loss"] == pytest.approx(run_summary["eval_loss"])
    text = report.read_text()
    assert all(c["measured"].split(" ")[0] in text for c in summary["claims"])
    for f in summary["figures"]:
        assert (root / f).is_file()


# ----------------------------------------------------------------- the experiments


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_report_and_claims(name, tmp_path):
    report = run_experiment(name, tmp_path, quick=True, progress=False)
    root = tmp_path / QUICK_DIR
    assert report == root / "report.md" and report.read_text().startswith("# ")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["experiment"] == name and summary["quick"] is True
    assert summary["batch_mode"]
    assert summary["claims"], "an experiment states at least one claim"
    for c in summary["claims"]:
        assert set(c) == CLAIM_KEYS
        assert isinstance(c["holds"], bool) and c["checks"]
        assert all(isinstance(c[k], str) and c[k] for k in ("claim", "paper", "measured"))
    for f in summary["figures"]:
        assert (root / f).is_file()
    # each sub-run is a standard nodekit.train run
    mod = importlib.import_module(f"nodekit.experiments.{dict((r[0], r[1]) for r in _REGISTRY)[name]}")
    for spec in mod.RUNS:
        if not spec.in_quick:
            assert not (root / spec.name).exists()
            continue
        for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest.nkc"):
            assert (root / spec.name / f).is_file(), (spec.name, f)
        assert json.loads((root / spec.name / "summary.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_reproduce_from_an_installed_wheel(tmp_path):
    """Built as a wheel and installed into a fresh virtualenv outside the checkout,
    `nodekit reproduce NAME --quick` finds its configs in the package and writes its
    report; `nodekit train tiny` trains a built-in config by name, and `nodekit.load`
    gives back a model that predicts and plots (the virtualenv reuses this one's
    dependencies through a .pth file)."""
    import os
    import subprocess
    import sys
    import sysconfig

    repo = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(repo)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("nodekit-*.whl")
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=600)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path (its .pth
    # files, e.g. an editable nodekit, are not processed from there)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import nodekit; print(nodekit.__file__)"],
                           check=True, capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(site), where.stdout
    done = subprocess.run([str(env_dir / "bin" / "nodekit"), "reproduce", "chen2018-spiral",
                           "--quick"], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 1/1 spiral: training 600 steps" in done.stderr
    root = elsewhere / "runs" / "reproduce" / "chen2018-spiral" / QUICK_DIR
    assert (root / "report.md").is_file() and (root / "spiral" / "summary.json").is_file()
    assert f"report: {Path('runs/reproduce/chen2018-spiral') / QUICK_DIR / 'report.md'}" in done.stdout
    # a built-in config by name, then the trained model loaded in Python and plotted
    trained = subprocess.run([str(env_dir / "bin" / "nodekit"), "train", "tiny", "--workdir",
                              "tiny-run", "--set", "train.steps=20", "--set", "train.plots=false"],
                             capture_output=True, text=True, cwd=elsewhere, env=env, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    use = (
        "import nodekit, numpy as np\n"
        "from nodekit.plots import plot_trajectory\n"
        "run = nodekit.load('tiny-run')\n"
        "ts, ys = run.task.ts, run.task.ys\n"
        "pred = np.asarray(run.model(ts, ys[0]))\n"
        "assert pred.shape == ys.shape and np.isfinite(pred).all()\n"
        "print(run.step, plot_trajectory(np.asarray(ts), np.asarray(ys), pred, 'fit.png'))\n")
    used = subprocess.run([str(py), "-c", use], capture_output=True, text=True, cwd=elsewhere,
                          env=env, timeout=600)
    assert used.returncode == 0, used.stderr[-3000:]
    assert (elsewhere / "fit.png").stat().st_size > 1000
