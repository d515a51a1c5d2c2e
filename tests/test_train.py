"""The training loop in-process: compiled-step cache, guards, optimisers, resume."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nodekit
from nodekit._step import CompiledStep
from nodekit._config import OptimizerConfig
from nodekit._build import initial_state
from nodekit._optim import make_optimizer
from nodekit._step import step_body

TINY = {
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 16, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "vmap"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3,
              "progress": False},
}


#: TINY solved as one joint state: on nodekit's engine, whose training step holds no
#: host callbacks, so it exports even in a process with Equinox's default `raise` mode.
TINY_JOINT = json.loads(json.dumps(TINY))
TINY_JOINT["solver"]["batch_mode"] = "joint"


@pytest.fixture(scope="module")
def parts():
    cfg = nodekit.validate_config(TINY_JOINT)
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    return cfg, task, model, optim, opt_state


def test_compiled_step_export_cache_roundtrip(parts, tmp_path):
    cfg, task, model, optim, opt_state = parts
    batch, key = task.batch(0), jax.random.PRNGKey(3)
    body = step_body(task.loss, optim)
    first = CompiledStep(body, model, opt_state, batch, key, cache_dir=tmp_path, key_material={"a": 1})
    assert first.source == "traced+exported", first.cache_error
    second = CompiledStep(body, model, opt_state, batch, key, cache_dir=tmp_path, key_material={"a": 1})
    assert second.source == "export-cache"
    # the integrator is recorded while tracing and stored with the entry: the joint
    # batch goes to nodekit's engine, traced or loaded
    assert first.integrator == second.integrator and first.integrator[0] == "nodekit"
    other = CompiledStep(body, model, opt_state, batch, key, cache_dir=tmp_path, key_material={"a": 2})
    assert other.source == "traced+exported"  # a different key never loads a stale step
    leaves = first.flatten(model, opt_state)
    out1, m1 = first(leaves, batch, key)
    out2, m2 = second(leaves, batch, key)
    for a, b in zip(out1, out2):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(m1["loss"]) == float(m2["loss"])
    # and the flat step is the same computation as the plain filter_jit step
    ref_model, _, ref_m = nodekit.make_step(task.loss, optim)(model, opt_state, batch, key)
    new_model, _ = first.unflatten(out1)
    assert np.allclose(float(ref_m["loss"]), float(m1["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(ref_model, eqx.is_array)),
                    jax.tree_util.tree_leaves(eqx.filter(new_model, eqx.is_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_export_cache_refuses_swapped_and_changed_entries(tmp_path):
    """Each entry stores its full key and a content hash: a file swapped with another
    entry's, or with one flipped bit, is never run; the step is traced again, the entry
    rewritten, and `cache_note` says why."""
    x, opt, key = jnp.ones(3), (jnp.zeros(1),), jnp.zeros(2)

    def body(scale):
        return lambda m, o, b, k: (m * scale, o, {"out": jnp.sum(m * b)})

    def step(material, scale):
        cs = CompiledStep(body(scale), x, opt, x, key, cache_dir=tmp_path, key_material=material)
        out = np.asarray(cs(cs.flatten(x, opt), x, key)[0][0])
        return cs, out

    a, out_a = step({"lr": 1}, 2.0)
    b, out_b = step({"lr": 2}, 3.0)
    assert a.source == b.source == "traced+exported"
    blob_a, blob_b = a.path.read_bytes(), b.path.read_bytes()
    a.path.write_bytes(blob_b)
    b.path.write_bytes(blob_a)
    swapped, out = step({"lr": 1}, 2.0)
    assert swapped.source == "traced+exported" and "another key" in swapped.cache_note
    np.testing.assert_array_equal(out, out_a)  # not b's step
    again, out = step({"lr": 1}, 2.0)
    assert again.source == "export-cache" and again.cache_note is None  # rewritten
    blob = bytearray(a.path.read_bytes())
    blob[-1] ^= 1
    a.path.write_bytes(bytes(blob))
    flipped, out = step({"lr": 1}, 2.0)
    assert flipped.source == "traced+exported" and "does not match its hash" in flipped.cache_note
    np.testing.assert_array_equal(out, out_a)


def _matrix_step(model, opt_state, batch, key):
    """A step whose output solves against the `model` matrix when `opt_state` is a
    `(1,)` array (a LAPACK call), else multiplies by it."""
    out = jnp.linalg.solve(model, batch) if opt_state[0].shape == (1,) else model @ batch
    return model, opt_state, {"out": out}


_LOAD_CHILD = """
import sys
import jax.numpy as jnp, numpy as np
from nodekit._step import CompiledStep

