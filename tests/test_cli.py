"""The `nodekit` command line as users meet it: exit codes (0 ok, 2 bad input, 3 a
training fault), one clear message and no traceback, and the files of a run.

Most bad-input cases call `nodekit.cli.main([...])` in-process (milliseconds each); a
few real `python -m nodekit` subprocesses prove the exit codes end to end, and five
training subprocesses (seconds each: JAX import + compile) cover a run's files, resuming,
and the two training faults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from nodekit.cli import main

from .helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SPIRAL = ROOT / "configs" / "spiral.yaml"
TINY_STEPS = 30

# A config that reliably makes the loss non-finite at step 1: one SGD step of size 1e30
# sends the weights to ~1e30, and a fixed-step Euler solve (no step rejection, so no
# solver failure first) then overflows float32.
NONFINITE = ["optimizer.name=sgd", "optimizer.learning_rate=1e30", "solver.name=euler",
             "solver.dt0=0.25"]


# --------------------------------------------------------------------------- helpers


def _train_rows(workdir) -> list[dict]:
    rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if l]
    return [r for r in rows if not r.get("eval")]


def _like(overrides=()):
    """A `(model, opt_state)` of the tiny config's shapes, to load its checkpoints into."""
    import jax

    from nodekit._config import load_config
    from nodekit._build import initial_state

    cfg = load_config(TINY, list(overrides))
    _, model, _, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    return cfg, (model, opt_state)


def assert_bad_input(rc: int, out: str, err: str, *needles: str) -> str:
    """Exit code 2, nothing on stdout, exactly one stderr line `nodekit: error: ...`
    holding every needle, no traceback. Returns the line."""
    assert "Traceback" not in err and "Traceback" not in out, err
    # (a progress line, `nodekit   3.0s  loading data ...`, appears only if the input takes
    # seconds to check; it is not a message)
    lines = [l for l in err.splitlines() if not re.match(r"nodekit +\d+\.\ds  ", l)]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("nodekit: error: "), lines[0]
    assert out == "", out
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def _validate(capsys, path, *overrides):
    args = ["validate", str(path)]
    for o in overrides:
        args += ["--set", o]
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# --------------------------------------------------------------------------- bad configs, in-process

