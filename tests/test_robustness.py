"""Runs that survive, and bad input that is refused.

- A run killed with SIGKILL at a random step, then rerun, ends bitwise where an
  uninterrupted run ends (checkpoints, optimiser state and logged losses included).
- SIGTERM stops a run cleanly: the checkpoint is written and the summary says why.
- A broken checkpoint (truncated, flipped byte, other model, other config) is refused with
  its own message that says what to do; `--restart` then trains afresh.
- A property-based fuzz: mutations of configs/tiny.yaml that break it are refused by
  `nodekit validate` with exit code 2 and one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nodekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
STEPS = 200  # long enough (a few seconds) to signal a run reliably mid-way
RUN = ["--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=1"]


# --------------------------------------------------------------------------- helpers


def _cmd(workdir: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "nodekit", "train", str(TINY), "--workdir", str(workdir),
            *RUN, *extra]


def _start(workdir: Path, log: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    with open(log, "ab") as f:
        return subprocess.Popen(_cmd(workdir, *extra), stdout=f, stderr=subprocess.STDOUT, env=env)


def _last_step(workdir: Path) -> int:
    """The last training step in metrics.jsonl (-1 if none); a torn last line is skipped."""
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not row.get("eval"):
            return row["step"]
    return -1


def _wait_until(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 240) -> bool:
    """Wait until metrics.jsonl shows `step`; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if _last_step(workdir) >= step:
            return True
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"no step {step} within {timeout}s")
        time.sleep(0.002)
    return False


def _rows(workdir) -> list[dict]:
    return [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if l]


def _step(path) -> int:
    from nodekit._checkpoint import read_header

    return read_header(path)[0]["step"]


def _payload(path) -> bytes:
    from nodekit._checkpoint import read_header

    return read_header(path)[1]


