"""Many runs in one compiled program: the members of a sweep that share their model's
shapes train together on an ensemble axis.

**What rides the axis.** A group's step is one `vmap` over stacked parameters,
optimiser states, batches and keys. Each member keeps its own seed (its parameters,
`train_key` and `task.batch(step)` are its single run's), and these values ride the
axis as inputs, so members that differ only in them share one program:

- the seed (keys and batches; and the task's floating-point data arrays, e.g. a toy
  density's samples drawn from the seed, passed as inputs when they differ);
- the learning rate (the peak of its schedule): `make_optimizer(..., learning_rate=x)`
  builds each member's optimiser inside the step from its traced rate, the single
  run's formulation with the config's number;
- the regularisers' weights: the loss is recomposed as `loss_task + sum w * reg_<name>`
  from the task's unweighted terms (a weight of 0 keeps its term computed);
- the cadences (`train.log_every`, `eval_every`, `checkpoint_every`), `train.steps`
  (when the learning rate does not follow a schedule over it), `on_nonfinite` and
  `max_solver_failures`: the host's business.

Everything else (model and solver settings, tolerances, STEER's width, batch size,
precision, data shapes) is static in the traced step, so members that differ there form
separate groups; `group_key` says which. A value is an input only when it differs in
the group: a group that shares its learning rate keeps it a constant, as a single run.

**Faults stay per member.** The host reads every member's metrics after each step and
runs each member's own guards (`_Run.record_step`): a member that faults is frozen (a
mask on the axis keeps its state; it keeps its last good checkpoint and its summary
says why) and the others go on.

**Devices.** With `train.devices` > 1 the axis is sharded over a 1-D mesh `"members"`
(padded to a multiple of the devices with masked copies), and the step runs under
`shard_map`: each device steps its own members, so devices never talk inside a solve.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import json
import math
import time
import types
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._build import _builder, check_memory, usable_cache_dir
from ._checkpoint import hashed_config
from ._config import Config
from ._errors import TrainingFault
from ._loop import _WRITE_ERRNOS, _Run, _schedule_spans_steps
from ._optim import make_optimizer
from ._step import CompiledStep, _digest as step_digest, step_body

#: Most members one compiled program holds; a larger group is split into programs of
#: this size (each member keeps a few files open while it trains).
MAX_PROGRAM_MEMBERS = 128
#: Compiled programs kept in this process (a sweep run again, e.g. resumed after a stop
#: in a notebook, reuses its program instead of compiling it again).
MAX_KEPT_PROGRAMS = 2
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
#: The regularisers whose weights can ride the ensemble axis (`reg_<name>` in aux).
WEIGHTED = ("kinetic", "jacobian", "taylor")
#: Task attributes that are not the task's data (handled by the group key).
_NOT_DATA = ("config", "regularisers")


@dataclasses.dataclass
class Member:
    """One run of a sweep: its name, the values it sets, its config and workdir, and
    (once accepted) its `_Run`, status and summary."""

    index: int
    name: str
    values: dict
    config: Config
    workdir: Path
    run: _Run | None = None
    status: str = "pending"
    message: str | None = None
    summary: dict | None = None
    group: int | None = None
    skipped: bool = False  # finished before this call: not retrained


# ----------------------------------------------------------------- grouping


def group_key(cfg: Config) -> dict:
    """The part of a member's config that fixes its compiled step: the config less the
    values that ride the ensemble axis (seed, learning rate unless the optimiser is
    `lbfgs`, regulariser weights, data seeds) and the host-side train settings."""
    d = cfg.to_dict()
    d["seed"] = None
    if d["optimizer"]["name"] != "lbfgs":
        d["optimizer"]["learning_rate"] = None
    for name in WEIGHTED:
        if d["regularisation"].get(name) is not None:
            d["regularisation"][name]["weight"] = None
    for k in ("seed", "test_seed"):
        if k in d["data"]:
            d["data"][k] = None  # the data arrays are compared instead (`_signature`)
    t = d["train"]
    d["train"] = {"batch_size": t["batch_size"], "eval_batch_mode": t["eval_batch_mode"],
                  "steps": t["steps"] if _schedule_spans_steps(cfg) else None}
    return d


def _is_data(v) -> bool:
    """A floating-point array of the task (or a tuple/list of them): may ride the axis."""
    if isinstance(v, np.ndarray):
        return np.issubdtype(v.dtype, np.floating)
    return (isinstance(v, (tuple, list)) and len(v) > 0
            and all(isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) for x in v))


def _describe(x, h, depth: int = 0) -> None:
    """Feed a description of `x` into hash `h`: arrays by content, objects by their
    attributes, functions and classes by name (a module loaded twice is the same)."""
    if depth > 12:
        h.update(b"<deep>")
        return
    if isinstance(x, (np.ndarray, np.generic)) or isinstance(x, jax.Array):
        a = np.asarray(x)
        h.update(f"a{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes() if a.dtype != object else repr(a).encode())
    elif isinstance(x, (str, int, float, bool, bytes, type(None), np.dtype, Path)):
        h.update(f"{type(x).__name__}:{x!r}".encode())
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__}[{len(x)}".encode())
        for v in x:
            _describe(v, h, depth + 1)
    elif isinstance(x, dict):
        h.update(f"dict[{len(x)}".encode())
        for k in sorted(x, key=str):
            h.update(str(k).encode())
            _describe(x[k], h, depth + 1)
    elif isinstance(x, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        h.update(f"fn:{getattr(x, '__module__', '')}.{getattr(x, '__qualname__', x)}".encode())
    elif hasattr(x, "model_dump"):  # a config section
        h.update(json.dumps(x.model_dump(mode="json"), sort_keys=True).encode())
    elif hasattr(x, "__dict__"):
        h.update(f"obj:{type(x).__module__}.{type(x).__qualname__}".encode())
        _describe(vars(x), h, depth + 1)
    else:
        h.update(f"{type(x).__qualname__}:{x!r}".encode())


def _signature(task) -> tuple[str, dict]:
    """`(digest, data)`: a digest of what the task holds besides its floating-point
    data arrays, and those arrays by attribute name."""
    h = hashlib.sha256()
    data = {}
    for name in sorted(vars(task)):
        if name in _NOT_DATA:
            continue
        v = vars(task)[name]
        if _is_data(v):
            data[name] = v
        else:
            h.update(name.encode())
            _describe(v, h)
    return h.hexdigest(), data


def _data_layout(data: dict) -> tuple:
    return tuple((k, type(v).__name__, tuple((x.shape, str(x.dtype)) for x in
                                             (v if isinstance(v, (tuple, list)) else [v])))
                 for k, v in sorted(data.items()))


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    return all(_same(x, y) for x, y in zip(a, b))


@dataclasses.dataclass
class Group:
    """Members that train as one program, and what rides their ensemble axis."""

    members: list[Member]
    traced: list[str]  # in the user's words: "seed", "optimizer.learning_rate", ...
    lr_traced: bool
    weights: tuple[str, ...]  # regulariser names whose weights are inputs
    swapped: tuple[str, ...]  # task data attributes passed as inputs
    key: dict  # group_key of its members
    id: int = 0

    @property
    def rep(self) -> Member:
        return self.members[0]


def _reg_names(cfg: Config) -> tuple[str, ...]:
    return tuple(n for n in WEIGHTED if getattr(cfg.regularisation, n) is not None)


def _make_group(members: list[Member], key: dict, data_swap: bool = True) -> Group:
    cfgs = [m.config for m in members]
    lr_traced = len({c.optimizer.learning_rate for c in cfgs}) > 1
    regs = _reg_names(cfgs[0])
    weights = tuple(n for n in regs if len({getattr(c.regularisation, n).weight for c in cfgs}) > 1)
    datas = [_signature(m.run.task)[1] for m in members]
    swapped = tuple(k for k in sorted(datas[0]) if any(not _same(d[k], datas[0][k]) for d in datas))
    if swapped and not data_swap:
        raise AssertionError("members with differing data in a group without data inputs")
    traced = []
    if len({c.seed for c in cfgs}) > 1:
        traced.append("seed")
    if lr_traced:
        traced.append("optimizer.learning_rate")
    traced += [f"regularisation.{n}.weight" for n in weights]
    traced += [f"task data {k!r}" for k in swapped]
    return Group(members, traced, lr_traced, weights, swapped, key)


def plan_groups(members: list[Member], *, data_swap: bool = True) -> list[Group]:
    """Split accepted members (their tasks built) into groups that can share a program:
    the same `group_key`, the same task contents besides the data arrays, and data
    arrays of the same shapes (with `data_swap=False`: the same data arrays). A group
    larger than `MAX_PROGRAM_MEMBERS` becomes several programs."""
    buckets: dict[str, list[Member]] = {}
    keys: dict[str, dict] = {}
    for m in members:
        key = group_key(m.config)
        digest, data = _signature(m.run.task)
        extra = _data_layout(data) if data_swap else tuple(
            (k, hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in
                                        (v if isinstance(v, (tuple, list)) else [v]))).hexdigest())
            for k, v in sorted(data.items()))
        b = json.dumps([key, digest, repr(extra)], sort_keys=True, default=str)
        buckets.setdefault(b, []).append(m)
        keys[b] = key
    groups = []
    for b, ms in buckets.items():
        for i in range(0, len(ms), MAX_PROGRAM_MEMBERS):
            groups.append(_make_group(ms[i:i + MAX_PROGRAM_MEMBERS], keys[b]))
    return groups


def split_group(group: Group) -> list[Group]:
    """The group's members regrouped without data inputs (when the task's code cannot
    take its data arrays as traced values)."""
    return plan_groups(group.members, data_swap=False)


class NeedsSplit(Exception):
    """The task's loss or evaluation used a data array in a way a traced value cannot
    serve (NumPy on it, a Python `if`): its members train with their data as constants."""


_TRACE_ERRORS = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
                 jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


# ----------------------------------------------------------------- the program


def _with_data(task, data: dict):
    """`task` with its data attributes replaced by `data` (traced arrays)."""
    if not data:
        return task
    t = copy.copy(task)
    for name, value in data.items():
        old = vars(task)[name]
        t.__dict__[name] = type(old)(value) if isinstance(old, (tuple, list)) else value
    return t


def _members_spec():
    from jax.sharding import PartitionSpec

    return PartitionSpec("members")


def _on_mesh(local, mesh, static):
    """`local(tree, *rest)` (its first argument's array leaves and every other argument
    stacked along the members) run per device under `shard_map` over `mesh`; `static`
    the non-array part of the first argument's tree."""
    spec = _members_spec()

    def arrays(dyn, *rest):
        return local(eqx.combine(dyn, static), *rest)

    def run(tree, *rest):
        dyn = eqx.filter(tree, eqx.is_array)
        # (check_vma off: Diffrax's loops build carries that its type check cannot follow)
        return jax.shard_map(arrays, mesh=mesh, in_specs=spec, out_specs=spec,
                             check_vma=False)(dyn, *rest)

    return run


