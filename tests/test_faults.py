"""Fault injection: a run's files survive kills, stops, tampering, full disks and a
second process (issue 18).

The default part is in-process (one short tiny run, copied for each attack) plus two
short CLI subprocesses; the heavy part (random SIGKILL sweeps during training, resume
and checkpoint writes; a real full tmpfs; two processes of a distributed run; a
second Ctrl-C during a cold compile) is marked `slow`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nodekit
from nodekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "tiny.yaml"

#: 6 steps, checkpoints every 2 (so `previous.nkc` exists), evals every 3, rows every 2
#: (the summary's means must still cover every step), no plots (tested elsewhere).
TINY = {
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 16, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "vmap"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 2,
              "log_every": 2, "progress": False, "plots": False},
}


@pytest.fixture(autouse=True, scope="module")
def _compile_cache():
    """JAX's persistent compilation cache, as the `nodekit` command turns it on (the
    library leaves that to its caller): runs of one config compile once."""
    nodekit.enable_compile_cache()


def _cfg(**train):
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    return cfg


def _rows(w: Path) -> list[dict]:
    out = []
    for line in (w / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _header(path: Path) -> dict:
    from nodekit._checkpoint import read_header

    return read_header(path)[0]


def _payload(path: Path) -> bytes:
    from nodekit._checkpoint import read_header

    return read_header(path)[1]


def _one_error_line(err: str) -> str:
    """The one `nodekit: ...` message (progress lines, which carry a time stamp, aside)."""
    lines = [l for l in err.splitlines() if l.startswith("nodekit:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 6-step run (the reference every attack is compared with)."""
    w = tmp_path_factory.mktemp("faults") / "ref"
    nodekit.train(TINY, w)
    return w


def _copy(finished: Path, tmp_path: Path) -> Path:
    w = tmp_path / "run"
    shutil.copytree(finished, w)
    (w / ".nodekit.lock").unlink(missing_ok=True)
    return w


# --------------------------------------------------------------------------- the workdir lock


_HOLD = """
import sys, time
from nodekit._rundir import Workdir
wd = Workdir(sys.argv[1]); wd.open(); print("locked", flush=True); time.sleep(60)
"""


def test_lock_names_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    """A second process is refused (exit 2 naming the holder's PID); when the holder is
    killed the OS releases its flock and the next run takes over, noting it."""
    from nodekit._rundir import Workdir

    w = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(w)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(nodekit.InputError, match=f"in use by another nodekit process "
                                                     f"\\(PID {holder.pid}\\)"):
            Workdir(w).open()
    finally:
        holder.kill()
        holder.wait()
    wd = Workdir(w)
    wd.open()  # the killed holder's lock is free again
    try:
        assert any(f"PID {holder.pid}" in n and "took over" in n for n in wd.notes), wd.notes
        with pytest.raises(nodekit.InputError, match=f"PID {os.getpid()}"):
            Workdir(w).open()  # and we hold it now
    finally:
        wd.close()
    assert (w / ".nodekit.lock").read_text() == ""  # released cleanly: no stale PID


# --------------------------------------------------------------------------- metrics logs


def test_metrics_cut_replaces_the_file_and_tolerates_hand_edits(tmp_path):
    """Resume drops the rows at or past the checkpoint and a torn last line by writing a
    new file and renaming it (a reader holding the old file still sees it whole);
    hand-edited lines are kept as they are and skipped by readers."""
    from nodekit._rundir import cut_rows, read_metrics

    p = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1)}) for s in range(6)]
    lines.insert(2, "hand-edited: not json")
    lines.insert(4, json.dumps({"step": "three", "loss": 0.0}))
    lines.append(json.dumps({"step": 2, "eval": True, "eval_loss": 0.5}))
    text = "\n".join(lines) + "\n" + '{"step": 6, "lo'  # torn by a kill
    p.write_text(text)
    old = open(p)
    inode = p.stat().st_ino
    assert cut_rows(p, 4) == 3  # steps 4 and 5, and the torn line
    assert p.stat().st_ino != inode  # replaced, not rewritten in place
    assert old.read() == text  # the old file was never truncated
    old.close()
    kept = p.read_text().splitlines()
    assert kept == [l for l in lines if '"step": 4' not in l and '"step": 5' not in l]
    rows, bad = read_metrics(p)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 2] and bad == 2
    inode = p.stat().st_ino
    assert cut_rows(p, 4) == 0 and p.stat().st_ino == inode  # nothing to do: untouched


