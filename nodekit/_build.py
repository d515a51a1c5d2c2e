"""Building a run: the task, the optimiser, the initial model and optimiser state (one
compiled call), a memory check before anything large is allocated, the device layout
(and the multi-host runtime, started before any computation), and the cache folders.

Nothing here changes process-wide state except the two explicit opt-ins the `nodekit`
command turns on at its start: `init_distributed` (a multi-host run) and
`enable_compile_cache` (JAX's persistent compilation cache). A library caller of
`nodekit.train` keeps its JAX configuration unless it calls them itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ._config import Config
from ._errors import ConfigError, TrainingFault
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
    import jax
    import nodekit
    from nodekit._build import initial_state

    cfg = nodekit.load_config("tiny")
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    step = nodekit.make_step(task.loss, optim)
    ```
    """
    task = make_task(config)
    optim = make_optimizer(config.optimizer, config.train.steps)
    model, opt_state, _ = build_state(task, optim, model_key, split=False)
    return task, model, optim, opt_state


def _builder(task: AbstractTask, optim, split: bool):
    def build(key):
        train_key = None
        if split:
            key, train_key = jax.random.split(jax.random.PRNGKey(key))
            if task.config.model.init_seed is not None:  # the weights from their own seed
                key = jax.random.PRNGKey(task.config.model.init_seed)
        model = task.make_model(key)
        return model, optim.init(eqx.filter(model, eqx.is_inexact_array)), train_key

    return build


def build_state(task: AbstractTask, optim, key, *, split: bool):
    """`(model, opt_state, train_key)` from `key` in one compiled call; with `split`, the
    key is a seed, split into the model's key and the training key (else `train_key` is
    None and `key` draws the model)."""
    return eqx.filter_jit(_builder(task, optim, split))(key)


def state_shapes(task: AbstractTask, optim, key, *, split: bool):
    """`(model, opt_state, train_key)` as shapes only (`jax.ShapeDtypeStruct` leaves):
    nothing is computed or allocated."""
    return eqx.filter_eval_shape(_builder(task, optim, split), key)


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape"))


def available_memory(device) -> tuple[int | None, str]:
    """Bytes free for a run's arrays on `device` (an accelerator's own count, or the
    host's available memory for a CPU), and the device's name; `None` if unknown."""
    name = f"{device.platform}:{device.id}"
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), name
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, name
    except OSError:
        pass
    return None, name


def check_memory(config: Config, shapes, device) -> None:
    """Refuse, before allocating anything, a run whose parameters, gradients and
    optimiser state alone exceed the memory free on `device` (a model the schema allows,
    e.g. `model.field.width: 65536`, would otherwise be killed by the operating system
    or fail deep inside XLA).

    **Raises:** `TrainingFault` (status `out_of_memory`, exit code 3) saying how much is
    needed and what to shrink.
    """
    model, opt_state, _ = shapes
    leaves = [x for x in jax.tree_util.tree_leaves(model) if hasattr(x, "shape")]
    param_leaves = [x for x in leaves if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    n_params = sum(int(np.prod(x.shape)) for x in param_leaves)
    params = _nbytes(param_leaves)
    need = _nbytes(leaves) + _nbytes(opt_state) + 2 * params
    free, name = available_memory(device)
    if free is None or need <= free:
        return
    f = config.model.field
    raise TrainingFault(
        f"out of memory: the model's parameters, gradients and optimiser state alone need "
        f"{need / 2**30:.1f} GiB, but {name} has {free / 2**30:.1f} GiB free "
        f"(model.field.width={f.width}, model.field.depth={f.depth}: "
        f"{n_params:,} parameter values). Use a smaller "
        "model.field.width or depth, or a device with more memory. Nothing was written.",
        status="out_of_memory")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is XLA's out-of-memory error (`RESOURCE_EXHAUSTED`)."""
    return isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e)