def _where(mask, a, b):
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def _lend(mask, tree):
    """`tree` (stacked) with every slot outside `mask` replaced by the first slot inside
    it: a frozen, finished or padded member computes a live member's (cheap, finite)
    step, never a diverged one's (a vmapped solve runs as long as its slowest member).
    The slots inside `mask` are passed through unchanged."""
    first = jnp.argmax(mask)

    def lend(x):
        return _where(mask, x, x[first][None]) if eqx.is_array(x) else x

    return jax.tree_util.tree_map(lend, tree)


def _keep(mask, new, old):
    """`new` in the slots inside `mask`, `old` elsewhere (a frozen member keeps its state)."""
    return jax.tree_util.tree_map(lambda a, b: _where(mask, a, b) if eqx.is_array(a) else a,
                                  new, old)


def _per_member(fn, n: int):
    """`fn` mapped over the members' axis: `vmap`, or for a single member a plain call
    (a vmapped loop selects its whole carry every iteration even for one member: 4x
    slower for a Diffrax solve with stored checkpoints, measured on the 2-D density)."""
    if n != 1:
        return eqx.filter_vmap(fn)

    def one(*args):
        out = fn(*jax.tree_util.tree_map(lambda x: x[0] if eqx.is_array(x) else x, args))
        return jax.tree_util.tree_map(lambda x: x[None] if eqx.is_array(x) else x, out)

    return one