# --------------------------------------------------------------------------- stops and resume


def _stop_at(monkeypatch, at: int, config, workdir) -> nodekit.Stopped:
    """Train with a SIGINT sent to this process while step `at` is dispatched (the
    library's handler turns it into a stop request); returns the `Stopped` raised."""
    from nodekit.tasks import TrajectoryTask

    batch = TrajectoryTask.batch

    def batch_and_signal(self, step):
        if step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return batch(self, step)

    monkeypatch.setattr(TrajectoryTask, "batch", batch_and_signal)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(nodekit.Stopped) as e:
            nodekit.train(config, workdir)
    finally:
        monkeypatch.setattr(TrajectoryTask, "batch", batch)
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    return e.value


def test_a_stop_checkpoints_and_a_rerun_ends_bitwise_like_the_uninterrupted_run(
        finished, tmp_path, monkeypatch):
    """SIGINT during step 3: the run ends the step, checkpoints, writes the summary and
    raises `Stopped`; rerunning ends with the same parameters, optimiser state, metric
    rows and summary figures as the uninterrupted run."""
    w = tmp_path / "run"
    e = _stop_at(monkeypatch, 3, TINY, w)
    assert e.signal == "SIGINT" and e.exit_code == 130
    stopped_at = e.step
    assert stopped_at == 3 and "stopped at step 3 (SIGINT); call nodekit.train again" in str(e)
    assert _header(w / "checkpoints" / "latest.nkc")["step"] == stopped_at
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "stopped (SIGINT)" and s["steps"] == stopped_at
    # (and what killed writes leave behind is removed by the next run)
    (w / "checkpoints" / ".latest.nkc.tmp-999-0").write_bytes(b"partial")
    (w / ".summary.json.tmp-5-0").write_bytes(b"{")
    s = nodekit.train(TINY, w)
    # a Python caller's time to first step counts from its call (not from the import of
    # nodekit, long before in this process)
    assert 0 < s["time_to_first_step_s"] <= s["wall_time_s"]
    assert not list(w.rglob(".*.tmp-*"))
    assert any("2 temporary file(s)" in n for n in s["notes"])
    ref = json.loads((finished / "summary.json").read_text())
    assert s["resumed_from_step"] == stopped_at
    for key in ("steps", "final_loss", "final_loss_task", "eval_loss", "best_eval_loss",
                "nfe_forward_mean", "nfe_backward_mean", "solver_failures"):
        assert s[key] == ref[key], key  # (the means cover the unlogged steps too)
    for name in ("latest.nkc", "best.nkc"):
        assert _payload(w / "checkpoints" / name) == _payload(finished / "checkpoints" / name)

    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows]
    assert numbers(_rows(w)) == numbers(_rows(finished))  # no row twice, none lost


# --------------------------------------------------------------------------- checkpoints


def _flip(path: Path, at: int = -10) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


def test_corrupt_latest_falls_back_to_previous_with_a_warning(finished, tmp_path):
    w = _copy(finished, tmp_path)
    previous = _header(w / "checkpoints" / "previous.nkc")["step"]
    assert previous == 4
    _flip(w / "checkpoints" / "latest.nkc")
    s = nodekit.train(TINY, w)
    assert s["resumed_from_step"] == previous and s["status"] == "ok"
    warning = next(n for n in s["notes"] if n.startswith("warning:"))
    assert "checksum" in warning and "previous.nkc (step 4)" in warning
    kept = list((w / "checkpoints").glob("latest.unusable-*.nkc"))
    assert len(kept) == 1  # the unusable file is kept for inspection, not deleted
    assert _payload(w / "checkpoints" / "latest.nkc") == _payload(finished / "checkpoints" / "latest.nkc")