a, b, key = jnp.array([[2.0, 1.0], [1.0, 3.0]]), jnp.array([1.0, 2.0]), jnp.zeros(2)
for opt in ((jnp.zeros(2),), (jnp.zeros(1),)):  # no LAPACK first, then LAPACK
    # (the body is never traced: a warm load runs the stored step)
    cs = CompiledStep(None, a, opt, b, key, cache_dir=sys.argv[1], key_material={})
    out = np.asarray(cs(cs.flatten(a, opt), b, key)[1]["out"])
    print(cs.source, *out.tolist())
"""


def test_loaded_steps_run_with_and_without_lapack_calls(tmp_path):
    """A stored step loads in a fresh process and computes what it computed when
    traced, whether it calls a LAPACK routine or not."""
    import subprocess
    import sys

    a, b, key = jnp.array([[2.0, 1.0], [1.0, 3.0]]), jnp.array([1.0, 2.0]), jnp.zeros(2)
    for opt in ((jnp.zeros(2),), (jnp.zeros(1),)):
        cs = CompiledStep(_matrix_step, a, opt, b, key, cache_dir=tmp_path, key_material={})
        assert cs.source == "traced+exported", cs.cache_error
    lines = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    plain, lapack = (line.split() for line in lines)
    assert plain[0] == lapack[0] == "export-cache"
    np.testing.assert_allclose([float(x) for x in plain[1:]], [4.0, 7.0])
    np.testing.assert_allclose([float(x) for x in lapack[1:]],
                               np.linalg.solve([[2, 1], [1, 3]], [1, 2]), rtol=1e-6)


def test_engine_training_step_has_no_host_callbacks(parts):
    """The joint solve on the engine reports failures as result codes: its training
    step has no host callback even with Equinox's default `raise` mode (so a library
    caller's step exports and its XLA compile is cached)."""
    cfg, task, model, optim, opt_state = parts
    text = eqx.filter_jit(step_body(task.loss, optim)).lower(
        model, opt_state, task.batch(0), jax.random.PRNGKey(0)).as_text()
    assert "callback" not in text


_DIFFRAX_STEP = """
import jax, jax.numpy as jnp, optax
import nodekit
from nodekit._step import CompiledStep, step_body

ts = jnp.linspace(0.0, 1.0, 3)


def loss(field, batch, key):  # one Diffrax solve per sample (its output-time check inside)
    ys = jax.vmap(lambda y: nodekit.odeint(field, y, ts, engine="diffrax", throw=False))(batch)
    return jnp.mean(ys**2), {}


def build(cache_dir):
    field = nodekit.MLPField(2, 4, 1, key=jax.random.PRNGKey(0))
    optim = optax.sgd(0.1)
    opt_state = optim.init(field)
    batch, key = jnp.ones((3, 2)), jax.random.PRNGKey(1)
    cs = CompiledStep(step_body(loss, optim), field, opt_state, batch, key,
                      cache_dir=cache_dir, key_material={})
    return cs, cs(cs.flatten(field, opt_state), batch, key)[1]
"""