def _step_fn(group: Group, mesh):
    """The ensemble's step body `(models, opt_states, inputs, (keys, steps))`; with a
    `mesh`, each device steps its own members under `shard_map`."""
    rep = group.rep.run
    task, cfg = rep.task, rep.config
    weights = group.weights
    lr_traced = group.lr_traced

    def member(model, opt_state, batch, key, hyper):
        t = _with_data(task, hyper["data"])
        loss_fn = t.loss
        if weights:
            def loss_fn(model, batch, key):
                _, aux = t.loss(model, batch, key)
                total = aux["loss_task"]
                for i, name in enumerate(weights):  # as add_penalties, weights traced
                    total = total + hyper["weights"][i] * aux[f"reg_{name}"]
                return total, aux
        optim = make_optimizer(cfg.optimizer, cfg.train.steps,
                               learning_rate=hyper["lr"] if lr_traced else None)
        return step_body(loss_fn, optim)(model, opt_state, batch, key)

    def local(model, opt_state, inputs, key):
        keys, steps = key
        keys = jax.vmap(jax.random.fold_in)(keys, steps)  # each member's fold_in(key, step)
        live = inputs["live"]
        args = _lend(live, (model, opt_state, inputs["batch"], keys, inputs["hyper"]))
        new_model, new_opt, metrics = _per_member(member, live.shape[0])(*args)
        return _keep(live, new_model, model), _keep(live, new_opt, opt_state), metrics

    if mesh is None:
        return local

    def body(model, opt_state, inputs, key):
        static = eqx.filter((model, opt_state), eqx.is_array, inverse=True)

        def pair(tree, inputs, key):
            m, o, metrics = local(tree[0], tree[1], inputs, key)
            return eqx.filter((m, o), eqx.is_array), metrics

        dyn, metrics = _on_mesh(pair, mesh, static)((model, opt_state), inputs, key)
        m, o = eqx.combine(dyn, static)
        return m, o, metrics

    return body


