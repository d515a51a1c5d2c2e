"""The training loop in-process: compiled-step cache, guards, optimisers, resume."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nodekit
from nodekit._compiled_step import CompiledStep
from nodekit._config import OptimizerConfig
from nodekit._train import initial_state, make_optimizer, step_body

TINY = {
    "data": {"n_points": 100, "batch_time": 5},
    "model": {"field": {"width": 16, "depth": 1}},
    "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "vmap"},
    "optimizer": {"name": "adam", "learning_rate": 1e-2},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3,
              "progress": False},
}


@pytest.fixture(scope="module")
def parts():
    cfg = nodekit.validate_config(TINY)
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


def test_training_step_has_no_host_callbacks(parts):
    cfg, task, model, optim, opt_state = parts
    from nodekit._compiled_step import no_host_callbacks

    with no_host_callbacks():
        text = eqx.filter_jit(step_body(task.loss, optim)).lower(
            model, opt_state, task.batch(0), jax.random.PRNGKey(0)).as_text()
    assert "callback" not in text


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
        u, state = optim.update(g, state, x)
        x = optax.apply_updates(x, u)
    assert float(jnp.sum(x**2)) < 13.0  # it descends


def test_unknown_optimizer_kwargs_is_input_error():
    with pytest.raises(nodekit.InputError, match="optimizer.kwargs"):
        make_optimizer(OptimizerConfig(name="sgd", kwargs={"nonsense": 1.0}), 10)


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


def test_nan_mode_trace_does_not_leak_into_later_solves():
    """A solve jitted inside `no_host_callbacks` must not hand its cached, check-free
    trace to a later caller who expects errors (and vice versa)."""
    from nodekit._compiled_step import no_host_callbacks

    f = lambda t, y, args: -y  # noqa: E731
    y0 = jnp.ones(2)
    good = jnp.linspace(0.0, 1.0, 4)
    bad = jnp.array([0.0, 0.5, 0.2, 1.0])  # not increasing: Diffrax's SaveAt check trips
    solve = lambda ts: nodekit.odeint(f, y0, ts, solver="tsit5", throw=False)  # noqa: E731
    with no_host_callbacks():
        text = jax.jit(solve).lower(good).as_text()
    assert "callback" not in text
    with pytest.raises(Exception, match="increasing"):
        jax.block_until_ready(jax.jit(solve)(bad))