def test_diffrax_step_exports_with_the_clis_switch_and_falls_back_without(tmp_path):
    """A solve on Diffrax carries its output-time check (`eqx.error_if`). With
    `EQX_ON_ERROR=nan` (what the CLI sets before importing Equinox) the step has no host
    callback: it exports. With Equinox's default (a library
    caller) the export fails cleanly: the step is traced, the reason recorded, and it
    computes the same loss."""
    import os
    import subprocess
    import sys

    child = _DIFFRAX_STEP + (
        "import sys\n"
        "cs, metrics = build(sys.argv[1])\n"
        "print(cs.source, float(metrics['loss']))\n")
    env = dict(os.environ, EQX_ON_ERROR="nan", JAX_PLATFORMS="cpu")
    source, loss_nan = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, env=env,
        check=True).stdout.split()
    assert source == "traced+exported"  # (loading it: test_compiled_step_export_cache_roundtrip)
    namespace = {}
    exec(_DIFFRAX_STEP, namespace)
    cs, metrics = namespace["build"](tmp_path / "raise")
    assert cs.source == "traced" and "callback" in cs.cache_error.lower()
    np.testing.assert_allclose(float(metrics["loss"]), float(loss_nan), rtol=1e-6)


def test_nonfinite_guard_keeps_state():
    def loss_fn(model, batch, key):
        return jnp.sum(model * batch) / 0.0 * 0.0, {}  # nan

    optim = optax.sgd(0.1)
    params = jnp.ones(3)
    state = optim.init(params)
    new, new_state, m = nodekit.make_step(loss_fn, optim)(params, state, jnp.ones(3), None)
    assert not bool(m["finite"])
    np.testing.assert_array_equal(np.asarray(new), np.asarray(params))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine", "exponential"])
def test_optimizers_and_schedules(schedule):
    cfg = OptimizerConfig(name="adamw", learning_rate=0.1, schedule=schedule, warmup_steps=2,
                          clip_norm=1.0, weight_decay=1e-4)
    optim = make_optimizer(cfg, 10)
    x = jnp.array([3.0, -2.0])
    state = optim.init(x)
    for _ in range(10):
        g = jax.grad(lambda v: jnp.sum(v**2))(x)
        with jax.numpy_dtype_promotion("standard"):  # Optax mixes dtypes (see nodekit._step)
            u, state = optim.update(g, state, x)
        x = optax.apply_updates(x, u)
    assert float(jnp.sum(x**2)) < 13.0  # it descends


def test_unknown_optimizer_kwargs_is_input_error():
    # refused by the config itself (validate == train), naming the key
    with pytest.raises(nodekit.InputError, match="optimizer.kwargs.nonsense"):
        nodekit.validate_config({"optimizer": {"name": "sgd", "kwargs": {"nonsense": 1.0}}})


@pytest.mark.slow  # the default suite's bitwise resume: tests/test_faults.py, test_tasks.py
def test_resume_is_bitwise_and_metrics_continue(tmp_path):
    full = tmp_path / "full"
    part = tmp_path / "part"
    nodekit.train(TINY, full)
    short = json.loads(json.dumps(TINY))
    short["train"]["steps"] = 3
    nodekit.train(short, part)
    summary = nodekit.train(TINY, part)  # resumes from step 3
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    from nodekit._checkpoint import read_header

    # the same parameters and optimiser state, bit for bit
    assert read_header(full / "checkpoints" / "latest.nkc")[1] == read_header(part / "checkpoints" / "latest.nkc")[1]
    steps = [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()
             if not json.loads(l).get("eval")]
    assert steps == list(range(6))


def test_train_leaves_the_callers_jax_state_alone(tmp_path):
    """A notebook user's process after `nodekit.train`: a function jitted before still
    runs from its compiled executable (no cache was cleared), Equinox's error mode and
    the environment are as they were."""
    import os

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(name) if "backend_compile" in name else None)
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    f(jnp.ones(3)).block_until_ready()
    env = dict(os.environ)
    short = json.loads(json.dumps(TINY_JOINT))
    short["train"].update(steps=2, eval_every=2, checkpoint_every=2)
    summary = nodekit.train(short, tmp_path / "run")
    assert summary["status"] == "ok" and "step_cache_error" not in summary
    before = len(compiles)
    f(jnp.ones(3)).block_until_ready()
    assert len(compiles) == before  # served from the executable compiled before train()
    assert dict(os.environ) == env


