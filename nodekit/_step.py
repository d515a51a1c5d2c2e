"""The compiled training step: `step_body` (value and gradient of a loss, an Optax
update, a guard against non-finite values), `make_step` for Python callers, and
`CompiledStep`, the same body over flat arrays, traced once and cached on disk.

Two start-up and dispatch levers live here:

- **Flat leaves.** `eqx.filter_jit` re-partitions the model and optimiser state into
  arrays and static parts on every call. The training loop instead keeps the state as a
  flat list of arrays and calls a plain `jax.jit` function of `(leaves, batch, key)`, so
  the per-step host work is one dispatch.
- **Serialised trace.** Tracing the step (Python running through Equinox, Diffrax and
  Optax) costs seconds. The traced step is exported with `jax.export` and stored under
  the cache folder, keyed by the full config, the shapes and dtypes, the library
  versions, nodekit's own source and the device kind. A warm run loads it and skips
  tracing; JAX's persistent compilation cache then skips the XLA compile as well.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._odeint import record_integrators, summarise_integrators
from ._optim import needs_value_fn
from ._rundir import atomic_write_bytes


def _optax_promotion():
    """Optax's updates mix dtypes implicitly (Adam's bias correction is `decay ** count`
    with an int32 count), so under a caller's strict dtype promotion
    (`jax.numpy_dtype_promotion("strict")`, as Equinox's and Diffrax's test suites use)
    they fail. The optimiser update runs with standard promotion: scoped to this trace,
    nothing process-wide changes."""
    return jax.numpy_dtype_promotion("standard")


def step_body(loss_fn: Callable, optim: optax.GradientTransformation) -> Callable:
    """The un-jitted training step (see `make_step`)."""

    def step(model, opt_state, batch, key):
        (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key)
        params = eqx.filter(model, eqx.is_inexact_array)
        with _optax_promotion():
            return _update(loss, aux, grads, params, model, opt_state, batch, key)

    def _update(loss, aux, grads, params, model, opt_state, batch, key):
        if needs_value_fn(opt_state):
            # a line search (lbfgs): the loss on this step's batch and key, as a
            # function of the parameters alone
            static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
            value_fn = lambda p: loss_fn(eqx.combine(p, static), batch, key)[0]  # noqa: E731
            updates, new_opt_state = optim.update(grads, opt_state, params, value=loss,
                                                  grad=grads, value_fn=value_fn)
            aux = dict(aux, linesearch_steps=optax.tree_utils.tree_get(
                new_opt_state, "num_linesearch_steps").astype(jnp.float32))
        else:
            updates, new_opt_state = optim.update(grads, opt_state, params)
        new_model = eqx.apply_updates(model, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda a, b: jnp.where(finite, a, b) if eqx.is_array(a) else a, new, old
        )
        metrics = dict(aux, loss=loss, grad_norm=grad_norm, finite=finite)
        return keep(new_model, model), keep(new_opt_state, opt_state), metrics

    return step


def make_step(loss_fn: Callable, optim: optax.GradientTransformation) -> Callable:
    """One compiled training step: value-and-grad of `loss_fn(model, batch, key)`, an
    Optax update, and a guard that leaves the model and optimiser state unchanged when
    the loss or the gradients are non-finite (the step is then reported, not applied).

    **Arguments:**

    - `loss_fn`: `loss_fn(model, batch, key) -> (loss, aux)` with `aux` a dict of scalars.
    - `optim`: an Optax optimiser (e.g. from `make_optimizer`).

    **Returns:** `step(model, opt_state, batch, key) -> (model, opt_state, metrics)`,
    wrapped in `eqx.filter_jit`; `metrics` holds `aux` plus `loss`, `grad_norm`, `finite`.
    (`nodekit.train` runs the same body over flat arrays, cached on disk: see
    `CompiledStep`.)

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    import nodekit

    def loss_fn(model, batch, key):   # fit y(1) to a target from y(0)
        y0s, targets = batch
        ys = jax.vmap(lambda y0: model(jnp.array([0.0, 1.0]), y0))(y0s)
        return jnp.mean((ys[:, -1] - targets) ** 2), {}

    model = nodekit.NeuralODE(nodekit.MLPField(2, width=4, depth=1, key=jax.random.PRNGKey(0)))
    optim = optax.adam(1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    step = nodekit.make_step(loss_fn, optim)
    batch = (jnp.ones((4, 2)), jnp.zeros((4, 2)))
    for i in range(3):
        model, opt_state, metrics = step(model, opt_state, batch, jax.random.PRNGKey(i))
    print(metrics["loss"], metrics["finite"])
    ```
    """
    return eqx.filter_jit(step_body(loss_fn, optim))


def _spec(x):
    """The abstract value of `x`, keeping its sharding when it spans several devices
    (so the step compiled ahead of time accepts the sharded arrays it will be given)."""
    sharding = getattr(x, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def _source_hash() -> str:
    """Hash of nodekit's own source files (an edited library never loads a stale step)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _versions() -> dict:
    # From the installed metadata: reading the version must not import Diffrax or Optax
    # (a warm run that loads its step has no other use for them before the first step).
    from importlib.metadata import version

    import jaxlib

    from ._version import __version__

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "equinox": eqx.__version__,
            "diffrax": version("diffrax"), "optax": version("optax"), "nodekit": __version__}


def _remove_stale_temporaries(folder: Path, age_s: float = 3600.0) -> None:
    """Temporary files of writes killed mid-way (other processes may be writing theirs
    now: only those older than an hour go)."""
    import time

    for tmp in folder.glob(".*.tmp-*") if folder.is_dir() else ():
        try:
            if time.time() - tmp.stat().st_mtime > age_s:
                tmp.unlink()
        except OSError:
            pass


def _load_or_export(jitted, specs, path: Path, key: str, meta: Callable[[], dict]):
    """`(callable, source, note, meta)`: the function stored at `path`
    (`"export-cache"`) with the `meta` stored with it,
    or `jitted` traced, exported and stored there (`"traced+exported"`). An entry is used only when its stored key is `key` and its
    content hash matches (`nodekit._io`'s cache entries); anything else is ignored and
    rebuilt, and `note` says why; a new entry stores `meta()` (called after tracing).
    A step holding host callbacks (Equinox's runtime
    checks, unless `EQX_ON_ERROR=nan` was set before Equinox was imported, as the CLI
    does) cannot be exported: `export` raises, and the caller falls back to tracing."""
    from jax import export

    from ._io import pack_cache_entry, read_cache_entry

    payload, note, stored = read_cache_entry(path, key, with_meta=True)
    if payload is not None:
        try:
            exported = export.deserialize(bytearray(payload))
            return jax.jit(exported.call), "export-cache", None, stored
        except Exception as e:  # a valid entry JAX cannot read (another version): rebuild
            note = f"cache entry {path.name} ignored and rebuilt: unreadable ({type(e).__name__})"
    exported = export.export(jitted)(*specs)
    fresh = meta()
    _remove_stale_temporaries(path.parent)
    atomic_write_bytes(path, pack_cache_entry(key, bytes(exported.serialize()), fresh))
    return jax.jit(exported.call), "traced+exported", note, fresh


def _compile(fn, specs):
    """Trace (unless loaded) and compile now, so that the timing is explicit."""
    return fn.lower(*specs).compile()


def _digest(material: dict) -> str:
    material = dict(material, versions=_versions(), source=_source_hash(),
                    device=[jax.default_backend(), jax.devices()[0].device_kind],
                    x64=bool(jax.config.jax_enable_x64))
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class CompiledStep:
    """A training step over flat arrays, optionally loaded from the on-disk step cache.

    **Arguments:**

    - `step_body`: `body(model, opt_state, batch, key) -> (model, opt_state, metrics)`
      (pure JAX; not yet jitted).
    - `model`, `opt_state`, `batch`, `key`: examples fixing the structure and shapes.
    - `cache_dir`: folder for serialised steps, or `None` to trace every time.
    - `key_material`: JSON-able data identifying the step (e.g. the resolved config).
    - `fold_step`: if true, the step is called as `(leaves, batch, (key, step))` and
      draws its key as `jax.random.fold_in(key, step)` inside the compiled function
      (one host dispatch fewer per training step than folding eagerly).
    - `log`: called with a line for the console before compiling or loading, and with a
      note when a cache entry is ignored.

    A cache entry stores the full key it was made for and a hash of its content; an
    entry whose key or hash does not match (a swapped, copied or damaged file) is never
    used: the step is traced again, the entry rewritten, and `cache_note` says why.

    **Example:**

    ```python
    cs = CompiledStep(body, model, opt_state, batch, key, cache_dir=None, key_material={})
    leaves = cs.flatten(model, opt_state)
    leaves, metrics = cs(leaves, batch, key)
    model, opt_state = cs.unflatten(leaves)
    ```
    """

    def __init__(self, step_body: Callable, model, opt_state, batch, key, *,
                 cache_dir: str | Path | None, key_material: Any, fold_step: bool = False,
                 log: Callable[[str], None] | None = None):
        dynamic, self._static = eqx.partition((model, opt_state), eqx.is_array)
        leaves, self._treedef = jax.tree_util.tree_flatten(dynamic)
        self.source = "traced"
        self.cache_error: str | None = None

        treedef, static = self._treedef, self._static

        def flat_step(leaves, batch, key):
            if fold_step:
                key = jax.random.fold_in(*key)
            model, opt_state = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
            model, opt_state, metrics = step_body(model, opt_state, batch, key)
            new_leaves = jax.tree_util.tree_leaves(eqx.filter((model, opt_state), eqx.is_array))
            return new_leaves, metrics

        self._jitted = jax.jit(flat_step)
        specs = jax.tree_util.tree_map(_spec, (leaves, batch, key))
        self._specs = specs
        self.path = None
        self.cache_note: str | None = None
        #: `(name, reason)` of the step's solves (`"none"` without one): recorded while
        #: tracing, or read from the cache entry the step was loaded from.
        self.integrator: tuple[str, str] = ("none", "no ODE solve in the training step")
        if cache_dir is None:
            if log is not None:
                log("compiling the training step")
            with record_integrators() as recorded:
                self._call = _compile(self._jitted, specs)
            self.integrator = summarise_integrators(recorded)
            return
        digest = _digest({
            "key": key_material,
            "fold_step": fold_step,
            "specs": jax.tree_util.tree_map(lambda s: [list(s.shape), str(s.dtype)], specs),
        })
        self.path = Path(cache_dir) / "steps" / f"{digest[:32]}.jaxexport"
        if log is not None:
            log("loading the compiled training step from the cache" if self.path.exists() else
                "compiling the training step (this config's first run; the next run loads "
                "it from the cache)")
        meta = {}
        with record_integrators() as recorded:
            try:
                fn, self.source, self.cache_note, meta = _load_or_export(
                    self._jitted, specs, self.path, digest,
                    lambda: {"integrator": list(summarise_integrators(recorded))})
            except Exception as e:  # the cache is an optimisation: never fail a run over it
                self.cache_error = f"{type(e).__name__}: {e}"
                fn, self.source = self._jitted, "traced"
            if self.cache_note and log is not None:
                log(self.cache_note)
            self._call = _compile(fn, specs)
        stored = meta.get("integrator")
        if self.source == "export-cache" and isinstance(stored, list) and len(stored) == 2:
            self.integrator = (str(stored[0]), str(stored[1]))
        else:
            self.integrator = summarise_integrators(recorded)

    def flatten(self, model, opt_state) -> list:
        """The flat list of arrays of `(model, opt_state)`."""
        return jax.tree_util.tree_leaves(eqx.filter((model, opt_state), eqx.is_array))

    def unflatten(self, leaves) -> tuple:
        """`(model, opt_state)` from the flat list of arrays."""
        return eqx.combine(jax.tree_util.tree_unflatten(self._treedef, list(leaves)), self._static)

    def __call__(self, leaves, batch, key):
        return self._call(leaves, batch, key)

