"""Building a run: the task, the optimiser, the initial model and optimiser state (one
compiled call), the device layout, and JAX's persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ._config import Config
from ._errors import ConfigError
from ._optim import make_optimizer
from .tasks import AbstractTask, make_task


def initial_state(config: Config, model_key):
    """What a run of `config` starts from: `(task, model, optim, opt_state)` with the
    model drawn from `model_key` (before any checkpoint is resumed).

    The model and optimiser state are built in one compiled call rather than op by op:
    each eager op (every weight's `uniform`, every `zeros_like` of the optimiser state)
    is its own small XLA program, compiled or read from the persistent cache one at a
    time, which cost ~0.2 s of a warm run's start (benchmarks/RESULTS.md, first step).

    **Example:**

    ```python
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    step = nodekit.make_step(task.loss, optim)
    ```
    """
    task = make_task(config)
    optim = make_optimizer(config.optimizer, config.train.steps)
    model, opt_state, _ = build_state(task, optim, model_key, split=False)
    return task, model, optim, opt_state


def build_state(task: AbstractTask, optim, key, *, split: bool):
    """`(model, opt_state, train_key)` from `key` in one compiled call; with `split`, the
    key is a seed, split into the model's key and the training key (else `train_key` is
    None and `key` draws the model)."""

    def build(key):
        train_key = None
        if split:
            key, train_key = jax.random.split(jax.random.PRNGKey(key))
        model = task.make_model(key)
        return model, optim.init(eqx.filter(model, eqx.is_inexact_array)), train_key

    return eqx.filter_jit(build)(key)


def enable_compile_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache (default `~/.cache/nodekit/xla`, or
    `$NODEKIT_CACHE_DIR`). A second run with the same config and shapes then loads the
    compiled step instead of compiling it."""
    path = path or os.environ.get("NODEKIT_CACHE_DIR") or str(Path.home() / ".cache" / "nodekit" / "xla")
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def setup_devices(config: Config):
    """The data-parallel layout for a run: `(mesh, batch_sharding, replicated)`.

    A 1-D `Mesh` named `"batch"` over the first `train.devices` devices (all of them for
    `"all"`, across hosts after `jax.distributed.initialize`): batches are split along
    their leading axis, parameters and optimiser state are replicated, and XLA inserts
    the gradient all-reduce. One device is the same code path with a mesh of one.

    **Raises:** `ConfigError` when more devices are asked for than exist, or the batch
    size does not divide among them.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    dist = config.distributed
    if dist.enabled and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )
    available = jax.devices()
    n = len(available) if config.train.devices == "all" else config.train.devices
    if n > len(available):
        raise ConfigError(
            "train.devices",
            f"got {n}, but only {len(available)} {available[0].platform} device(s) are "
            "visible. Use 'all' or a smaller count (on CPU, XLA_FLAGS="
            "--xla_force_host_platform_device_count=N makes N host devices).",
        )
    if config.train.batch_size % n:
        raise ConfigError(
            "train.batch_size",
            f"got {config.train.batch_size}: must be divisible by the {n} devices of train.devices.",
        )
    mesh = Mesh(np.array(available[:n]), ("batch",))
    return mesh, NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