# ----------------------------------------------------------------- lbfgs

#: TINY made full-batch (lbfgs needs it): 20 points, every one of the 15 segments of 5.
TINY_LBFGS = json.loads(json.dumps(TINY))
TINY_LBFGS["data"] = {"n_points": 20, "batch_time": 5}
TINY_LBFGS["train"]["batch_size"] = 15
TINY_LBFGS["optimizer"] = {"name": "lbfgs"}
TINY_LBFGS["solver"]["batch_mode"] = "joint"  # on the engine: the step exports in-process


def test_lbfgs_minimises_a_convex_quadratic_faster_than_adam():
    """An ill-conditioned quadratic: L-BFGS (through `make_step`, which passes it the
    value, gradient and value_fn) reaches the minimum in a few steps; Adam does not."""
    a = jnp.diag(jnp.array([30.0, 5.0, 1.0, 0.2]))
    b = jnp.array([1.0, -2.0, 3.0, -4.0])
    x_star = jnp.linalg.solve(a, b)
    f_star = float(-0.5 * b @ x_star)

    def loss_fn(x, batch, key):
        return 0.5 * x @ a @ x - b @ x, {}

    def run(cfg, steps=15):
        optim = make_optimizer(cfg, steps)
        step = nodekit.make_step(loss_fn, optim)
        x, state = jnp.zeros(4), optim.init(jnp.zeros(4))
        for _ in range(steps):
            x, state, m = step(x, state, None, None)
        return x, float(loss_fn(x, None, None)[0]), m

    lbfgs_cfg = OptimizerConfig(name="lbfgs")
    assert lbfgs_cfg.learning_rate == 1.0  # the line search starts from the full step
    x, f_lbfgs, m = run(lbfgs_cfg)
    np.testing.assert_allclose(np.asarray(x), np.asarray(x_star), rtol=1e-3, atol=1e-3)
    assert "linesearch_steps" in m
    _, f_adam, m_adam = run(OptimizerConfig(name="adam", learning_rate=0.1))
    assert "linesearch_steps" not in m_adam  # the other optimisers' step is unchanged
    assert f_lbfgs - f_star < 1e-4 < f_adam - f_star


def test_lbfgs_compiled_step_exports_and_resumes_bitwise(tmp_path):
    """The line-search step goes through the same flat, exported step as the other
    optimisers, and 3 steps + checkpoint + load + 3 steps equals 6 steps bit for bit
    (the L-BFGS memory and line-search state are in the checkpoint). A small MLP
    regression keeps it fast; the slow test below does the same through `train`."""
    from nodekit._checkpoint import load_checkpoint, save_checkpoint

    mlp = eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    xs = jnp.linspace(-2.0, 2.0, 32)[:, None]
    batch = (xs, jnp.sin(2.0 * xs))

    def loss_fn(model, batch, key):
        x, y = batch
        return jnp.mean((jax.vmap(model)(x) - y) ** 2), {}

    optim = make_optimizer(OptimizerConfig(name="lbfgs", kwargs={"memory_size": 5}), 6)
    state0 = optim.init(eqx.filter(mlp, eqx.is_inexact_array))
    cs = CompiledStep(step_body(loss_fn, optim), mlp, state0, batch, jax.random.PRNGKey(1),
                      cache_dir=tmp_path, key_material={"lbfgs": 1})
    assert cs.source == "traced+exported", cs.cache_error

    def run(leaves, steps):
        losses = []
        for _ in range(steps):
            leaves, m = cs(leaves, batch, jax.random.PRNGKey(1))
            losses.append(float(m["loss"]))
        return leaves, losses

    full, losses = run(cs.flatten(mlp, state0), 6)
    assert losses[-1] < 0.5 * losses[0]
    half, _ = run(cs.flatten(mlp, state0), 3)
    save_checkpoint(tmp_path / "c.nkc", cs.unflatten(half), step=3, config_hash="x")
    loaded, _ = load_checkpoint(tmp_path / "c.nkc", (mlp, state0), config_hash="x")
    resumed, _ = run(cs.flatten(*loaded), 3)
    for a, b in zip(full, resumed):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_lbfgs_trains_lower_than_adam_and_resumes_bitwise(tmp_path):
    from nodekit._checkpoint import read_header

    adam = json.loads(json.dumps(TINY_LBFGS))
    adam["optimizer"] = {"name": "adam", "learning_rate": 1e-2}
    s_adam = nodekit.train(adam, tmp_path / "adam")
    full = nodekit.train(TINY_LBFGS, tmp_path / "full")
    assert full["status"] == "ok" and full["final_loss"] < s_adam["final_loss"]
    assert full["eval_loss"] < s_adam["eval_loss"]
    assert "step_cache_error" not in full  # the line-search step exports like the others
    short = json.loads(json.dumps(TINY_LBFGS))
    short["train"]["steps"] = 3
    nodekit.train(short, tmp_path / "part")
    resumed = nodekit.train(TINY_LBFGS, tmp_path / "part")
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    # model, L-BFGS memory and line-search state, bit for bit
    assert (read_header(tmp_path / "full" / "checkpoints" / "latest.nkc")[1]
            == read_header(tmp_path / "part" / "checkpoints" / "latest.nkc")[1])
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["linesearch_steps"] >= 1 for r in rows if not r.get("eval"))


