"""Data-parallel training over 4 host devices matches one device; the batch is split."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import nodekit
    from nodekit._checkpoint import load_checkpoint
    from nodekit.tasks import make_task
    from nodekit._optim import make_optimizer
    from nodekit._build import setup_devices
    import equinox as eqx

    out = {"n_devices": len(jax.devices())}
    raw = {"data": {"n_points": 100, "batch_time": 5},
           "model": {"field": {"width": 16, "depth": 1}},
           "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-7, "batch_mode": "joint"},
           "train": {"steps": 12, "batch_size": 8, "eval_every": 6, "checkpoint_every": 6,
                     "progress": False, "compile_cache": False}}
    params = {}
    for dev in (1, 4):
        raw["train"]["devices"] = dev
        cfg = nodekit.validate_config(raw)
        summary = nodekit.train(cfg, sys.argv[1] + f"/d{dev}")
        task = make_task(cfg)
        model = task.make_model(jax.random.PRNGKey(0))
        opt = make_optimizer(cfg.optimizer, cfg.train.steps)
        like = (model, opt.init(eqx.filter(model, eqx.is_inexact_array)))
        (m, _), _ = load_checkpoint(sys.argv[1] + f"/d{dev}/checkpoints/latest.nkc", like)
        params[dev] = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))]
        out[f"loss_{dev}"] = summary["final_loss"]
        mesh, batch_sharding, _ = setup_devices(cfg)
        batch = jax.device_put(task.batch(0), batch_sharding)
        out[f"shard_rows_{dev}"] = [s.data.shape[0] for s in batch["y0"].addressable_shards]
    out["max_param_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(params[1], params[4]))
    print("RESULT " + json.dumps(out))
    """
)


def test_four_host_devices_match_one(tmp_path):
    """The joint batch (one ODE state, on nodekit's engine) split over 4 devices: the
    step-size controller's error norm then spans devices, the harder case for sharding
    (a vmapped batch is per-sample by construction)."""
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["n_devices"] == 4
    assert out["shard_rows_1"] == [8]
    assert out["shard_rows_4"] == [2, 2, 2, 2]  # the batch really is split
    assert abs(out["loss_1"] - out["loss_4"]) <= 1e-5 * max(1.0, abs(out["loss_1"]))
    assert out["max_param_diff"] < 1e-5


def test_too_many_devices_is_a_config_error():
    import pytest

    import nodekit
    from nodekit._build import setup_devices

    cfg = nodekit.validate_config({"train": {"devices": 64, "batch_size": 64}})
    with pytest.raises(nodekit.ConfigError, match="train.devices: got 64, but only 1"):
        setup_devices(cfg)
    cfg = nodekit.validate_config({"train": {"devices": 1, "batch_size": 7}})
    setup_devices(cfg)  # one device divides everything