def test_no_usable_checkpoint_is_refused_without_advice_to_delete(finished, tmp_path, capsys):
    w = _copy(finished, tmp_path)
    for name in ("latest.nkc", "previous.nkc"):
        _flip(w / "checkpoints" / name)
    before = {p: p.read_bytes() for p in w.rglob("*") if p.is_file() and p.name != ".nodekit.lock"}
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(TINY))
    rc = main(["train", str(cfg), "--workdir", str(w)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "latest.nkc" in line and "previous.nkc" in line
    assert "--restart" in line and "--init-from" in line and "elete" not in line
    after = {p: p.read_bytes() for p in w.rglob("*") if p.is_file() and p.name != ".nodekit.lock"}
    assert after == before  # nothing touched


def _craft(path: Path, edit) -> None:
    """Rewrite a checkpoint with `edit(header, payload)` and a valid checksum."""
    import hashlib

    b = path.read_bytes()
    n = struct.unpack("<Q", b[8:16])[0]
    header, payload = edit(json.loads(b[16:16 + n]), b[16 + n:])
    header["payload_bytes"] = len(payload)
    fields = {k: v for k, v in header.items() if k != "sha256"}
    header["sha256"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()
                                      + payload).hexdigest()
    hb = json.dumps(header).encode()
    path.write_bytes(b"NODEKIT1" + struct.pack("<Q", len(hb)) + hb + payload)


def _nan_first_array(h, p):
    start = p.index(b"\n", p.index(b"NUMPY")) + 1
    n = int(np.prod(h["leaves"][0][0]))
    return h, p[:start] + np.full(n, np.nan, np.float32).tobytes() + p[start + 4 * n:]


def _set(key, value):
    def edit(h, p):
        h[key] = value
        return h, p
    return edit


def _set_best(h, p):
    h["meta"]["best"] = "low"
    return h, p


@pytest.mark.parametrize("edit, words", [
    (_nan_first_array, "non-finite values"),
    (_set("step", -3), "step -3"),
    (_set("step", True), "step True"),
    (_set("leaves", [[["x"], "float32"]]), "list of arrays"),
    (lambda h, p: (h, p.replace(b"'descr': '<f4'", b"'descr': '<i4'", 1)), "cannot be read"),
    (_set_best, "best loss 'low'"),
])
def test_crafted_checkpoint_with_valid_checksum_is_refused(finished, tmp_path, edit, words):
    from nodekit import CheckpointError
    from nodekit._build import state_shapes
    from nodekit._checkpoint import load_checkpoint
    from nodekit._optim import make_optimizer
    from nodekit.tasks import make_task

    path = tmp_path / "c.nkc"
    shutil.copy(finished / "checkpoints" / "latest.nkc", path)
    cfg = nodekit.validate_config(TINY)
    shapes = state_shapes(make_task(cfg), make_optimizer(cfg.optimizer, 6), np.uint32(0),
                          split=True)
    load_checkpoint(path, shapes[:2])  # the untouched file loads
    _craft(path, edit)
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(path, shapes[:2])
    assert words in str(e.value) and e.value.reason == "corrupt"


def test_changed_config_names_the_keys_and_the_ways_on(finished, tmp_path):
    w = _copy(finished, tmp_path)
    cfg = json.loads(json.dumps(TINY))
    cfg["solver"]["rtol"] = 1e-4
    cfg["seed"] = 3
    with pytest.raises(nodekit.CheckpointError) as e:
        nodekit.train(cfg, w)
    text = str(e.value)
    assert "solver.rtol 1e-05 -> 0.0001" in text and "seed 0 -> 3" in text
    assert "restart=True" in text and "init_from=" in text and "--restart" not in text


def test_longer_run_with_a_schedule_over_steps_is_refused_with_the_fix(finished, tmp_path):
    """The cosine schedule spans train.steps: more steps would change the learning rate
    of the steps already taken, so the message says how to train longer instead. (The
    run is the finished one, relabelled as a cosine run of 6 steps.)"""
    w = _copy(finished, tmp_path)
    cosine = json.loads(json.dumps(TINY))
    cosine["optimizer"]["schedule"] = "cosine"
    new_hash = nodekit.validate_config(cosine).hash()
    for name in ("latest.nkc", "previous.nkc"):
        _craft(w / "checkpoints" / name, _set("config_hash", new_hash))
    cosine["train"]["steps"] = 9
    with pytest.raises(nodekit.CheckpointError) as e:
        nodekit.train(cosine, w)
    text = str(e.value)
    assert "train.steps changed from 6 to 9" in text and "'cosine'" in text
    assert "keep train.steps=6" in text and f"init_from={str(w)!r}" in text
    cosine["train"]["steps"] = 4
    with pytest.raises(nodekit.CheckpointError, match="at step 6, past train.steps=4"):
        nodekit.train(cosine, w)


# --------------------------------------------------------------------------- --restart, init_from


def test_restart_checks_the_input_first_and_keeps_the_old_run_until_a_checkpoint(
        finished, tmp_path, capsys):
    import yaml

    w = _copy(finished, tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    before = {p.relative_to(w): p.read_bytes() for p in w.rglob("*") if p.is_file()
              and p.name != ".nodekit.lock"}
    rc = main(["train", str(cfg), "--workdir", str(w), "--restart", "--set", "train.devices=100"])
    assert rc == 2 and "train.devices" in _one_error_line(capsys.readouterr().err)
    after = {p.relative_to(w): p.read_bytes() for p in w.rglob("*") if p.is_file()
             and p.name != ".nodekit.lock"}
    assert after == before
    # a restart moves the run aside; the new run's first checkpoint removes it
    from nodekit._rundir import Workdir

    wd = Workdir(w)
    wd.open()
    try:
        assert "moved the previous run" in wd.move_aside()
    finally:
        wd.close()
    assert (w / "previous-run" / "checkpoints" / "latest.nkc").exists()
    assert not (w / "metrics.jsonl").exists()
    s = nodekit.train(TINY, w, restart=True)
    assert s["resumed_from_step"] == 0 and not (w / "previous-run").exists()


def test_init_from_starts_a_new_run_from_the_old_parameters(finished, tmp_path):
    """After a fault, train on with a change: the new run's first step starts from the
    old run's parameters (its step-0 loss is the old model's loss on batch 0), Adam's
    state comes along (same arrays, constant learning rate), and the count restarts."""
    import equinox as eqx

    cfg = _cfg(steps=1, on_nonfinite="skip_step")  # a deliberate change (host side)
    s = nodekit.train(cfg, tmp_path / "new", init_from=finished)
    assert s["init_from"] == {"workdir": str(finished), "step": 6, "optimizer_state": True}
    assert any("parameters and optimiser state" in n for n in s["notes"])
    old = nodekit.load(finished, which="latest")
    expected = float(eqx.filter_jit(old.task.loss)(old.model, old.task.batch(0), None)[0])
    first = json.loads((tmp_path / "new" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    np.testing.assert_allclose(first["loss"], expected, rtol=1e-5)
    assert first["loss"] != old.metrics[0]["loss"]  # (not the untrained model's)
    wide = json.loads(json.dumps(TINY))
    wide["model"]["field"]["width"] = 8
    with pytest.raises(nodekit.InputError, match="differs from this config's"):
        nodekit.train(wide, tmp_path / "wide", init_from=finished)
    assert not (tmp_path / "wide").exists()  # refused before anything was written
    with pytest.raises(nodekit.InputError, match="own workdir"):
        nodekit.train(TINY, finished, init_from=finished)


# --------------------------------------------------------------------------- resources


def test_full_disk_mid_run_exits_3_and_keeps_checkpoint_and_summary(finished, tmp_path,
                                                                     monkeypatch):
    """ENOSPC while appending a metric row (injected): a training fault (exit code 3)
    naming the file, the last checkpoint intact, the summary written."""
    from nodekit import _rundir

    w = _copy(finished, tmp_path)
    dumps = _rundir.dumps_row

    def full(row):  # (raised inside the append to metrics.jsonl)
        if row["step"] == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return dumps(row)

    monkeypatch.setattr(_rundir, "dumps_row", full)
    with pytest.raises(nodekit.TrainingFault) as e:
        nodekit.train(_cfg(steps=12), w)
    assert e.value.exit_code == 3 and e.value.status == "disk_full"
    text = str(e.value)
    assert "metrics.jsonl" in text and "No space left" in text and "(step 8)" in text
    assert _header(w / "checkpoints" / "latest.nkc")["step"] == 8
    assert json.loads((w / "summary.json").read_text())["status"] == "disk_full"


def test_a_model_too_large_for_memory_is_refused_before_anything_is_written(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["field"].update(width=65536, depth=3)
    with pytest.raises(nodekit.TrainingFault) as e:
        nodekit.train(cfg, tmp_path / "run")
    assert e.value.exit_code == 3 and e.value.status == "out_of_memory"
    assert "model.field.width=65536" in str(e.value) and "GiB" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_unusable_cache_folder_is_skipped_with_a_note(tmp_path, monkeypatch):
    """`NODEKIT_CACHE_DIR` naming a file: the caches are skipped with a note (a cache
    never fails a run); the data cache solves afresh."""
    from nodekit._build import usable_cache_dir
    from nodekit.data._reference import cached_reference

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("NODEKIT_CACHE_DIR", str(tmp_path / "a_file"))
    folder, note = usable_cache_dir("xla")
    assert folder is None and "not usable" in note and "NODEKIT_CACHE_DIR" in note
    ys = cached_reference("t", [1], (2, 1), lambda: np.ones((2, 1), np.float32))
    assert ys.shape == (2, 1)


def test_files_that_are_not_regular_are_refused(finished, tmp_path):
    w = _copy(finished, tmp_path)
    (w / "metrics.jsonl").unlink()
    os.mkfifo(w / "metrics.jsonl")
    with pytest.raises(nodekit.InputError, match="metrics.jsonl' is not a regular file"):
        nodekit.train(TINY, w)
    w2 = tmp_path / "zero"
    (w2 / "checkpoints").mkdir(parents=True)
    os.symlink("/dev/zero", w2 / "checkpoints" / "latest.nkc")
    with pytest.raises(nodekit.InputError, match="latest.nkc' is not a regular file"):
        nodekit.train(TINY, w2)


# --------------------------------------------------------------------------- precision


def test_precision_is_scoped_to_the_run(tmp_path):
    """A float64 run changes nothing for the caller: JAX's x64 flag is as it was, and a
    float32 run after it (same process) has float32 parameters."""
    import jax

    flag = jax.config.jax_enable_x64
    cfg64 = _cfg(steps=1) | {"precision": "float64"}
    nodekit.train(cfg64, tmp_path / "f64")
    assert jax.config.jax_enable_x64 == flag
    nodekit.train(_cfg(steps=1), tmp_path / "f32")
    assert jax.config.jax_enable_x64 == flag
    dtypes = {d for _, d in _header(tmp_path / "f32" / "checkpoints" / "latest.nkc")["leaves"]}
    assert "float64" not in dtypes and "float32" in dtypes
    dtypes = {d for _, d in _header(tmp_path / "f64" / "checkpoints" / "latest.nkc")["leaves"]}
    assert "float64" in dtypes and "float32" not in dtypes


# --------------------------------------------------------------------------- the CLI end to end


def _cli(*args, env=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "nodekit", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_cli_sigterm_stops_with_143_and_a_second_process_is_refused(tmp_path):
    """One training process: a second `train` into its workdir exits 2 naming its PID;
    SIGTERM then ends it with a checkpoint, the summary and exit code 143."""
    w = tmp_path / "run"
    p = _cli("train", TINY_YAML, "--workdir", w, "--set", "train.steps=100000",
             "--set", "train.checkpoint_every=1000000")
    try:
        deadline = time.monotonic() + 240
        while not (w / "metrics.jsonl").exists() or not (w / "metrics.jsonl").read_text():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rc = main(["train", str(TINY_YAML), "--workdir", str(w)])
        assert rc == 2
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    line = _one_error_line(err.replace("nodekit: SIGTERM received", "(signal)"))
    step = int(line.split("stopped at step ")[1].split()[0])
    assert line.endswith("rerun the same command to resume")
    assert "done:" not in out
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "stopped (SIGTERM)" and s["steps"] == step > 0
    assert _header(w / "checkpoints" / "latest.nkc")["step"] == step


def test_cli_ctrl_c_during_start_up_exits_130_and_writes_nothing(tmp_path):
    w = tmp_path / "run"
    p = _cli("train", TINY_YAML, "--workdir", w)
    time.sleep(0.3)  # inside Python's start-up or nodekit's imports
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    line = _one_error_line(err.replace("nodekit: SIGINT received", "(signal)"))
    assert "stopped before training started; nothing was written" in line
    assert not w.exists()


# --------------------------------------------------------------------------- slow: the heavy sweeps


def _rows_ok(w: Path, upto: int, every: int = 1) -> None:
    """Every logged training row below step `upto` present once, in order."""
    steps = [r["step"] for r in _rows(w) if not r.get("eval")]
    want = list(range(0, upto, every))
    assert steps[:len(want)] == want, steps[:len(want) + 3]
    assert len(steps) == len(set(steps)), steps


@pytest.mark.slow
def test_random_kills_never_lose_data_and_end_bitwise(tmp_path):
    """SIGKILL at random moments (mid-step, mid-checkpoint write, during a resume's
    start-up and its metrics cut): after each kill the checkpoint is readable and every
    row it covers is present once; the last rerun ends bit for bit like the
    uninterrupted reference."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    sets = ["--set", "train.steps=150", "--set", "train.checkpoint_every=7",
            "--set", "train.eval_every=10", "--set", "train.log_every=3"]
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                        str(ref), *sets], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    w = tmp_path / "run"
    for i in range(12):
        p = _cli("train", TINY_YAML, "--workdir", w, *sets)
        time.sleep(rng.uniform(0.2, 4.0))
        p.kill()
        p.communicate()
        if (w / "checkpoints" / "latest.nkc").exists():
            _rows_ok(w, _header(w / "checkpoints" / "latest.nkc")["step"], every=3)
    r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                        str(w), *sets], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("latest.nkc", "best.nkc"):
        assert _payload(w / "checkpoints" / name) == _payload(ref / "checkpoints" / name)
    a, b = (json.loads((x / "summary.json").read_text()) for x in (ref, w))
    for key in ("final_loss", "eval_loss", "nfe_forward_mean", "best_eval_loss"):
        assert a[key] == b[key], key

    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows]
    assert numbers(_rows(w)) == numbers(_rows(ref))
    assert not list(w.rglob(".*.tmp-*"))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_real_full_filesystem(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        w = mnt / "run"
        r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                            str(w), "--set", "train.steps=20"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        (mnt / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(mnt).free - 40_000))
        r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                            str(w), "--set", "train.steps=3000", "--set", "train.checkpoint_every=50"],
                           capture_output=True, text=True)
        assert r.returncode == 3, r.stderr
        line = [l for l in r.stderr.splitlines() if l.startswith("nodekit: training stopped")][0]
        assert "No space left on device" in line and "rerun the same command" in line
        step = _header(w / "checkpoints" / "latest.nkc")["step"]
        _rows_ok(w, step)
        assert json.loads((w / "summary.json").read_text())["status"] in ("disk_full", "ok")
        (mnt / "filler").unlink()
        r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                            str(w), "--set", "train.steps=300", "--set", "train.checkpoint_every=50"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _rows_ok(w, 300)
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.slow
def test_distributed_run_with_two_processes(tmp_path):
    """`distributed.enabled: true`: two processes (one CPU device each) with a
    coordinator on localhost train one run over both devices, the same as one process."""
    s = socket.socket()
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
    s.close()
    sets = ["--set", "train.steps=6", "--set", "train.devices=all", "--set",
            "distributed.enabled=true", "--set", f"distributed.coordinator_address=localhost:{port}",
            "--set", "distributed.num_processes=2"]
    procs = [_cli("train", TINY_YAML, "--workdir", tmp_path / "dist", *sets,
                  "--set", f"distributed.process_id={i}") for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    r = subprocess.run([sys.executable, "-m", "nodekit", "train", str(TINY_YAML), "--workdir",
                        str(tmp_path / "one"), "--set", "train.steps=6"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((tmp_path / x / "summary.json").read_text()) for x in ("dist", "one"))
    assert a["status"] == "ok" and a["steps"] == 6
    assert abs(a["final_loss"] - b["final_loss"]) <= 1e-5 * abs(b["final_loss"])
    # SIGTERM to one process (not the one writing the run): both stop at the same step
    s = socket.socket()
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
    s.close()
    sets[sets.index(next(x for x in sets if x.startswith("train.steps")))] = "train.steps=100000"
    sets[sets.index(next(x for x in sets if "coordinator_address" in x))] = \
        f"distributed.coordinator_address=localhost:{port}"
    w = tmp_path / "dist-stop"
    procs = [_cli("train", TINY_YAML, "--workdir", w, *sets, "--set", f"distributed.process_id={i}")
             for i in range(2)]
    deadline = time.monotonic() + 240
    while not (w / "metrics.jsonl").exists() or len((w / "metrics.jsonl").read_text()) < 2000:
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][1][-2000:] + outs[1][1][-2000:]
    s = json.loads((w / "summary.json").read_text())
    assert s["status"] == "stopped (SIGTERM)"
    assert _header(w / "checkpoints" / "latest.nkc")["step"] == s["steps"]
    assert f"stopped at step {s['steps']} (SIGTERM)" in outs[1][1]


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_even_inside_a_compile(tmp_path):
    p = _cli("train", TINY_YAML, "--workdir", tmp_path / "run", "--set", "train.steps=500",
             env={"NODEKIT_CACHE_DIR": str(tmp_path / "cold")})
    time.sleep(4.0)
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert time.monotonic() - t < 2.0
    assert p.returncode == 130 and "exiting now" in err