#: A full-batch density config for lbfgs (64 points, exact trace).
DENSITY_LBFGS = {"task": "density", "data": {"n_train": 64, "n_test": 64},
                 "optimizer": {"name": "lbfgs"}, "train": {"batch_size": 64}}


@pytest.mark.parametrize(
    "base,overrides,key",
    [
        ("tiny", ["optimizer.schedule=cosine"], "optimizer.schedule"),
        ("tiny", ["optimizer.clip_norm=1.0"], "optimizer.clip_norm"),
        ("tiny", ["optimizer.weight_decay=0.01"], "optimizer.weight_decay"),
        ("tiny", ["optimizer.kwargs.memory=5"], "optimizer.kwargs"),
        ("tiny", ["optimizer.kwargs.memory_size=2.5"], "optimizer.kwargs"),
        ("tiny", ["train.batch_size=8"], "train.batch_size"),
        ("tiny", ["regularisation.jacobian=0.1"], "regularisation.jacobian.estimator"),
        ("density", ["regularisation.steer.width=0.1"], "regularisation.steer"),
        ("density", ["model.cnf.trace=hutchinson"], "model.cnf.trace"),
        ("density", ["train.batch_size=32"], "train.batch_size"),
    ],
)
def test_bad_lbfgs_config_exits_2_naming_the_key(base, overrides, key, tmp_path, capsys):
    import yaml

    from nodekit.cli import main

    path = tmp_path / "lbfgs.yaml"
    path.write_text(yaml.safe_dump(TINY_LBFGS if base == "tiny" else DENSITY_LBFGS))
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["validate", str(path)]) == 0  # the base config is fine
    capsys.readouterr()
    rc = main(["validate", str(path)] + sets)
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err and cap.out == ""
    assert len(cap.err.splitlines()) == 1
    assert cap.err.startswith(f"nodekit: error: {key}:") and "lbfgs" in cap.err, cap.err


# ----------------------------------------------------------------- caches, logs, plots


def test_data_cache_entry_is_verified(tmp_path, monkeypatch):
    """The data cache stores its key and a content hash: a changed value is noticed,
    noted, and the trajectory solved again."""
    from nodekit._io import take_notes
    from nodekit.data._reference import cached_reference

    monkeypatch.setenv("NODEKIT_CACHE_DIR", str(tmp_path))
    calls = []

    def solve():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    take_notes()
    first = cached_reference("demo", [1, 2], (3, 2), solve)
    again = cached_reference("demo", [1, 2], (3, 2), solve)
    assert len(calls) == 1 and np.array_equal(first, again) and take_notes() == []
    (entry,) = (tmp_path / "data").iterdir()
    blob = bytearray(entry.read_bytes())
    blob[-4:] = np.float32(123.0).tobytes()  # the last value of the trajectory
    entry.write_bytes(bytes(blob))
    fixed = cached_reference("demo", [1, 2], (3, 2), solve)
    assert len(calls) == 2 and np.array_equal(fixed, first)
    (note,) = take_notes()
    assert "ignored and rebuilt" in note and "does not match its hash" in note