def out_of_memory_fault(e: BaseException, config: Config, step: int | None) -> TrainingFault:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    f, bs = config.model.field, config.train.batch_size
    where = f" at step {step}" if step is not None else ""
    return TrainingFault(
        f"out of memory{where} ({first}). Use a smaller train.batch_size (now {bs}), "
        f"model.field.width (now {f.width}) or depth (now {f.depth}), solver.max_steps or "
        "solver.checkpoints, or a device with more memory.", step=step, status="out_of_memory")


# ----------------------------------------------------------------- caches


def cache_root() -> Path:
    """The folder of nodekit's caches: `$NODEKIT_CACHE_DIR`, else `~/.cache/nodekit`.
    (Only reads the environment.)"""
    return Path(os.environ.get("NODEKIT_CACHE_DIR") or Path.home() / ".cache" / "nodekit")


def usable_cache_dir(sub: str) -> tuple[Path | None, str | None]:
    """`(folder, None)` for `cache_root() / sub`, created if needed, or `(None, note)`
    when it cannot be used (e.g. `NODEKIT_CACHE_DIR` names a file): a cache never fails
    a run, it is then skipped with a note."""
    path = cache_root() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return None, (f"cache folder {str(path)!r} is not usable ({e.strerror}); running "
                      "without the cache (check NODEKIT_CACHE_DIR)")
    return path, None


def enable_compile_cache(path: str | Path | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in `path` (default
    `$NODEKIT_CACHE_DIR/xla`, else `~/.cache/nodekit/xla`): later runs with the same
    config and shapes load the compiled training step instead of compiling it.

    This sets JAX configuration for the whole process, so nodekit never calls it from
    library code: the `nodekit` command turns it on at its start (when
    `train.compile_cache` is true), and Python callers opt in by calling it.
    (`nodekit.train` always uses nodekit's own cache of traced steps, a folder it owns,
    which changes no JAX setting.)

    **Returns:** the folder, or `None` when it is not usable (then nothing is changed).

    **Example:**

    ```python
    import nodekit

    folder = nodekit.enable_compile_cache()   # process-wide, like jax.config.update
    ```
    """
    if path is None:
        folder, _ = usable_cache_dir("xla")
        if folder is None:
            return None
        path = folder
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return str(path)


# ----------------------------------------------------------------- devices


def init_distributed(config: Config) -> None:
    """Start JAX's multi-host runtime for `distributed.enabled: true` (idempotent). It
    must run before anything computes, so `nodekit.train` calls it first.

    **Raises:** `ConfigError` (`distributed`) when the runtime cannot start, e.g. JAX
    already computed in this process, or the coordinator is unreachable.
    """
    dist = config.distributed
    if not dist.enabled or jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(
            "distributed.enabled",
            f"JAX's distributed runtime could not start ({first}). It must start before any "
            "JAX computation in the process; check distributed.coordinator_address, "
            "num_processes and process_id (or SLURM / JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID).") from None


def device_count(config: Config, available: list) -> int:
    """How many of the `available` devices `train.devices` asks for.

    **Raises:** `ConfigError` when more devices are asked for than exist, or the batch
    size does not divide among them.
    """
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
    return n


def setup_devices(config: Config):
    """The data-parallel layout for a run: `(mesh, batch_sharding, replicated)`.

    A 1-D `Mesh` named `"batch"` over the first `train.devices` devices (all of them for
    `"all"`, across hosts after `init_distributed`): batches are split along their
    leading axis, parameters and optimiser state are replicated, and XLA inserts the
    gradient all-reduce. One device is the same code path with a mesh of one.

    **Raises:** `ConfigError` when more devices are asked for than exist, or the batch
    size does not divide among them.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    init_distributed(config)
    available = jax.devices()
    n = device_count(config, available)
    mesh = Mesh(np.array(available[:n]), ("batch",))
    return mesh, NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def put_batch(batch, sharding):
    """A host batch (NumPy) as global arrays split along `sharding` (every process holds
    the same whole batch: batches are functions of `(seed, step)`)."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, batch)