#: (file text, substrings the one error line must hold)
BAD_FILES = {
    "unknown-key": ("solver:\n  rtoll: 1.0e-5\n",
                    ["solver.rtoll", "unknown key 'rtoll'", "did you mean 'rtol'?"]),
    "unknown-key-deep": ("model:\n  field:\n    widht: 3\n",
                         ["model.field.widht", "did you mean 'width'?"]),
    "unknown-section": ("sover:\n  name: tsit5\n", ["sover", "did you mean 'solver'?"]),
    "unknown-regulariser": ("regularisation:\n  kinetc: 0.1\n",
                            ["regularisation.kinetc", "did you mean 'kinetic'?"]),
    "wrong-type": ("train:\n  steps: many\n", ["train.steps", "'many'", "integer"]),
    "wrong-type-section": ("solver: 3\n", ["solver", "got 3"]),
    "wrong-type-name": ("optimizer:\n  name: [adam]\n", ["optimizer.name", "string"]),
    "out-of-range-rtol": ("solver:\n  rtol: -1.0\n", ["solver.rtol", "-1.0", "greater than 0"]),
    "out-of-range-width": ("model:\n  field: {width: 0}\n", ["model.field.width", "got 0"]),
    "out-of-range-steps": ("train:\n  steps: 1000000000\n", ["train.steps", "1000000000"]),
    "non-finite-lr": ("optimizer:\n  learning_rate: .inf\n",
                      ["optimizer.learning_rate", "finite"]),
    "unknown-solver": ("solver:\n  name: tsit\n",
                       ["solver.name", "unknown solver 'tsit'", "did you mean 'tsit5'?", "dopri5"]),
    "unknown-optimizer": ("optimizer:\n  name: adamm\n",
                          ["optimizer.name", "unknown optimizer 'adamm'", "did you mean 'adam'?"]),
    "unknown-activation": ("model:\n  field: {activation: relux}\n",
                           ["model.field.activation", "'relux'", "did you mean 'relu'?"]),
    "malformed-yaml": ("solver: [1, 2\ntrain: {}\n", ["is not valid YAML", "line"]),
    "bad-indentation": ("solver:\n  rtol: 1.0e-5\n atol: 1.0\n", ["is not valid YAML", "line 3"]),
    "not-a-mapping": ("- solver\n- train\n", ["must hold a mapping", "list"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_file_is_refused(case, tmp_path, capsys):
    text, needles = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    assert_bad_input(*_validate(capsys, path), *needles)


#: (override, substrings of the error line)
BAD_OVERRIDES = {
    "not-a-number": ("solver.rtol=abc", ["solver.rtol", "'abc'", "number"]),
    "unknown-section": ("nosuch.key=1", ["nosuch", "unknown key 'nosuch'", "Allowed keys"]),
    "unknown-key": ("solver.rtoll=1e-5", ["solver.rtoll", "did you mean 'rtol'?"]),
    "no-equals": ("solver", ["'solver'", "key.path=value"]),
    "empty-segment": ("solver..rtol=1", ["empty key segment"]),
    "value-not-section": ("solver.rtol.x=1", ["'solver.rtol' is a value, not a section"]),
    "unknown-solver": ("solver.name=tsit", ["solver.name", "did you mean 'tsit5'?"]),
    "empty-value": ("train.steps=", ["train.steps", "None"]),
    "fraction-for-int": ("train.steps=1.5", ["train.steps", "1.5"]),
    "python-tag": ("seed=!!python/object/apply:os.getcwd []", ["seed"]),
    "literal-typo": ("precision=float46", ["precision", "'float46'", "did you mean 'float64'?"]),
    "cut-short-name": ("train.on_nonfinite=skip", ["train.on_nonfinite", "did you mean 'skip_step'?"]),
    "bad-checkpoints": ("solver.checkpoints=autoo", ["solver.checkpoints", "'auto', null"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_bad_override_is_refused(case, capsys):
    override, needles = BAD_OVERRIDES[case]
    assert_bad_input(*_validate(capsys, TINY, override), *needles)


def test_missing_config_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    assert_bad_input(*_validate(capsys, path), "does not exist", "nope.yaml")


def test_config_path_is_a_directory(tmp_path, capsys):
    assert_bad_input(*_validate(capsys, tmp_path), "is a directory")


def test_non_utf8_config(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 0\n# caf\xe9\n".encode("latin-1"))
    assert_bad_input(*_validate(capsys, path), "not UTF-8", "byte")


def test_python_object_tag_is_refused_and_not_run(tmp_path, capsys):
    """`yaml.safe_load` only: a Python object tag is refused, never executed."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert_bad_input(*_validate(capsys, path), "evil.yaml", "python/object/apply:os.system")
    assert not marker.exists()


def test_empty_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert_bad_input(*_validate(capsys, path), "empty")


def test_boolean_for_integer_is_refused(capsys):
    assert_bad_input(*_validate(capsys, TINY, "model.field.width=true"), "model.field.width")


def test_duplicate_key_is_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("solver:\n  rtol: 1.0e-3\nsolver:\n  atol: 1.0e-3\n")
    assert_bad_input(*_validate(capsys, path), "solver", "duplicate")


@pytest.mark.parametrize("override", ["data.t1=.inf", "data.noise=.inf"])
def test_non_finite_data_value_is_refused(override, capsys):
    assert_bad_input(*_validate(capsys, TINY, override), override.split("=")[0], "finite")


def test_validate_catches_batch_time_longer_than_data(capsys):
    assert_bad_input(*_validate(capsys, TINY, "data.batch_time=500"), "data.batch_time")


def test_train_refuses_batch_time_longer_than_data(tmp_path, capsys):
    rc = main(["train", str(TINY), "--workdir", str(tmp_path / "w"), "--set", "data.batch_time=500"])
    cap = capsys.readouterr()
    assert_bad_input(rc, cap.out, cap.err, "data.batch_time", "500", "n_points")


def test_union_error_names_the_plain_key_path(capsys):
    line = assert_bad_input(*_validate(capsys, TINY, "train.devices=0"), "train.devices")
    assert line.startswith("nodekit: error: train.devices: ")


@pytest.mark.parametrize("override, hint", [("solver.name=dopri", "dopri5"),
                                            ("optimizer.name=adma", "adam")])
def test_did_you_mean_picks_the_nearest_name(override, hint, capsys):
    assert_bad_input(*_validate(capsys, TINY, override), f"did you mean {hint!r}?")


def test_error_line_stays_short_for_huge_values(tmp_path, capsys):
    names = "abcde"
    items = ["&a [" + ",".join(["x"] * 10) + "]"]
    items += [f"&{n} [" + ",".join([f"*{p}"] * 10) + "]" for p, n in zip(names, names[1:])]
    path = tmp_path / "bomb.yaml"
    path.write_text("seed: [" + ", ".join(items) + "]\n")
    line = assert_bad_input(*_validate(capsys, path), "seed")
    assert len(line) < 1000, len(line)


def test_override_on_recursive_yaml_is_refused(tmp_path, capsys):
    path = tmp_path / "rec.yaml"
    path.write_text("seed: &a [*a]\n")
    assert_bad_input(*_validate(capsys, path, "train.steps=3"), "seed")


def test_deeply_nested_yaml_is_refused(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("seed: " + "[" * 1000 + "]" * 1000 + "\n")
    assert_bad_input(*_validate(capsys, path), "deep.yaml")


def test_argparse_errors_exit_2_without_traceback(capsys):
    for argv in (["trian", "x.yaml"], ["train"], ["validate", str(TINY), "--set"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err
        assert err.splitlines()[-1].startswith("nodekit"), err


# --------------------------------------------------------------------------- good commands


def test_validate_prints_resolved_config(capsys):
    from nodekit import Config

    rc, out, err = _validate(capsys, SPIRAL, "train.steps=7")
    assert rc == 0, err
    resolved = yaml.safe_load(out)
    assert set(resolved) == set(Config.model_fields)
    assert resolved["train"]["steps"] == 7
    assert resolved["solver"]["name"] == "dopri5"
    assert resolved["optimizer"]["learning_rate"] == 3e-3
    assert "max_steps" in resolved["solver"]  # defaults are filled in
    assert err.startswith("# ok:") and "Traceback" not in err


def test_tiny_config_opens_with_command_and_expectation():
    head = TINY.read_text().splitlines()[:2]
    assert head[0].startswith("# nodekit train configs/tiny.yaml")
    assert head[1].startswith("# Expected")


def test_info_prints_versions(capsys):
    import jax

    import nodekit

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"nodekit  {nodekit.__version__}" in out
    assert jax.__version__ in out and "backend" in out and "device" in out


def test_reproduce_list_and_bad_names(capsys):
    from nodekit.experiments import EXPERIMENTS

    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    rc = main(["reproduce"])
    assert_bad_input(rc, *capsys.readouterr(), "--list")
    rc = main(["reproduce", "no-such-paper"])
    assert_bad_input(rc, *capsys.readouterr(), "unknown experiment 'no-such-paper'")


# --------------------------------------------------------------------------- end to end (subprocesses)
# Each training subprocess costs seconds (JAX import + compile). Every test below owns
# its runs: a module fixture shared by several tests would be built once per xdist
# worker, or make one worker wait for the other.


@pytest.mark.parametrize("case", ["unknown-key", "python-tag", "bad-override"])
def test_subprocess_bad_input_exit_2(case, tmp_path):
    """The real console entry point: exit code 2, one line, no traceback, nothing made."""
    workdir = tmp_path / "run"
    if case == "unknown-key":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("solver:\n  rtoll: 1.0e-5\n")
        args, needles = ["validate", cfg], ["solver.rtoll", "did you mean 'rtol'?"]
    elif case == "python-tag":
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f'!!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
        args, needles = ["train", cfg, "--workdir", workdir], ["not valid YAML"]
    else:
        args, needles = ["train", TINY, "--workdir", workdir, "--set", "solver"], ["key.path=value"]
    r = run_cli(*args, timeout=300)
    assert_bad_input(r.returncode, r.stdout, r.stderr, *needles)
    assert not workdir.exists() and not (tmp_path / "pwned").exists()


def _check_run_files(w: Path, steps: int) -> None:
    """The workdir of a finished run: files, metrics rows, summary, checkpoints, plots."""
    from nodekit import load_config
    from nodekit._checkpoint import load_checkpoint, read_header

    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest.nkc",
                 "checkpoints/best.nkc", "plots/loss.png", "plots/trajectory.png"):
        assert (w / name).is_file(), name
    for png in ("loss.png", "trajectory.png"):
        assert (w / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # the resolved config is a config: it loads and describes the same run
    assert load_config(w / "config.yaml").hash() == load_config(TINY).hash()

    rows = _train_rows(w)
    assert [r["step"] for r in rows] == list(range(steps))  # every step once, in order
    for r in rows:
        for key in ("loss", "nfe_forward", "nfe_backward", "step_time_s"):
            assert isinstance(r[key], float) and r[key] >= 0, (key, r)
        assert r["nfe_forward"] > 0

    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == steps
    assert s["final_loss"] == rows[-1]["loss"]
    for key in ("final_loss", "eval_loss", "wall_time_s", "time_to_first_step_s",
                "nfe_forward_mean", "nfe_backward_mean"):
        assert isinstance(s[key], float) and s[key] > 0, (key, s[key])

    cfg, like = _like()
    _, header = load_checkpoint(w / "checkpoints" / "latest.nkc", like, config_hash=cfg.hash())
    assert header["step"] == steps
    best = read_header(w / "checkpoints" / "best.nkc")[0]
    assert best["step"] % cfg.train.eval_every == 0 or best["step"] == steps  # made at an eval
    assert best["meta"]["best"] == pytest.approx(s["best_eval_loss"])


def _phases(stderr: str) -> list[str]:
    """The console's phase lines (`nodekit   1.2s  text`), without their time stamps."""
    return [m.group(1) for m in re.finditer(r"^nodekit +\d+\.\ds  (.*)$", stderr, re.M)]


def test_train_writes_the_run_and_a_rerun_resumes(tmp_path):
    w = tmp_path / "run"
    r = run_cli("train", TINY, "--workdir", w, "--set", "train.metrics=[jsonl,csv,tensorboard]",
                timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"done: {TINY_STEPS} steps" in r.stdout and "summary.json" in r.stdout
    _check_run_files(w, TINY_STEPS)
    s = json.loads((w / "summary.json").read_text())
    assert s["resumed_from_step"] == 0
    first_rows = _train_rows(w)
    # what a log shows (stderr is not a terminal: plain lines, no bar), phase by phase
    phases = _phases(r.stderr)
    assert phases[0].startswith("data loaded, trajectory task built")
    assert phases[1] == f"starting a new run in {w}"
    assert phases[2].startswith(("compiling the training step", "loading the compiled training"))
    assert phases[3].startswith("training step ready") and phases[4] == f"training {TINY_STEPS} steps"
    assert phases[5].startswith("step 1/30  loss ") and phases[-1] == "writing plots"
    assert any(p.startswith(f"step {TINY_STEPS}/{TINY_STEPS}  loss") for p in phases)
    # the metrics in the other formats: the same numbers
    import csv

    with open(w / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [r["step"] for r in first_rows]
    assert [float(r["loss"]) for r in table] == [r["loss"] for r in first_rows]
    assert {r["integrator"] for r in table} == {s["integrator"]}
    # recorded while the step was traced (or read back from its cache entry): tiny.yaml
    # solves per sample (batch mode vmap), which auto leaves to Diffrax, and says so
    assert s["integrator"] == "diffrax" and "per-sample batch" in s["integrator_reason"]
    with open(w / "eval.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [9, 19, 29]
    from .test_train import _read_records

    (events,) = (w / "tensorboard").iterdir()
    points = [(e[2], e["scalars"]["train/loss"]) for e in _read_records(events)
              if "train/loss" in e.get("scalars", {})]
    assert points == [(r["step"], pytest.approx(r["loss"], rel=1e-7)) for r in first_rows]

    # the same command with more steps goes on from the checkpoint instead of starting over
    r = run_cli("train", TINY, "--workdir", w, "--set", "train.steps=40", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "train.steps changed from 30 to 40 (constant learning rate): continuing this run " \
           "from step 30 to 40" in _phases(r.stderr)
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "ok" and s["resumed_from_step"] == TINY_STEPS and s["steps"] == 40
    rows = _train_rows(w)
    assert [row["step"] for row in rows] == list(range(40))  # continued, no step twice
    assert rows[:TINY_STEPS] == first_rows  # the old rows kept as they were
    from nodekit._checkpoint import read_header

    assert read_header(w / "checkpoints" / "latest.nkc")[0]["step"] == 40


# --------------------------------------------------------------------------- training faults


def _fault_line(r) -> str:
    """The one `nodekit: training stopped: ...` line of a run that exited 3."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 3, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.startswith("nodekit:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nodekit: training stopped: "), lines[0]
    return lines[0]


def _sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_nonfinite_loss_exits_3_and_keeps_a_good_checkpoint(tmp_path):
    import jax
    import numpy as np

    from nodekit._checkpoint import load_checkpoint

    w = tmp_path / "run"
    line = _fault_line(run_cli("train", TINY, "--workdir", w, *_sets(NONFINITE), timeout=300))
    fault_step = int(re.search(r"step (\d+)", line).group(1))
    assert "non-finite" in line
    for hint in ("learning_rate", "clip_norm", "on_nonfinite=skip_step", "latest.nkc"):
        assert hint in line, hint
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "nonfinite"

    cfg, like = _like(NONFINITE)
    (model, _), header = load_checkpoint(w / "checkpoints" / "latest.nkc", like,
                                         config_hash=cfg.hash())
    assert header["step"] <= fault_step
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if hasattr(x, "dtype")]
    assert all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))


def test_skip_step_completes(tmp_path):
    w = tmp_path / "run"
    r = run_cli("train", TINY, "--workdir", w, *_sets(NONFINITE),
                *_sets(["train.on_nonfinite=skip_step", "train.steps=10"]), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == 10
    rows = _train_rows(w)
    assert [row["step"] for row in rows] == list(range(10))
    assert [row["step"] for row in rows if row.get("skipped")] == list(range(1, 10))


def test_solver_failure_exits_3_with_suggestions(tmp_path):
    w = tmp_path / "run"
    line = _fault_line(run_cli("train", TINY, "--workdir", w, "--set", "solver.max_steps=2",
                               timeout=300))
    assert "step 0" in line and "max_steps=2" in line
    assert "Try" in line and "solver.rtol: 1e-4" in line and "larger solver.max_steps" in line
    assert "jax.config" not in line  # the fixes in config keys, not Python calls
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "solver_failure"
    assert (w / "checkpoints" / "latest.nkc").is_file()