def _read_records(path):
    """TFRecord framing and Event/Summary protobufs read back independently of the
    writer: a bitwise CRC-32C and a minimal protobuf decoder."""
    import struct

    def crc32c(data):
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        return c ^ 0xFFFFFFFF

    def masked(data):
        c = crc32c(data)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    def fields(buf):
        i, out = 0, []
        while i < len(buf):
            key, i = varint(buf, i)
            num, wire = key >> 3, key & 7
            if wire == 0:
                val, i = varint(buf, i)
            elif wire == 1:
                val, i = struct.unpack("<d", buf[i:i + 8])[0], i + 8
            elif wire == 5:
                val, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
            else:
                n, i = varint(buf, i)
                val, i = buf[i:i + n], i + n
            out.append((num, val))
        return out

    def varint(buf, i):
        shift = val = 0
        while True:
            b = buf[i]
            i += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return val, i

    blob, i, events = path.read_bytes(), 0, []
    while i < len(blob):
        (n,) = struct.unpack("<Q", blob[i:i + 8])
        assert struct.unpack("<I", blob[i + 8:i + 12])[0] == masked(blob[i:i + 8])
        data = blob[i + 12:i + 12 + n]
        assert struct.unpack("<I", blob[i + 12 + n:i + 16 + n])[0] == masked(data)
        i += 16 + n
        ev = dict(fields(data))
        if 5 in ev:
            ev["scalars"] = {}
            for num, value in fields(ev[5]):
                v = dict(fields(value))
                ev["scalars"][v[1].decode()] = v[2]
        events.append(ev)
    return events


def test_tensorboard_event_files_are_valid_records(tmp_path):
    from nodekit._tensorboard import EventWriter, crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = EventWriter(tmp_path)
    w.scalars(0, {"loss": 0.5, "nfe": 26.0, "integrator": "engine", "bad": float("nan")}, "train")
    w.close()
    w = EventWriter(tmp_path, resume_step=7)  # a resumed run: a START at step 7
    w.scalars(7, {"eval_loss": 0.25}, "eval")
    w.close()
    first, second = sorted(tmp_path.iterdir())  # in the order TensorBoard reads them
    e = _read_records(first)
    assert e[0][3] == b"brain.Event:2" and e[1][2] == 0
    assert e[1]["scalars"] == {"train/loss": 0.5, "train/nfe": 26.0}  # numbers only
    e = _read_records(second)
    assert e[1][2] == 7 and e[1][7] == b"\x08\x01"  # SessionLog{status: START}
    assert e[2][2] == 7 and e[2]["scalars"] == {"eval/eval_loss": 0.25}


def test_plots_use_no_global_matplotlib_state(tmp_path):
    """Importing and using `nodekit.plots` leaves the backend and pyplot's figures as
    they were; coordinates are named x₁, x₂ (or as given), the loss plot has captions."""
    import matplotlib

    backend = matplotlib.get_backend()
    import nodekit.plots as plots

    rows = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(120)]
    rows += [{"step": 59, "eval": True, "eval_loss": 2.0}, {"step": 119, "eval": True, "eval_loss": 1.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "torn")
    out = plots.plot_loss(tmp_path / "m.jsonl", tmp_path / "loss.png",
                          describe={"loss": "mean |error| over 10-point segments"})
    assert out.read_bytes()[:4] == b"\x89PNG"
    ts = np.linspace(0, 1, 20)
    ys = np.stack([np.cos(ts), np.sin(ts)], -1)
    assert plots.plot_trajectory(ts, ys, ys, tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()
    assert plots.subscript_names(3) == ["x\u2081", "x\u2082", "x\u2083"]
    fig, axes = plots.new_figure(2)
    assert axes.shape == (1, 2)