def assert_bad_input(rc, out, err, *needles) -> str:
    """Exit code 2, exactly one stderr line `nodekit: error: ...` holding every needle,
    no traceback. Returns the line."""
    assert "Traceback" not in err and "Traceback" not in out, err
    # (a progress line, `nodekit   3.0s  loading data ...`, appears only if the input takes
    # seconds to check; it is not a message)
    lines = [l for l in err.splitlines() if not re.match(r"nodekit +\d+\.\ds  ", l)]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("nodekit: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------- interrupted runs


# slow: four CLI processes (about 15 s of CPU); the default suite's stop-and-resume
# checks are tests/test_faults.py's (in-process SIGINT, rerun bit for bit) and
# tests/test_train.py's resume into more steps
@pytest.mark.slow
def test_interrupted_runs_resume_bitwise(tmp_path):
    """SIGTERM at a random step, rerun, SIGKILL at a later random step, rerun to the end:
    the checkpoints (model and optimiser state) and the logged numbers equal those of an
    uninterrupted run bit for bit.

    The uninterrupted run trains alongside, in a workdir holding a garbage checkpoint and
    stale metrics: a plain run there must be refused (exit 2), then `--restart` trains it
    afresh. (One test owns all these runs: a fixture shared by several tests would be
    built once per xdist worker, or make one worker wait for the other.)
    """
    ref = tmp_path / "reference"
    (ref / "checkpoints").mkdir(parents=True)
    (ref / "checkpoints" / "latest.nkc").write_bytes(b"not a checkpoint\n")
    (ref / "metrics.jsonl").write_text('{"step": 0, "loss": 99.0}\n{"step": 1, "loss": 99.0}\n')
    script = " ".join(
        f"{shlex.join(_cmd(ref, *extra))} >{shlex.quote(str(tmp_path / name))}.out "
        f"2>{shlex.quote(str(tmp_path / name))}.err; echo $? >{shlex.quote(str(tmp_path / name))}.rc;"
        for name, extra in (("plain", ()), ("restart", ("--restart",))))
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    reference = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)

    seed = random.randrange(2**32)
    print(f"random seed of the signal steps: {seed}")
    rng = random.Random(seed)
    w, log = tmp_path / "run", tmp_path / "run.log"
    procs = [reference]
    try:
        term_at = rng.randint(3, 40)
        procs.append(p := _start(w, log))
        assert _wait_until(p, w, term_at), "the run ended before SIGTERM was sent; raise STEPS"
        p.send_signal(signal.SIGTERM)
        term_rc = p.wait(timeout=240)
        text = log.read_text()
        assert "Traceback" not in text, text
        # 143 (= 128 + SIGTERM) tells a scheduler the run is unfinished
        assert term_rc == 128 + signal.SIGTERM, (term_rc, text)
        s = json.loads((w / "summary.json").read_text())
        assert s["status"] == "stopped (SIGTERM)", s["status"]
        assert f"nodekit: stopped at step {s['steps']} (SIGTERM); rerun the same command to " \
               "resume" in text
        assert term_at < s["steps"] < STEPS, (term_at, s["steps"])
        assert _step(w / "checkpoints" / "latest.nkc") == s["steps"]  # nothing logged is lost
        train_rows = [r for r in _rows(w) if not r.get("eval")]
        assert [r["step"] for r in train_rows] == list(range(s["steps"]))

        kill_at = rng.randint(s["steps"] + 3, s["steps"] + 60)
        procs.append(p := _start(w, log))
        assert _wait_until(p, w, kill_at), "the run ended before SIGKILL was sent; raise STEPS"
        p.kill()
        p.wait(timeout=60)
        killed_at = _step(w / "checkpoints" / "latest.nkc")
        assert killed_at >= kill_at, (killed_at, kill_at)

        procs.append(p := _start(w, log))
        assert p.wait(timeout=300) == 0, log.read_text()
        s = json.loads((w / "summary.json").read_text())
        assert s["status"] == "ok" and s["steps"] == STEPS
        assert s["resumed_from_step"] == killed_at
        assert reference.wait(timeout=600) == 0
    finally:  # a failed test leaves nothing running
        for q in procs:
            if q.poll() is None:
                os.killpg(q.pid, signal.SIGKILL) if q is reference else q.kill()
                q.wait()

    # the reference: refused over a garbage checkpoint, then trained afresh by --restart
    plain = {k: (tmp_path / f"plain.{k}").read_text() for k in ("rc", "out", "err")}
    assert_bad_input(int(plain["rc"]), plain["out"], plain["err"], "not a nodekit checkpoint",
                     "latest.nkc", "--restart", "--workdir")
    assert (tmp_path / "restart.rc").read_text().strip() == "0", (tmp_path / "restart.err").read_text()
    s = json.loads((ref / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == STEPS and s["resumed_from_step"] == 0
    assert 99.0 not in [r.get("loss") for r in _rows(ref)]  # the stale rows are gone

    for name in ("latest.nkc", "best.nkc"):  # model + optimiser state, bit for bit
        assert _step(w / "checkpoints" / name) == _step(ref / "checkpoints" / name), name
        assert _payload(w / "checkpoints" / name) == _payload(ref / "checkpoints" / name), name

    def logged(workdir):
        return [(r["step"], r.get("eval", False), r.get("loss"), r.get("grad_norm"),
                 r.get("eval_loss")) for r in _rows(workdir)]
    assert logged(w) == logged(ref)  # every step once, the same numbers


# --------------------------------------------------------------------------- bad checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A valid checkpoint of the tiny config (untrained, step 5), and one of a wider
    model carrying the tiny config's hash."""
    import jax

    from nodekit._checkpoint import save_checkpoint
    from nodekit._config import load_config
    from nodekit._build import initial_state

    folder = tmp_path_factory.mktemp("ckpts")
    tiny = load_config(TINY)
    out = {}
    for name, overrides in (("good", []), ("wide", ["model.field.width=32"])):
        cfg = load_config(TINY, overrides)
        _, model, _, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
        save_checkpoint(folder / name, (model, opt_state), step=5, config_hash=tiny.hash(),
                        meta={"best": None})
        out[name] = (folder / name).read_bytes()
        if name == "good":
            out["like"] = (model, opt_state)  # to load the tiny config's checkpoints into
    return out


def _header_len(blob: bytes) -> int:
    return int.from_bytes(blob[8:16], "little")


def _broken(kind: str, checkpoints) -> bytes:
    blob = bytearray(checkpoints["good"])
    hlen = _header_len(blob)
    if kind == "truncated-payload":
        return bytes(blob[:-7])
    if kind == "truncated-header":
        return bytes(blob[: 16 + hlen // 2])
    if kind == "flipped-payload-byte":
        i = 16 + hlen + (len(blob) - 16 - hlen) // 2
        blob[i] ^= 0x10
        return bytes(blob)
    if kind == "not-a-checkpoint":
        return b"PK\x03\x04 a zip file, say"
    if kind == "empty-file":
        return b""
    if kind == "other-model":
        return checkpoints["wide"]
    return bytes(blob)


#: kind -> (overrides of the rerun, words its message must hold)
BROKEN = {
    "truncated-payload": ([], ["is truncated", "payload bytes"]),
    "truncated-header": ([], ["is truncated", "header"]),
    "flipped-payload-byte": ([], ["is corrupt", "checksum"]),
    "not-a-checkpoint": ([], ["is not a nodekit checkpoint"]),
    "empty-file": ([], ["latest.nkc"]),  # worded "bad magic bytes" today; "empty" would say more
    "other-model": ([], ["is from a different model", "array"]),
    "other-seed": (["seed=1"], ["was written by a different config"]),
    "other-solver": (["solver.name=dopri5"], ["was written by a different config"]),
    "other-width": (["model.field.width=32"], ["was written by a different config"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_checkpoint_is_refused(kind, checkpoints, tmp_path, capsys):
    overrides, needles = BROKEN[kind]
    w = tmp_path / "run"
    (w / "checkpoints").mkdir(parents=True)
    (w / "checkpoints" / "latest.nkc").write_bytes(_broken(kind, checkpoints))
    argv = ["train", str(TINY), "--workdir", str(w)]
    for o in overrides:
        argv += ["--set", o]
    rc = main(argv)
    cap = capsys.readouterr()
    assert_bad_input(rc, cap.out, cap.err, *needles, "latest.nkc", "--restart", "--workdir")
    assert not (w / "summary.json").exists()  # refused before anything ran
    assert (w / "checkpoints" / "latest.nkc").read_bytes() == _broken(kind, checkpoints)  # kept


def test_broken_checkpoint_messages_differ(checkpoints):
    from nodekit import CheckpointError
    from nodekit._checkpoint import load_checkpoint

    seen = set()
    with tempfile.TemporaryDirectory() as d:
        for kind in ("truncated-payload", "truncated-header", "flipped-payload-byte",
                     "not-a-checkpoint", "other-model"):
            path = Path(d) / "c.nkc"
            path.write_bytes(_broken(kind, checkpoints))
            with pytest.raises(CheckpointError) as e:
                load_checkpoint(path, checkpoints["like"])
            seen.add(str(e.value).replace(str(path), "PATH"))
    assert len(seen) == 5, seen


def test_edited_header_is_refused(checkpoints, tmp_path):
    from nodekit import CheckpointError
    from nodekit._checkpoint import load_checkpoint

    blob = checkpoints["good"]
    assert blob.count(b'"step": 5') == 1
    path = tmp_path / "c.nkc"
    path.write_bytes(blob.replace(b'"step": 5', b'"step": 7'))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, checkpoints["like"])


# --------------------------------------------------------------------------- bad paths


def test_missing_config_file_exit_2(tmp_path, capsys):
    rc = main(["train", str(tmp_path / "nope.yaml"), "--workdir", str(tmp_path / "w")])
    assert_bad_input(rc, *capsys.readouterr(), "does not exist")
    assert not (tmp_path / "w").exists()


def test_unwritable_workdir_exit_2(tmp_path, capsys):
    # Tests run as root, where chmod does not stop writes: put the workdir under a file.
    (tmp_path / "a_file").write_text("x")
    rc = main(["train", str(TINY), "--workdir", str(tmp_path / "a_file" / "run")])
    assert_bad_input(rc, *capsys.readouterr(), "workdir", "a_file/run", "not writable", "--workdir")


# --------------------------------------------------------------------------- fuzz: broken configs

BASE = yaml.safe_load(TINY.read_text())
BASE["optimizer"]["clip_norm"] = 1.0
BASE["regularisation"] = {"kinetic": {"weight": 0.01}}
BASE["distributed"] = {"enabled": False}

LETTERS = st.text(alphabet="qxzjkw", min_size=1, max_size=8)  # never a number, bool or name
NOT_A_MAPPING = st.one_of(st.integers(), LETTERS, st.lists(st.integers(), max_size=3))

#: int fields: (smallest valid, largest valid or None)
INTS = {
    ("seed",): (0, 2**32 - 1), ("data", "n_points"): (20, 10**6), ("data", "batch_time"): (2, None),
    ("model", "field", "width"): (1, 65536), ("model", "field", "depth"): (0, 64),
    ("model", "field", "input_power"): (1, 9), ("model", "augment_dim"): (0, 4096),
    ("solver", "max_steps"): (1, 10**7), ("optimizer", "warmup_steps"): (0, None),
    ("train", "steps"): (1, 10**8), ("train", "batch_size"): (1, 10**6),
    ("train", "log_every"): (1, None), ("train", "eval_every"): (1, None),
    ("train", "checkpoint_every"): (1, None),
}
#: float fields: (bound, bound is allowed, largest valid or None, infinity refused)
FLOATS = {
    ("data", "t1"): (0.0, False, None, True), ("data", "noise"): (0.0, True, None, True),
    ("solver", "rtol"): (0.0, False, None, True), ("solver", "atol"): (0.0, False, None, True),
    ("solver", "dt0"): (0.0, False, None, True),
    ("optimizer", "learning_rate"): (0.0, False, None, True),
    ("optimizer", "decay_rate"): (0.0, False, 1.0, True),
    ("optimizer", "clip_norm"): (0.0, False, None, True),
    ("optimizer", "weight_decay"): (0.0, True, None, True),
    ("train", "max_solver_failures"): (0.0, True, 1.0, True),
    ("regularisation", "kinetic", "weight"): (0.0, True, None, True),
}


def _names():
    """Name fields: the names each allows."""
    from nodekit import ADJOINTS, BATCH_MODES, SOLVERS
    from nodekit._config import OPTIMIZERS, SCHEDULES
    from nodekit._fields import ACTIVATIONS

    return {
        ("solver", "name"): set(SOLVERS), ("solver", "adjoint"): set(ADJOINTS),
        ("solver", "batch_mode"): set(BATCH_MODES), ("optimizer", "name"): set(OPTIMIZERS),
        ("optimizer", "schedule"): set(SCHEDULES), ("model", "field", "activation"): set(ACTIVATIONS),
        ("model", "field", "type"): {"mlp", "second_order"}, ("data", "name"): {"spiral"},
        ("task",): {"trajectory"}, ("precision",): {"float32", "float64"},
        ("train", "on_nonfinite"): {"stop", "skip_step"},
    }


NAMES = _names()
BOOLS = [("model", "field", "time_dependent"), ("train", "progress"), ("train", "compile_cache"),
         ("distributed", "enabled")]
SECTIONS = [(), ("data",), ("model",), ("model", "field"), ("solver",), ("optimizer",),
            ("train",), ("distributed",), ("regularisation",), ("regularisation", "kinetic")]
MALFORMED = ["solver: [1, 2", "name: 'unterminated", "a: b: c", "{", "\tseed: 1",
             "seed: 0: 1", "]"]
TAG = '!!python/object/apply:os.system ["echo hi"]'


def _section_fields(path):
    from nodekit._config import Config, SpiralData
    from nodekit._config._wording import _model_at

    if path and path[0] == "data":  # a union by data.name; tiny.yaml reads the spiral
        return set(SpiralData.model_fields)
    return set(_model_at(Config, list(path)).model_fields) if path else set(Config.model_fields)


@st.composite
def _bad_int(draw, lo, hi):
    fractional = st.floats(-1e6, 1e6).map(lambda x: x + 0.5 if x == int(x) else x)
    options = [st.integers(max_value=lo - 1), fractional,
               st.sampled_from([float("nan"), float("inf"), float("-inf")]), LETTERS,
               st.lists(st.integers(), max_size=2)]
    if hi is not None:
        options.append(st.integers(min_value=hi + 1))
    return draw(st.one_of(options))


@st.composite
def _bad_float(draw, bound, closed, hi, inf_refused):
    assert bound == 0.0
    below = st.floats(max_value=-1e-300 if closed else 0.0, allow_nan=False)  # -0.0 >= 0.0
    options = [below, st.just(float("nan")), st.sampled_from(["nan", "NaN", "-inf"]), LETTERS,
               st.lists(st.floats(), max_size=2)]
    if hi is not None:
        options.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False))
    if inf_refused:
        options.append(st.sampled_from([float("inf"), "inf", "Infinity"]))
    return draw(st.one_of(options))


def _set(raw, path, value):
    node = raw
    for part in path[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False
    node[path[-1]] = value
    return True


@st.composite
def mutation(draw):
    """`(kind, key path, bad value)`: one way to break the config, at one key path."""
    kind = draw(st.sampled_from(["int", "float", "name", "bool", "section", "unknown-key",
                                 "unknown-regulariser", "python-tag"]))
    if kind == "int":
        path = draw(st.sampled_from(sorted(INTS)))
        value = draw(_bad_int(*INTS[path]))
    elif kind == "float":
        path = draw(st.sampled_from(sorted(FLOATS)))
        value = draw(_bad_float(*FLOATS[path]))
    elif kind == "name":
        path = draw(st.sampled_from(sorted(NAMES)))
        value = draw(st.one_of(st.text(max_size=12).filter(lambda s, p=path: s not in NAMES[p]),
                               st.integers(), st.lists(LETTERS, max_size=2)))
    elif kind == "bool":
        path = draw(st.sampled_from(BOOLS))
        value = draw(st.one_of(LETTERS, st.integers().map(lambda i: i + 2 if i >= 0 else i),
                               st.lists(st.integers(), max_size=2)))
    elif kind == "section":
        path = draw(st.sampled_from(SECTIONS[1:]))
        value = draw(st.one_of(LETTERS, st.lists(st.integers(), max_size=2)) if
                     path == ("regularisation", "kinetic") else NOT_A_MAPPING)
    elif kind in ("unknown-key", "unknown-regulariser"):
        section = draw(st.sampled_from(SECTIONS)) if kind == "unknown-key" else ("regularisation",)
        allowed = _section_fields(section)
        key = draw(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
            lambda k: k not in allowed))
        value = draw(st.recursive(st.integers() | LETTERS,
                                  lambda inner: st.dictionaries(LETTERS, inner, max_size=2),
                                  max_leaves=4))
        if kind == "unknown-regulariser":
            value = {"weight": 0.1}
        path = section + (key,)
    else:  # python-tag: a Python object tag as some leaf's value
        path = draw(st.sampled_from(sorted(INTS) + sorted(FLOATS) + sorted(NAMES)))
        value = "__TAG__"
    return kind, path, value


def _render(mutations, text_edit):
    raw = copy.deepcopy(BASE)
    applied = [m for m in mutations if _set(raw, m[1], m[2])]
    text = yaml.safe_dump(raw, sort_keys=False).replace("__TAG__", TAG)
    data = text.encode()
    if text_edit is not None:
        what, pos, extra = text_edit
        lines = text.splitlines(keepends=True)
        i = pos % (len(lines) + 1)
        if what == "malformed":
            data = "".join(lines[:i] + [extra + "\n"] + lines[i:]).encode()
        else:  # a byte that is never UTF-8
            j = pos % (len(data) + 1)
            data = data[:j] + extra.encode("latin-1") + data[j:]
    return applied, data


def _validate_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["validate", str(path)])
    return rc, out.getvalue(), err.getvalue()


text_edits = st.one_of(
    st.none(),
    st.tuples(st.just("malformed"), st.integers(0, 10**6), st.sampled_from(MALFORMED)),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.sampled_from(["\xff", "\xc3(", "\x80"])),
)


def _check_broken(mutations, text_edit):
    applied, data = _render(mutations, text_edit)
    for kind, _, _ in applied:
        event(f"mutation: {kind}")
    event(f"text edit: {text_edit[0] if text_edit else None}")
    if not applied and text_edit is None:
        return  # nothing broke (every mutation's parent was replaced by a scalar)
    rc, out, err = _validate_bytes(data)
    line = assert_bad_input(rc, out, err)
    assert out == ""
    if text_edit is None and len(applied) == 1 and applied[0][0] != "python-tag":
        kind, path, _ = applied[0]
        assert f"error: {'.'.join(path)}" in line, (applied, line)


_broken_configs = given(mutations=st.lists(mutation(), min_size=1, max_size=3),
                        text_edit=text_edits)
_fuzz = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=60, **_fuzz)
@_broken_configs
def test_fuzz_broken_configs_are_refused(mutations, text_edit):
    _check_broken(mutations, text_edit)


@pytest.mark.slow
@settings(max_examples=1000, **_fuzz)
@_broken_configs
def test_fuzz_broken_configs_are_refused_long(mutations, text_edit):
    _check_broken(mutations, text_edit)


def _check_no_crash(data: bytes):
    rc, out, err = _validate_bytes(data)
    assert "Traceback" not in err
    if rc == 2:
        assert_bad_input(rc, out, err)
    else:
        assert rc == 0, (rc, err)
        assert isinstance(yaml.safe_load(out), dict)


@settings(max_examples=60, **_fuzz)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                      st.binary(max_size=40).map(lambda b: TINY.read_bytes() + b)))
def test_fuzz_random_bytes_never_crash(data):
    """Random bytes may even be a valid config: exit 0 with the resolved YAML, or 2 with
    one line; never a traceback."""
    _check_no_crash(data)


@pytest.mark.slow
@settings(max_examples=1000, **_fuzz)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                      st.binary(max_size=40).map(lambda b: TINY.read_bytes() + b)))
def test_fuzz_random_bytes_never_crash_long(data):
    _check_no_crash(data)
