"""Sweeps: many members in one compiled program, each equal to its own single run.

The default suite trains one small sweep (float64, the tiny spiral, 8 members in one
program: two learning rates, two kinetic weights, two seeds; the members with the huge
learning rate diverge at their first step), interrupted by a SIGINT and resumed, and
one single run of a member's config; the rest is checked without compiling anything.
The bitwise comparison with an uninterrupted sweep, the CLI end to end and the
multi-device sweep are `slow`.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import nodekit
from nodekit._checkpoint import payload_arrays, read_header

BASE = {
    "precision": "float64",
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 8, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "vmap"},
    "regularisation": {"kinetic": 0.0},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3,
              "progress": False, "plots": False},
}
# lr 1e300 overflows float64 at the first update: those members fault at step 1
GRID = {"optimizer.learning_rate": [1e-2, 1e300], "regularisation.kinetic.weight": [0.0, 0.1]}
HEALTHY = "learning_rate=0.01,kinetic=0.1,seed=1"


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _arrays(path):
    return payload_arrays(read_header(path)[1])


def _sweep_stopped_at(monkeypatch, at, workdir, **kwargs):
    """Run the sweep with a SIGINT sent while a member draws step `at`'s batch."""
    from nodekit.tasks import TrajectoryTask

    batch = TrajectoryTask.batch
    sent = []

    def batch_and_signal(self, step):
        if step == at and not sent:  # once: a second Ctrl-C would end the process
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return batch(self, step)

    monkeypatch.setattr(TrajectoryTask, "batch", batch_and_signal)
    try:
        with pytest.raises(nodekit.Stopped) as e:
            nodekit.sweep(BASE, workdir, **kwargs)
    finally:
        monkeypatch.setattr(TrajectoryTask, "batch", batch)
    return e.value


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep, stopped after its first step and resumed (the same program, reused in
    this process); and the single run of one member."""
    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    try:
        stopped = _sweep_stopped_at(mp, 1, root / "sweep", grid=GRID, seeds=2)
    finally:
        mp.undo()
    at_stop = json.loads((root / "sweep" / "sweep.json").read_text())
    result = nodekit.sweep(BASE, root / "sweep", grid=GRID, seeds=2)
    cfg = nodekit.load_config(root / "sweep" / HEALTHY / "config.yaml")
    single = nodekit.train(cfg, root / "single")
    return {"root": root, "stopped": stopped, "at_stop": at_stop, "result": result,
            "single": single}


def test_a_member_equals_its_single_run(swept):
    """Same seed, learning rate, regulariser weight: the member traced them as inputs of
    the shared step; the single run had them as constants. Parameters, optimiser state,
    every metric row (NFE included) and the summary figures agree to float64 rounding."""
    member, single = swept["root"] / "sweep" / HEALTHY, swept["root"] / "single"
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*")  # noqa: E731
                             if not p.name.startswith("."))
    assert names(member) == names(single)  # the same files as a run of its config
    for ckpt in ("latest.nkc", "best.nkc"):
        a, b = _arrays(member / "checkpoints" / ckpt), _arrays(single / "checkpoints" / ckpt)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)
    ra, rb = _rows(member), _rows(single)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [0, 1, 2, 2, 3, 4, 5, 5]
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        for k in x:
            if k == "step_time_s":
                continue
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-9, abs=1e-12), (x["step"], k)
            else:
                assert x[k] == y[k], (x["step"], k)
    assert "reg_kinetic" in ra[0] and ra[0]["reg_kinetic"] > 0  # the term weighs 0.1 here
    s = json.loads((member / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == 6 and s["config_hash"] == swept["single"]["config_hash"]
    for key in ("final_loss", "eval_loss", "best_eval_loss", "nfe_forward_mean"):
        assert s[key] == pytest.approx(swept["single"][key], rel=1e-9), key
    # the integrator recorded when the ensemble step was traced: the single run's
    assert s["integrator"] == swept["single"]["integrator"] in ("nodekit", "diffrax")


def test_one_program_and_what_rode_its_axis(swept):
    result = swept["result"]
    assert result["status"] == "partial"
    (group,) = result["groups"]
    assert group["size"] == 8 and group["devices"] == 1
    assert group["traced"] == ["seed", "optimizer.learning_rate", "regularisation.kinetic.weight"]
    names = [m["name"] for m in result["members"]]
    assert HEALTHY in names and len(set(names)) == 8
    md = (swept["root"] / "sweep" / "sweep.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    for fig in ("sweep-loss.png", "sweep-metrics.png"):
        assert (swept["root"] / "sweep" / fig).read_bytes()[:4] == b"\x89PNG"


def test_diverging_members_are_frozen_and_the_others_finish(swept):
    members = {m["name"]: m for m in swept["result"]["members"]}
    bad = [m for m in members.values() if m["values"]["optimizer.learning_rate"] > 1]
    good = [m for m in members.values() if m["values"]["optimizer.learning_rate"] < 1]
    assert len(bad) == len(good) == 4
    for m in good:
        assert m["status"] == "ok" and m["steps"] == 6 and m["message"] is None
    for m in bad:
        assert m["status"] in ("nonfinite", "solver_failure"), m
        assert m["steps"] == 1 and "step 1" in m["message"] and "learning rate" in m["message"]
        w = Path(m["workdir"])
        s = json.loads((w / "summary.json").read_text())
        assert s["status"] == m["status"] and s["message"] == m["message"]
        header, payload = read_header(w / "checkpoints" / "latest.nkc")
        assert header["step"] == 1  # its last good state: the update that overflowed is not in it
        assert all(np.isfinite(a).all() for a in payload_arrays(payload) if a.dtype.kind == "f")
        assert max(r["step"] for r in _rows(w)) == 0  # no row after its fault


def test_a_stopped_sweep_resumes_and_ended_members_are_not_retrained(swept, tmp_path):
    e, at_stop = swept["stopped"], swept["at_stop"]
    assert e.exit_code == 130 and e.signal == "SIGINT" and "call nodekit.sweep again" in str(e)
    assert at_stop["status"] == "stopped"
    assert [m["status"] for m in at_stop["members"]] == ["stopped (SIGINT)"] * 8
    assert all(m["steps"] == 1 for m in at_stop["members"])
    w = swept["root"] / "sweep"
    # every member resumed from its checkpoint at step 1 (the diverging ones to fault there)
    s = json.loads((w / HEALTHY / "summary.json").read_text())
    assert s["resumed_from_step"] == 1 and s["steps"] == 6
    # a third call: every member ended (ok or on a fault), nothing is trained again
    before = {p: p.stat().st_mtime_ns for p in w.rglob("metrics.jsonl")}
    again = nodekit.sweep(BASE, w, grid=GRID, seeds=2)
    assert again["groups"] == [] and all(m["skipped"] for m in again["members"])
    assert [m["status"] for m in again["members"]] == [m["status"] for m in swept["result"]["members"]]
    assert {p: p.stat().st_mtime_ns for p in w.rglob("metrics.jsonl")} == before


# --------------------------------------------------------------------------- no compiling


def _members(grid, seeds=1, base=BASE, tmp="/tmp/nodekit-sweep-plan"):
    from nodekit._ensemble import plan_groups
    from nodekit._loop import _Console, _Run
    from nodekit._sweep import plan_members

    members = plan_members(nodekit.validate_config(base), tmp, grid=grid, seeds=seeds)
    for m in members:
        m.run = _Run(m.config, m.workdir, restart=False, init_from=None, cli=False,
                     console=_Console("quiet"), t_start=0.0)
        m.run.accept_task()
    return members, plan_groups(members)


def test_members_whose_shapes_or_static_settings_differ_form_separate_groups():
    members, groups = _members({"model.field.width": [4, 8], "solver.rtol": [1e-5, 1e-6],
                                "optimizer.learning_rate": [1e-3, 1e-2]}, seeds=2)
    assert len(members) == 16 and len(groups) == 4
    for g in groups:
        widths = {m.config.model.field.width for m in g.members}
        rtols = {m.config.solver.rtol for m in g.members}
        assert len(widths) == len(rtols) == 1 and len(g.members) == 4
        assert g.traced == ["seed", "optimizer.learning_rate"] and g.lr_traced


def test_data_drawn_from_the_seed_rides_the_axis():
    """A toy density's samples come from the seed: members keep their own data, passed
    to the shared step as inputs (the density's steer width is static: its own group)."""
    base = {"task": "density", "data": {"n_train": 64, "n_test": 32},
            "model": {"field": {"width": 8, "depth": 1}}, "train": {"batch_size": 16}}
    members, groups = _members({"regularisation.steer.width": [0.1, 0.2]}, seeds=3, base=base)
    assert len(groups) == 2
    for g in groups:
        assert set(g.swapped) == {"test_x", "train_x"}
        assert g.traced == ["seed", "task data 'test_x'", "task data 'train_x'"]
    x = [m.run.task.train_x for m in groups[0].members]
    assert not np.array_equal(x[0], x[1])
    members, groups = _members({}, seeds=2, base={**base, "data": {**base["data"], "seed": 3,
                                                                   "test_seed": 4}})
    (g,) = groups
    assert g.swapped == () and g.traced == ["seed"]  # the same data: kept as constants


def test_member_names_and_grid_options():
    from nodekit._sweep import parse_grid, plan_members

    grid = parse_grid(["optimizer.learning_rate=1e-3, 3e-3", "model.field.activation=tanh,relu"])
    assert grid == {"optimizer.learning_rate": [1e-3, 3e-3], "model.field.activation": ["tanh", "relu"]}
    members = plan_members(nodekit.validate_config(BASE), "/tmp/x", grid=grid, seeds=2)
    assert [m.name for m in members[:3]] == [
        "learning_rate=0.001,activation=tanh,seed=0", "learning_rate=0.001,activation=tanh,seed=1",
        "learning_rate=0.001,activation=relu,seed=0"]
    assert members[5].config.optimizer.learning_rate == 3e-3
    assert members[5].config.model.field.activation == "tanh" and members[5].config.seed == 1
    assert members[0].workdir == Path("/tmp/x") / members[0].name
    # the regularisers' shorthand: kinetic: 0.0 in the config, its weight swept
    (m,) = plan_members(nodekit.validate_config(BASE), "/tmp/x",
                        grid={"regularisation.kinetic.weight": [0.5]})
    assert m.config.regularisation.kinetic.weight == 0.5 and m.name == "kinetic=0.5"


@pytest.mark.parametrize("args, words", [
    (["--grid", "optimizer.lr=1,2"], "optimizer.lr: unknown key 'lr'"),
    (["--grid", "optimizer.learning_rate=-1,2"], "(the value -1 of --grid optimizer.learning_rate)"),
    (["--grid", "optimizer.learning_rate"], "must look like key.path=v1,v2"),
    (["--seeds", "0"], "--seeds: got 0"),
    (["--grid", "train.devices=1,2"], "--grid train.devices: train.devices cannot be swept"),
    (["--grid", "seed=1,2", "--seeds", "2"], "give the seeds in one place"),
])
def test_bad_sweep_input_exits_2_with_one_message_and_writes_nothing(args, words, tmp_path, capsys):
    from nodekit.cli import main

    rc = main(["sweep", "tiny", "--workdir", str(tmp_path / "w"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_a_sweep_section_is_validated_and_train_points_to_sweep(tmp_path, capsys):
    from nodekit.cli import main

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "sweep": {"grid": GRID, "seeds": 2}}))
    assert main(["validate", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert "valid sweep of 8 member(s)" in err
    assert yaml.safe_load(out)["sweep"] == {"grid": GRID, "seeds": 2}
    rc = main(["train", str(cfg), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and "sweep: this config describes a sweep" in err and "nodekit sweep CONFIG" in err
    assert not (tmp_path / "w").exists()
    cfg.write_text(yaml.safe_dump({**BASE, "sweep": {"grid": {"optimizer.learning_rate": [1e-2, 0]}}}))
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.learning_rate: got 0" in err and "sweep.grid.optimizer.learning_rate" in err
    with pytest.raises(nodekit.ConfigError, match="nodekit.sweep"):
        nodekit.train({**BASE, "sweep": {"seeds": 2}}, tmp_path / "w2")
    assert not (tmp_path / "w2").exists()


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_resumed_sweep_ends_bitwise_like_the_uninterrupted_one(swept, tmp_path):
    ref = nodekit.sweep(BASE, tmp_path / "ref", grid=GRID, seeds=2)
    for m in ref["members"]:
        a, b = tmp_path / "ref" / m["name"], swept["root"] / "sweep" / m["name"]
        for ckpt in ("latest.nkc", "best.nkc"):
            if (a / "checkpoints" / ckpt).exists():
                for x, y in zip(_arrays(a / "checkpoints" / ckpt), _arrays(b / "checkpoints" / ckpt)):
                    assert np.array_equal(x, y), (m["name"], ckpt)
        strip = lambda rows: [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows]  # noqa: E731
        assert strip(_rows(a)) == strip(_rows(b)), m["name"]


@pytest.mark.slow
def test_cli_sweep_end_to_end(tmp_path):
    from .helpers import run_cli

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "precision": "float32"}))
    p = run_cli("sweep", cfg, "--workdir", tmp_path / "w", "--grid",
                "optimizer.learning_rate=1e-2,3e-2", "--seeds", "2", "--set", "train.steps=4")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "done: 4 of 4 members ok in 1 program(s)" in p.stdout
    assert p.stdout.count("| learning_rate=") == 4
    s = json.loads((tmp_path / "w" / "sweep.json").read_text())
    assert s["status"] == "ok" and [m["steps"] for m in s["members"]] == [4] * 4


MULTI = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import nodekit
    from nodekit._checkpoint import payload_arrays, read_header
    base = {"data": {"n_points": 100, "batch_time": 5},
            "model": {"field": {"width": 8, "depth": 1}},
            "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "joint"},
            "train": {"steps": 4, "batch_size": 4, "progress": False, "plots": False,
                      "compile_cache": False}}
    grid = {"optimizer.learning_rate": [1e-2, 3e-2, 1e-1]}
    out = {}
    for dev in (1, 2):
        base["train"]["devices"] = dev
        r = nodekit.sweep(base, sys.argv[1] + f"/d{dev}", grid=grid)
        out[dev] = r
    diff = 0.0
    for m in out[1]["members"]:
        a = payload_arrays(read_header(m["workdir"] + "/checkpoints/latest.nkc")[1])
        b = payload_arrays(read_header(m["workdir"].replace("/d1/", "/d2/")
                                       + "/checkpoints/latest.nkc")[1])
        diff = max(diff, max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)))
    print("RESULT " + json.dumps({"diff": diff, "groups": out[2]["groups"],
                                  "status": [m["status"] for m in out[2]["members"]]}))
    """)


@pytest.mark.slow
def test_members_spread_over_devices_match_one_device(tmp_path):
    """3 members on 2 emulated devices (padded to 4, the pad masked) against 1 device."""
    script = tmp_path / "multi.py"
    script.write_text(MULTI)
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(next(line for line in p.stdout.splitlines()
                          if line.startswith("RESULT "))[len("RESULT "):])
    (g,) = out["groups"]
    assert g["devices"] == 2 and g["size"] == 3 and g["padded_size"] == 4
    assert out["status"] == ["ok"] * 3
    assert out["diff"] < 1e-5