def _eval_fn(group: Group, mesh, static):
    """The ensemble's evaluation `(arrays of the models, data, want) -> metrics`
    (stacked; the slots outside `want` evaluate another member's model)."""
    task = group.rep.run.task

    def local(model, data, want):
        model, data = _lend(want, (model, data))
        return _per_member(lambda m, d: _with_data(task, d).evaluate(m), want.shape[0])(
            model, data)

    if mesh is None:
        return lambda dyn, data, want: local(eqx.combine(dyn, static), data, want)
    run = _on_mesh(local, mesh, static)
    return lambda dyn, data, want: run(eqx.combine(dyn, static), data, want)


def _fetch(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as a host NumPy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class _Stack:
    """The stacked arrays of one ensemble state; fetched to the host once, when a
    member's slice is first read (a checkpoint, a fault, the summary)."""

    def __init__(self, leaves):
        self.leaves = leaves
        self._host = None

    def host(self) -> list[np.ndarray]:
        if self._host is None:
            self._host = [_fetch(x) for x in self.leaves]
        return self._host


class _Slice:
    """One member's flat leaves of a `_Stack` (read lazily; `CompiledStep.unflatten`
    takes it like a list)."""

    def __init__(self, stack: _Stack, i: int):
        self.stack, self.i = stack, i

    def __iter__(self):
        return iter([h[self.i] for h in self.stack.host()])

    def __len__(self):
        return len(self.stack.leaves)


def _host_rows(metrics: dict) -> dict:
    return {k: _fetch(v) for k, v in metrics.items()}


def _member_host(rows: dict, i: int) -> dict:
    """Member `i`'s metrics as the single run's `_to_host` gives them."""
    return {k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in rows.items()}


class Ensemble:
    """One group's program and its training: build the stacked initial state, compile
    the step and the evaluation, open the members (resuming their checkpoints), train,
    and end each member's run with its summary.

    **Arguments:** the `Group`; `mesh` (a 1-D `"members"` mesh, or `None` for one
    device); `say` (the sweep's console lines); `words` (CLI or Python wording).
    """

    def __init__(self, group: Group, mesh, say, restart: bool):
        self.group = group
        self.mesh = mesh
        self.say = say
        self.restart = restart
        self.members = group.members
        n_dev = 1 if mesh is None else mesh.devices.size
        self.k = len(self.members)
        self.k_pad = -(-self.k // n_dev) * n_dev
        # padded slots repeat the last member, masked (never written)
        self.slots = self.members + [self.members[-1]] * (self.k_pad - self.k)
        self.rep = group.rep.run
        self.dtype = np.dtype(self.rep.config.precision)
        self.compile_s = None
        self.stop_name: str | None = None
        self.step_times: list[float] = []
        self.partition = "one device"

    # -- placement

    def _sharding(self):
        if self.mesh is None:
            return None
        from jax.sharding import NamedSharding

        return NamedSharding(self.mesh, _members_spec())

    def _put(self, x):
        sharding = self._sharding()
        if sharding is None:
            return jnp.asarray(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def _put_tree(self, tree, *, host_ok: bool = False):
        if self.mesh is None and host_ok:
            return tree  # NumPy goes straight into the compiled call
        return jax.tree_util.tree_map(lambda x: self._put(x) if eqx.is_array(x) else x, tree)

    # -- phase: build (nothing written)

    def build(self) -> None:
        """Stacked initial states from the members' seeds (one compiled call), the
        hyperparameter inputs, and the compiled step and evaluation (or those of an
        earlier sweep of the same members in this process).

        **Raises:** `NeedsSplit` when the task cannot take its data as inputs;
        `TrainingFault` (out of memory) when the stacked state cannot fit."""
        rep, g = self.rep, self.group
        t0 = time.perf_counter()
        self.t_step_start = t0
        self.material = self._material()
        self.key = step_digest({"program": self.material, "slots": self.k_pad,
                            "devices": 1 if self.mesh is None else int(self.mesh.devices.size)})
        program = _PROGRAMS.get(self.key)
        if program is not None:
            _PROGRAMS.move_to_end(self.key)
            self.say("reusing the ensemble step compiled for these members earlier in this process")
        seeds = np.asarray([m.config.seed for m in self.slots], np.uint32)
        if program is None:
            init = eqx.filter_vmap(_builder(rep.task, rep.optim, True))
            shapes = eqx.filter_eval_shape(init, seeds)
            device = (self.mesh.devices.flat[0] if self.mesh is not None else jax.devices()[0])
            check_memory(rep.config, shapes, device)
            init = eqx.filter_jit(init)
        else:
            init = program["init"]
        models, opts, keys = init(seeds)
        self.models0, self.opts0 = models, opts
        self.keys = self._put(_fetch(keys))
        dyn, self.static = eqx.partition((models, opts), eqx.is_array)
        host = [_fetch(x) for x in jax.tree_util.tree_leaves(dyn)]
        self.fresh = _Stack(host)
        self.fresh._host = host
        hyper: dict[str, Any] = {"data": {}}
        if g.lr_traced:
            hyper["lr"] = np.asarray([m.config.optimizer.learning_rate for m in self.slots],
                                     self.dtype)
        if g.weights:
            hyper["weights"] = np.asarray(
                [[getattr(m.config.regularisation, n).weight for n in g.weights]
                 for m in self.slots], self.dtype)
        for name in g.swapped:
            vals = [vars(m.run.task)[name] for m in self.slots]
            if isinstance(vals[0], (tuple, list)):
                hyper["data"][name] = tuple(np.stack([v[j] for v in vals])
                                            for j in range(len(vals[0])))
            else:
                hyper["data"][name] = np.stack(vals)
        self.hyper = self._put_tree(hyper)
        self.dummies = [None] * self.k_pad
        if program is None:
            self._compile()
            _PROGRAMS[self.key] = {"init": init, "step": self.compiled, "eval": self._eval_call,
                                   "partition": self.partition}
            while len(_PROGRAMS) > MAX_KEPT_PROGRAMS:
                _PROGRAMS.popitem(last=False)
        else:
            self.compiled, self._eval_call = program["step"], program["eval"]
            self.partition = program["partition"]
        self.compile_s = time.perf_counter() - t0
        for m in self.members:
            r = m.run
            r.compiled, r.compile_s, r.t_step_start = self.compiled, self.compile_s, t0
            r.integrator = self.compiled.integrator  # recorded when the step was traced

    def _material(self) -> dict:
        """What the compiled step depends on: every slot's config less the values that
        are its inputs, what rides the axis, and the user's files."""
        g, cfg = self.group, self.rep.config
        return {
            "ensemble": [hashed_config(self._member_key(m.config)) for m in self.slots],
            "weights": list(g.weights), "lr_traced": g.lr_traced, "swapped": list(g.swapped),
            "files": self.rep.task.fingerprint(),
            "steps": cfg.train.steps if _schedule_spans_steps(cfg) else None,
        }

    def _batch(self, i: int, step: int | None):
        m = self.slots[i]
        if step is not None:
            return m.run.task.batch(int(step))
        if self.dummies[i] is None:  # a frozen, finished or padded slot: any batch will do
            self.dummies[i] = m.run.task.batch(0)
        return self.dummies[i]

    def _inputs(self, steps, live):
        batches = [self._batch(i, steps[i] if live[i] else None) for i in range(self.k_pad)]
        batch = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
        return {"batch": self._put_tree(batch, host_ok=True), "hyper": self.hyper,
                "live": self._put_tree(np.asarray(live, bool), host_ok=True)}

    def _key(self, steps):
        return (self.keys, self._put_tree(np.asarray(steps, np.int32), host_ok=True))

    def _compile(self) -> None:
        """Trace and compile the step and the evaluation. Over several devices each
        device steps its own members (`shard_map`); where a solver's code cannot be
        traced that way (Diffrax's checkpointed loops, here), XLA partitions the
        members instead, and the members' loops then agree on their stop with one small
        all-reduce per solver step (`partition` in the group's record says which)."""
        g, cfg = self.group, self.rep.config
        cache_dir = None
        if cfg.train.compile_cache and self.mesh is None:
            cache_dir, note = usable_cache_dir("xla")
            if note:
                self.say(note)
        if self.mesh is None:
            self.partition = "one device"
            self._trace(self.mesh, cache_dir)
            return
        try:
            self.partition = "shard_map"
            self._trace(self.mesh, cache_dir)
        except NeedsSplit:
            raise
        except Exception as e:  # noqa: BLE001 - a solver's loop that shard_map cannot trace
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self.say(f"each device cannot step its own members here ({type(e).__name__}: "
                     f"{first}); XLA partitions the members instead")
            self.partition = "xla"
            self._trace(None, cache_dir)

    def _trace(self, mesh, cache_dir) -> None:
        g = self.group
        steps = np.zeros(self.k_pad, np.int32)
        live = np.ones(self.k_pad, bool)
        example = self._inputs(steps, live)
        models = self._put_tree(self.models0)
        opts = self._put_tree(self.opts0)
        try:
            self.compiled = CompiledStep(
                _step_fn(g, mesh), models, opts, example, self._key(steps),
                cache_dir=cache_dir, key_material=self.material, fold_step=False, log=self.say)
            dyn = self._put_tree(eqx.filter(self.models0, eqx.is_array))
            static = eqx.filter(self.models0, eqx.is_array, inverse=True)
            want = self._put_tree(np.ones(self.k_pad, bool))
            try:
                ev = jax.jit(_eval_fn(g, mesh, static))
                self._eval_call = ev.lower(dyn, self.hyper["data"], want).compile()
            except _TRACE_ERRORS:
                raise
            except Exception:  # noqa: BLE001 - (as the step, for the evaluation alone)
                if mesh is None:
                    raise
                ev = jax.jit(_eval_fn(g, None, static))
                self._eval_call = ev.lower(dyn, self.hyper["data"], want).compile()
        except _TRACE_ERRORS as e:
            if g.swapped:
                raise NeedsSplit(str(e)) from None
            raise

    def _member_key(self, cfg: Config) -> dict:
        d = cfg.to_dict()
        if self.group.lr_traced:
            d["optimizer"]["learning_rate"] = None
        for n in self.group.weights:
            d["regularisation"][n]["weight"] = None
        return d

    def evaluate(self, leaves, want) -> dict:
        """The evaluation metrics (host arrays, one row per slot; only the slots in
        `want` are meaningful) for the stacked `leaves`."""
        models = self.compiled.unflatten(leaves)[0]
        mask = np.zeros(self.k_pad, bool)
        mask[list(want)] = True
        return _host_rows(self._eval_call(eqx.filter(models, eqx.is_array), self.hyper["data"],
                                          self._put(mask)))

    # -- phase: open (writes each member's workdir)

    def open(self) -> None:
        """Open every member's run (lock, resume its checkpoint or start afresh, logs
        and `config.yaml`) and stack their states. A bad checkpoint raises
        `CheckpointError` (the members opened so far are closed again)."""
        treedef = jax.tree_util.tree_structure(eqx.filter((self.models0, self.opts0),
                                                          eqx.is_array))
        leaves_per_slot = []
        opened = []
        try:
            for i, m in enumerate(self.members):
                r = m.run
                r.open_workdir()
                opened.append(r)
                tree = eqx.combine(jax.tree_util.tree_unflatten(
                    treedef, [h[i] for h in self.fresh.host()]), self.static)
                model, opt = r.start_state(*tree)
                r.open_logs()
                leaves_per_slot.append([np.asarray(x) for x in jax.tree_util.tree_leaves(
                    eqx.filter((model, opt), eqx.is_array))])
        except BaseException:
            for r in opened:
                if r.log is not None:
                    r.log.close()
                if r.opened:
                    r.wd.close()
            raise
        leaves_per_slot += [leaves_per_slot[-1]] * (self.k_pad - self.k)
        self.state = [self._put(np.stack(xs)) for xs in zip(*leaves_per_slot)]
        self.steps = np.asarray([m.run.start for m in self.slots], np.int64)
        self.totals = np.asarray([m.run.config.train.steps for m in self.slots], np.int64)
        self.frozen = np.zeros(self.k_pad, bool)
        self.frozen[self.k:] = True  # padding never trains
        start = _Stack(self.state)
        for i, m in enumerate(self.members):
            m.run.state = _Slice(start, i)
            m.status = "running"
        del self.models0, self.opts0

    # -- phase: train

    def live(self) -> np.ndarray:
        return (self.steps < self.totals) & ~self.frozen

    def train(self, console) -> str | None:
        """Train until every member is done, frozen or a stop is requested; returns the
        stop signal's name or `None`."""
        live = self.live()
        first, total = int(self.steps[:self.k].min()), int(self.totals[:self.k].max())
        console.start_training(first, total)
        state = self.state
        pending = None
        last_done = self.t_step_start
        it = 0
        while True:
            launch = bool(live.any())
            if launch:
                inputs = self._inputs(self.steps, live)
                new_state, metrics = self.compiled(state, inputs, self._key(self.steps))
            if pending is not None:
                p_steps, p_live, p_metrics, p_before, p_after = pending
                rows = _host_rows(p_metrics)
                now = time.perf_counter()
                dt = now - last_done
                last_done = now
                self.step_times.append(dt)
                it += 1
                before, after = _Stack(p_before), _Stack(p_after)
                if jax.process_count() > 1:
                    # every process gathers the states now (process 0 writes any member's
                    # checkpoint from them; a gather is collective)
                    before.host(), after.host()
                done_of = {}
                for i, m in enumerate(self.members):
                    if not p_live[i] or self.frozen[i]:
                        continue
                    host = _member_host(rows, i)
                    host["step_time_s"] = dt
                    r = m.run
                    try:
                        done_of[i], _ = r.record_step(int(p_steps[i]), host, _Slice(before, i),
                                                      _Slice(after, i), now)
                    except (TrainingFault, OSError) as e:
                        self._freeze(m, i, e)
                due = [i for i, d in done_of.items() if self.members[i].run.eval_due(d)]
                if due:
                    ev = self.evaluate(p_after, due)
                    for i in due:
                        r = self.members[i].run
                        try:
                            r.record_eval(done_of[i], _member_host(ev, i), write=True)
                            r.keep_best(_Slice(after, i), done_of[i])
                        except OSError as e:
                            self._freeze(self.members[i], i, e)
                            done_of.pop(i)
                stop = self.rep._stop_requested(it, True)
                for i, d in done_of.items():
                    r = self.members[i].run
                    if self.frozen[i] or not (r.checkpoint_due(d) or stop):
                        continue
                    try:
                        r.save(r.wd.latest, _Slice(after, i), d)
                    except OSError as e:
                        self._freeze(self.members[i], i, e)
                self._progress(console, rows, p_steps, p_live)
                if stop:
                    self.stop_name = stop
                    state = p_after
                    break
            if not launch:
                break
            pending = (self.steps.copy(), live.copy(), metrics, state, new_state)
            state = new_state
            self.steps = self.steps + live
            live = self.live()
        self.state = state
        console.close()
        return self.stop_name

    def _progress(self, console, rows, p_steps, p_live) -> None:
        """The sweep's progress: the median loss of the members that stepped."""
        idx = [i for i in range(self.k) if p_live[i] and not self.frozen[i]]
        losses = [float(rows["loss"][i]) for i in idx if math.isfinite(float(rows["loss"][i]))]
        if not losses:
            return
        nfe = rows.get("nfe_forward")
        nfe_mean = float(np.mean([nfe[i] for i in idx])) if nfe is not None else None
        console.step(int(p_steps[idx].max()) + 1, float(np.median(losses)), nfe_mean, True)

    def _freeze(self, m: Member, i: int, e: BaseException) -> None:
        """End member `i`'s run on a fault (its last good checkpoint is on disk): the
        summary says why, its slot is masked from now on."""
        r = m.run
        self.frozen[i] = True
        if isinstance(e, OSError):
            if e.errno not in _WRITE_ERRNOS:
                raise e
            e = r._write_fault(e)
        if r.log is not None:
            r.log.close()
        m.summary = r._fault_summary(e)
        m.status = getattr(e, "status", "fault")
        m.message = str(e)
        self.say(f"member {m.name} stopped at step {r.done}: {m.status} (the others go on; "
                 f"its last good checkpoint is kept)")
        if r.opened:
            r.wd.close()

    # -- the end

    def finish(self) -> None:
        """Summaries of the members that did not fault: finished (`ok`, with plots) or
        stopped. Members that had finished before this call are evaluated first."""
        state = _Stack(self.state)
        if jax.process_count() > 1:
            state.host()  # (collective: before any process reads a member's slice)
        ended = [i for i, m in enumerate(self.members) if not self.frozen[i]]
        if self.stop_name is None:
            unevaluated = [i for i in ended if self.members[i].run.start >= self.totals[i]]
            if unevaluated:
                ev = self.evaluate(self.state, unevaluated)
                for i in unevaluated:
                    r = self.members[i].run
                    r.record_eval(r.done, _member_host(ev, i), write=False)
        for i in ended:
            m = self.members[i]
            r = m.run
            r.state = _Slice(state, i)
            if r.log is not None:
                r.log.close()
            try:
                if self.stop_name is not None:
                    m.status = f"stopped ({self.stop_name})"
                    m.summary = r.summary(m.status, None, plots=False)
                else:
                    m.summary = r.summary("ok", None, plots=True)
                    m.status = "ok"
            except OSError as e:
                if e.errno not in _WRITE_ERRNOS:
                    raise
                fault = r._write_fault(e)
                m.status, m.message = fault.status, str(fault)
            finally:
                if r.opened:
                    r.wd.close()

    def close(self) -> None:
        """Release every member's files (after an error)."""
        for m in self.members:
            r = m.run
            if r is None:
                continue
            if r.log is not None:
                r.log.close()
            if r.opened:
                r.wd.close()
