"""The training loop: built whole, from a validated config to a finished run directory.

`train` runs in three phases, each ending at a check of the stop flag (`_signals`):

1. **Accept the input; write nothing.** The config is validated, the multi-host runtime
   started (before any computation), the task built (its data loaded and checked), the
   devices laid out, the memory need estimated from shapes alone, and an `init_from`
   run read. Any bad input raises here, before the workdir is touched.
2. **Open the run.** The workdir is created and locked (one process per workdir), a
   `restart` moves the previous run aside, a resume loads `latest.nkc` (falling back to
   `previous.nkc` with a warning if it is unusable), the metric rows past the checkpoint
   are dropped (atomically), `config.yaml` is written, and the step is compiled (or
   loaded from the cache).
3. **Train.** One compiled call per step; the host reads step `s`'s metrics while step
   `s + 1` runs. Each finished step: guards (non-finite values, solver failures), metric
   rows, eval, checkpoints (the rows a checkpoint covers are flushed and fsynced first),
   and the stop flag. The summary and plots end the run, whatever ended it.

Faults become `TrainingFault` (exit code 3: non-finite values, solver failures, out of
memory, a full disk or an unwritable file), stops become `Stopped` (130/143); both leave
the last good checkpoint and write the summary.
"""

from __future__ import annotations

import errno
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from . import _signals
from ._build import (
    build_state, check_memory, init_distributed, is_out_of_memory, out_of_memory_fault,
    put_batch, setup_devices, state_shapes, usable_cache_dir,
)
from ._checkpoint import (
    _leaf_specs, best_value, hashed_config, load_checkpoint, payload_arrays, read_header,
    save_checkpoint,
)
from ._config import Config, dump_yaml, load_config, validate
from ._errors import (CheckpointError, ConfigError, InputError, SolverError, TrainingFault,
                      solver_failure_message)
from ._io import take_notes
from ._odeint import result_name
from ._optim import make_optimizer
from ._rundir import MetricsLog, Workdir, atomic_write_bytes, json_float, write_json
from ._signals import Stopped
from ._step import CompiledStep, step_body
from .tasks import make_task

#: Error numbers of a write that the run cannot do anything about (exit code 3).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                 errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}

#: At most one plain progress line per this many seconds (logs, not terminals).
LINE_INTERVAL_S = 5.0


# ----------------------------------------------------------------- console


class _Console:
    """What a run says while it works, on stderr: a line per phase, then either a live
    bar (`"bar"`, a terminal) or plain lines at the logged steps, at most one every
    `LINE_INTERVAL_S` seconds (`"lines"`, a log file); `"quiet"` says nothing."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        self._last_line = -math.inf
        self.total = self.start = 0
        self._t0 = None
        self._timer = None
        self._held: list[str] | None = None

    def hold(self) -> None:
        """Keep lines back until `release()` (while input may still be refused: a
        refusal then prints one message and nothing else); `drop()` discards them."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        self.settle()
        for line in held:
            self.say(line)

    def drop(self) -> None:
        self._held = None
        self.settle()

    def later(self, text: str, after: float = 2.0) -> None:
        """Say `text` only if the phase it announces still runs `after` seconds from now
        (`settle()` cancels it): bad input found quickly stays one message."""
        if self.mode == "quiet":
            return
        import threading

        self.settle()
        self._timer = threading.Timer(after, lambda: self.say(text + " ...", now=True))
        self._timer.daemon = True
        self._timer.start()

    def settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stamp(self) -> str:
        return f"nodekit {time.perf_counter() - _signals.PROCESS_START:6.1f}s  "

    def say(self, text: str, *, now: bool = False) -> None:
        if self.mode == "quiet":
            return
        if self._held is not None and not now:
            self._held.append(text)
            return
        if self.bar is not None:
            self.bar.console.print(self._stamp() + text, markup=False, highlight=False)
        else:
            print(self._stamp() + text, file=sys.stderr, flush=True)

    def start_training(self, start: int, total: int) -> None:
        self.start, self.total = start, total
        self._t0 = time.perf_counter()
        if self.mode == "bar" and start < total:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  nfe {task.fields[nfe]}"),
                TimeRemainingColumn(), transient=False,
            )
            self._task = self.bar.add_task("train", total=total, completed=start, loss="-", nfe="-")
            self.bar.start()

    def step(self, done: int, loss: float, nfe, logged: bool) -> None:
        if self.bar is not None:
            self.bar.update(self._task, completed=done, loss=f"{loss:.4g}",
                            nfe="-" if nfe is None else f"{nfe:.0f}")
            return
        if self.mode != "lines" or not (logged or done == self.total):
            return
        now = time.perf_counter()
        if now - self._last_line < LINE_INTERVAL_S and done not in (self.start + 1, self.total):
            return
        self._last_line = now
        rate = (done - self.start) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        nfe_text = "" if nfe is None else f"  nfe {nfe:.0f}"
        self.say(f"step {done}/{self.total}  loss {loss:.4g}{nfe_text}  "
                 f"{rate:.1f} steps/s  eta {eta:.0f}s")

    def eval(self, done: int, ev: dict) -> None:
        loss = ev.get("eval_loss")
        if loss is None or self.mode == "quiet":
            return
        now = time.perf_counter()
        if self.bar is None and now - self._last_line < LINE_INTERVAL_S and done != self.total:
            return
        self._last_line = now
        self.say(f"eval after step {done}: eval_loss {loss:.4g}")

    def close(self) -> None:
        self.settle()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _console_mode(config: Config, progress: bool | None) -> str:
    show = config.train.progress if progress is None else progress
    if not show:
        return "quiet"
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return "bar" if interactive else "lines"


# ----------------------------------------------------------------- helpers


def _local(tree):
    """Arrays spread over several processes as host copies (they are replicated), so
    that evaluation and plots run on each process alone."""
    if jax.process_count() == 1:
        return tree

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree_util.tree_map(local, tree)


def _to_host(metrics: dict) -> dict:
    out = {}
    for k, v in _local(metrics).items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == bool else float(v)
    return out


def _as_config(config) -> Config:
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, dict):
        return validate(config)
    if isinstance(config, Config):
        return config
    raise InputError(f"config must be a Config, a dict or the path of a YAML file; got "
                     f"{type(config).__name__}.")


def _schedule_spans_steps(config: Config) -> bool:
    """Whether the learning rate at a step depends on `train.steps`."""
    return config.optimizer.name != "lbfgs" and config.optimizer.schedule != "constant"


class _Words:
    """Advice in the caller's language: command-line flags or Python arguments."""

    def __init__(self, cli: bool, workdir: Path):
        self.cli, self.workdir = cli, workdir

    def fresh(self) -> str:
        if self.cli:
            return ("Start afresh with --restart (the old run is moved to previous-run/ until "
                    "the new one's first checkpoint), train into a new --workdir, or continue "
                    "from its weights with --init-from.")
        return ("Start afresh with restart=True (the old run is moved to previous-run/ until "
                "the new one's first checkpoint), use a new workdir, or continue from its "
                "weights with init_from=.")

    def init_from(self, change: str) -> str:
        if self.cli:
            return (f"nodekit train CONFIG --set {change} --init-from {self.workdir} "
                    "--workdir NEW_WORKDIR")
        return (f"nodekit.train(config_with_{change.split('=')[0].replace('.', '_')}, "
                f"new_workdir, init_from={str(self.workdir)!r})")

    def restart_with(self, change: str) -> str:
        if self.cli:
            return f"nodekit train CONFIG --set {change} --restart"
        return (f"nodekit.train(config_with_{change.split('=')[0].replace('.', '_')}, "
                f"{str(self.workdir)!r}, restart=True)")

    def resume(self) -> str:
        if self.cli:
            return "rerun the same command to resume"
        return "call nodekit.train again with the same config and workdir to resume"


def _steps_error(message: str) -> CheckpointError:
    e = CheckpointError(message)
    e.reason = "steps"  # (not a corrupt file: no fallback to another checkpoint)
    return e


class _Acc:
    """Running sums over every training step of the run (carried in checkpoints), so a
    resumed run's summary equals the uninterrupted run's bit for bit."""

    KEYS = ("nfe_forward", "nfe_backward", "failures")

    def __init__(self, data: dict | None = None):
        data = data if isinstance(data, dict) else {}
        self.sums = {k: [float(v[0]), int(v[1])] for k, v in data.get("sums", {}).items()
                     if k in self.KEYS and isinstance(v, list) and len(v) == 2}
        self.last = data.get("last") if isinstance(data.get("last"), dict) else {}

    def add(self, row: dict) -> None:
        for k in self.KEYS:
            v = row.get(k)
            if v is not None:
                s = self.sums.setdefault(k, [0.0, 0])
                s[0] += float(v)
                s[1] += 1
        self.last = {"loss": row.get("loss"), "loss_task": row.get("loss_task")}

    def mean(self, k: str):
        s = self.sums.get(k)
        return s[0] / s[1] if s and s[1] else None

    def total(self, k: str) -> float:
        s = self.sums.get(k)
        return s[0] if s else 0.0

    def to_json(self) -> dict:
        return {"sums": self.sums, "last": {k: json_float(v) for k, v in self.last.items()}}


# ----------------------------------------------------------------- train


def train(config: Config | dict | str | Path, workdir: str | Path, *, restart: bool = False,
          init_from: str | Path | None = None, progress: bool | None = None) -> dict:
    """Train the model a config describes, writing the run's files into `workdir`.

    Rerunning into a workdir that holds a checkpoint resumes it bit for bit (same
    config; `train.steps` may grow when the learning-rate schedule is `constant`).

    **Arguments:**

    - `config`: a `Config`, raw config data (a dict), the path of a YAML file or a
      built-in config's name.
    - `workdir`: folder for `config.yaml`, `metrics.jsonl` (and `metrics.csv`,
      `eval.csv`, `tensorboard/` as `train.metrics` asks), `summary.json`,
      `checkpoints/` and `plots/`. One process at a time (it is locked).
    - `restart`: start afresh even if `workdir` holds a run; the previous run is moved
      to `workdir/previous-run/` and removed at the new run's first checkpoint.
    - `init_from`: the workdir of an earlier run to start from: its parameters (the
      model's shapes must agree) and, when the arrays agree and neither config's
      learning rate follows a schedule over `train.steps`, its optimiser state; the
      step count starts at 0. For continuing with deliberate changes (a smaller
      learning rate after a divergence). Applies to a fresh start only: a `workdir`
      holding its own checkpoint resumes that.
    - `progress`: say what the run is doing on stderr (default
      `config.train.progress`): phase lines and a live bar on a terminal, plain lines
      at most every few seconds otherwise; `False` is silent.

    Precision is scoped to the run: `precision: float64` runs inside
    `jax.enable_x64(True)` and a float32 run inside `jax.enable_x64(False)`; the
    caller's setting is unchanged afterwards, and checkpoints hold the run's dtype.

    **Returns:** the summary (also written to `summary.json`).

    **Raises:** `ConfigError`/`InputError`/`CheckpointError` for bad input (nothing is
    trained; nothing written for config and data errors); `TrainingFault` when training
    stops on a fault (non-finite values, solver failures, out of memory, a full disk;
    the last good checkpoint is kept and the summary records the status); `Stopped`
    after SIGINT/SIGTERM (checkpoint and summary written; call again to resume).

    **Example:**

    ```python
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=3", "train.plots=false"])
    summary = nodekit.train(config, "runs/tiny", restart=True, progress=False)
    print(summary["status"], summary["steps"], summary["final_loss"])   # ok 3 ...
    ```
    """
    return _train(config, workdir, restart=restart, init_from=init_from, progress=progress)


def _train(config, workdir, *, restart: bool = False, init_from=None, progress=None,
           console: str | None = None, cli: bool = False) -> dict:
    """`train`, with the console mode and the wording (`cli`) chosen by the caller."""
    t_start = time.perf_counter()
    with _signals.guard():
        config = _as_config(config)
        if config.sweep is not None:
            how = "nodekit sweep CONFIG" if cli else "nodekit.sweep(config, workdir)"
            raise ConfigError("sweep", f"this config describes a sweep of runs; train it with "
                                       f"{how}, or remove the sweep section to train one run.")
        init_distributed(config)  # before anything computes
        mode = console or _console_mode(config, progress)
        with jax.enable_x64(config.precision == "float64"):
            return _Run(config, Path(workdir), restart=restart, init_from=init_from, cli=cli,
                        console=_Console(mode if jax.process_index() == 0 else "quiet"),
                        t_start=t_start).execute()


class _Run:
    def __init__(self, config: Config, workdir: Path, *, restart: bool, init_from, cli: bool,
                 console: _Console, t_start: float):
        self.config = config
        self.wd = Workdir(workdir)
        self.restart = restart
        self.init_from = None if init_from is None else Path(init_from)
        self.words = _Words(cli, self.wd.path)
        self.console = console
        self.t_start = t_start
        #: what `time_to_first_step_s` counts from: the process start for the `nodekit`
        #: command, the call for `nodekit.train` (a notebook may call it many times)
        self.t_origin = _signals.PROCESS_START if cli else t_start
        self.writer = True
        self.opened = False
        self.log: MetricsLog | None = None
        self.start = self.done = 0
        self.best = math.inf
        self.acc = _Acc()
        self.last_eval: dict = {}
        self.step_times: list[float] = []
        self.t_first = self.first_step_s = None
        self.compile_s = None
        self.compiled = None
        self.state = None
        self.init_info: dict | None = None
        self.notes: list[str] = []
        self.saved_any = False
        self.stop_name: str | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.console.say(text)

    # ------------------------------------------------------------ phase 1: accept input

    def accept(self):
        cfg = self.config
        self.accept_task()
        self.mesh, self.batch_sharding, self.replicated = setup_devices(cfg)
        self.single = self.mesh.devices.size == 1
        shapes = state_shapes(self.task, self.optim, self.seed, split=True)
        check_memory(cfg, shapes, self.mesh.devices.flat[0])
        if self.init_from is not None:
            self._read_init_from(shapes)

    def accept_task(self):
        """The part of phase 1 a sweep member shares: the task (its data loaded and
        checked), the optimiser, the seed and the integrator; writes nothing."""
        cfg = self.config
        self.t_accept = time.perf_counter()
        self.console.hold()
        self.console.later(f"loading data and building the {cfg.task} task")
        take_notes()  # (notes left by earlier work in this process are not this run's)
        self.task = make_task(cfg)  # loads and checks the data: raises on bad input
        for text in take_notes():  # e.g. a data cache entry that did not verify
            self.note(text)
        _signals.raise_if_stopped("before training started; nothing was written")
        self.writer = jax.process_index() == 0
        self.optim = make_optimizer(cfg.optimizer, cfg.train.steps)
        self.seed = np.uint32(cfg.seed)
        # which integrator the training step's solves use: known once it is traced
        # (or loaded from the step cache, which stores it), see compile()
        self.integrator = ("unknown", "the training step was not built")

    def _read_init_from(self, shapes) -> None:
        src = Workdir(self.init_from)
        if src.path.resolve() == self.wd.path.resolve():
            raise InputError(f"init_from: {str(src.path)!r} is this run's own workdir; to "
                             "go on with this run, resume it (no init_from); to start from it "
                             "with changes, give a new workdir.")
        header = payload = None
        problems = []
        for path in (src.latest, src.previous):
            if not path.exists():
                continue
            try:
                header, payload = read_header(path)
                break
            except CheckpointError as e:
                problems.append(str(e))
        if header is None:
            why = " ".join(problems) or f"{str(src.path)!r} holds no checkpoint " \
                                        "(checkpoints/latest.nkc)."
            raise InputError(f"init_from: cannot start from {str(src.path)!r}: {why}")
        model_like, opt_like, _ = shapes
        model_specs, opt_specs = _leaf_specs(model_like), _leaf_specs(opt_like)
        found = header["leaves"]
        k = len(model_specs)
        if found[:k] != model_specs:
            i = next((i for i, (a, b) in enumerate(zip(found, model_specs)) if a != b), None)
            detail = (f"{len(found)} arrays saved" if i is None else
                      f"array {i}: saved {found[i][1]}{tuple(found[i][0])}, this config's model "
                      f"has {model_specs[i][1]}{tuple(model_specs[i][0])}")
            raise InputError(
                f"init_from: the model in {str(path)!r} differs from this config's ({detail}). "
                "Starting from a run needs the same model shapes (model.*, data state size, "
                "precision); the solver, optimiser, learning rate, regularisation and train "
                "settings may change.")
        try:
            arrays = payload_arrays(payload)
        except Exception as e:  # noqa: BLE001 - a crafted payload
            raise InputError(f"init_from: {str(path)!r} is corrupt: its arrays cannot be read "
                             f"({type(e).__name__}).") from None
        old_cfg = header["meta"].get("config")
        old_schedule = (isinstance(old_cfg, dict) and old_cfg.get("optimizer", {}).get(
            "schedule", "constant") not in ("constant", None)
            and old_cfg.get("optimizer", {}).get("name") != "lbfgs")
        reuse_opt = found[k:] == opt_specs and not old_schedule and not _schedule_spans_steps(
            self.config)
        if found[k:] != opt_specs:
            why = "the optimiser's arrays differ (another optimiser or clip/decay setting)"
        elif old_schedule or _schedule_spans_steps(self.config):
            why = "a learning-rate schedule over train.steps restarts with the new run"
        else:
            why = ""
        self.init_info = {"workdir": str(src.path), "checkpoint": str(path),
                          "step": header["step"], "model": arrays[:k],
                          "opt_state": arrays[k:] if reuse_opt else None,
                          "opt_note": why}

    # ------------------------------------------------------------ phase 2: open the run

    def open(self):
        cfg = self.config
        self.open_workdir()
        model, opt_state, self.train_key = build_state(self.task, self.optim, self.seed, split=True)
        self.console.say(f"data loaded, {cfg.task} task built "
                         f"({time.perf_counter() - self.t_accept:.1f}s)")
        model, opt_state = self.start_state(model, opt_state)
        self.console.release()  # the input is accepted: say what happened so far
        if not self.single:
            model, opt_state = eqx.filter_shard((model, opt_state), self.replicated)
        self.model0, self.opt_state0 = model, opt_state
        _signals.raise_if_stopped(f"at step {self.start} before training resumed",
                                  step=self.start)
        self.open_logs()

    def open_workdir(self):
        """Create and lock the workdir (and move a previous run aside for `restart`)."""
        wd = self.wd
        if self.writer:
            wd.open()
            self.opened = True
            for n in wd.notes:
                self.note(n)
            if self.restart:
                moved = wd.move_aside()
                if moved:
                    self.note(moved)

    def start_state(self, model, opt_state):
        """The state training starts from: this run's own checkpoint (a resume), the
        `init_from` run's arrays, or the fresh `(model, opt_state)` given."""
        wd = self.wd
        if not self.restart and wd.has_checkpoint():
            (model, opt_state), header = self._resume(model, opt_state)
            self.start = self.done = header["step"]
            self.best = best_value(header)
            self.acc = _Acc(header["meta"].get("acc"))
            self.last_eval = header["meta"].get("last_eval") or {}
            if self.init_from is not None:
                self.note(f"resuming this run's own checkpoint (init_from "
                          f"{str(self.init_from)!r} applies to a fresh start only)")
            self.init_info = header["meta"].get("init_from") or None
        elif self.init_from is not None:
            model, opt_state = self._apply_init_from(model, opt_state)
        else:
            self.console.say(f"starting a new run in {wd.path}")
        return model, opt_state

    def open_logs(self):
        """Open the metric logs (dropping rows past the checkpoint) and write
        `config.yaml` (and `normalisation.json`)."""
        wd, cfg = self.wd, self.config
        if self.writer:
            self.log = MetricsLog(wd, cfg.train.metrics, self.start)
            if self.log.dropped:
                self.note(f"dropped {self.log.dropped} metric row(s) past the checkpoint "
                          f"(step {self.start}); they are recomputed")
            atomic_write_bytes(wd.config, (
                f"# resolved config written by nodekit; rerun with: nodekit train {wd.config}\n"
                + dump_yaml(cfg)).encode())
            if self.task.normalisation is not None:
                # the training part's statistics, to read predictions in the data's units
                write_json(wd.path / "normalisation.json", self.task.normalisation.to_dict())

    def _resume(self, model, opt_state):
        wd, cfg = self.wd, self.config
        problems = []
        for path in (wd.latest, wd.previous):
            if not path.exists():
                if path == wd.latest:
                    problems.append(f"checkpoint {str(path)!r} is missing (a write was "
                                    "interrupted)")
                continue
            try:
                header, _ = read_header(path)
                if header.get("config_hash") == cfg.hash():
                    self._check_steps(header, path)  # (before the arrays: says more)
                tree, header = load_checkpoint(path, (model, opt_state), config_hash=cfg.hash(),
                                               config=cfg.to_dict())
            except CheckpointError as e:
                if getattr(e, "reason", "corrupt") != "corrupt":
                    raise CheckpointError(f"{e} {self.words.fresh()}") from None
                problems.append(str(e).rstrip("."))
                continue
            if problems:
                if wd.latest.exists():  # keep the unusable file for inspection, out of the way
                    kept = wd.ckpt_dir / f"latest.unusable-{int(time.time())}.nkc"
                    wd.latest.rename(kept)
                    problems[-1] += f"; kept as {kept.name}"
                self.note(f"warning: {'; '.join(problems)}. Resuming from {path.name} (step "
                          f"{header['step']}) instead.")
            else:
                self.console.say(f"resuming from {path} (step {header['step']})")
            return tree, header
        raise CheckpointError(f"{'; '.join(problems)}. There is no usable checkpoint to resume "
                              f"from (its metrics and summary are kept). {self.words.fresh()}")

    def _check_steps(self, header: dict, path: Path) -> None:
        cfg = self.config
        step, total = header["step"], cfg.train.steps
        old_total = header["meta"].get("train_steps")
        if step > total:
            raise _steps_error(
                f"checkpoint {str(path)!r} is at step {step}, past train.steps={total}. Set "
                f"train.steps to {old_total or step} or more to use this run. "
                f"{self.words.fresh()}")
        if isinstance(old_total, int) and old_total != total:
            if _schedule_spans_steps(cfg):
                raise _steps_error(
                    f"train.steps changed from {old_total} to {total}, but the learning-rate "
                    f"schedule {cfg.optimizer.schedule!r} spans train.steps: the {step} steps "
                    f"in {str(path)!r} followed the schedule over {old_total} steps. To resume "
                    f"this run, keep train.steps={old_total}. To train longer, start a new "
                    f"run from this one (its schedule then spans the new train.steps): "
                    f"{self.words.init_from(f'train.steps={total}')}.")
            self.note(f"train.steps changed from {old_total} to {total} (constant learning "
                      f"rate): continuing this run from step {step} to {total}")

    def _apply_init_from(self, model, opt_state):
        info = self.init_info
        leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_array_like))
        if len(leaves) != len(info["model"]):  # pragma: no cover - checked in phase 1
            raise InputError("init_from: the model's arrays do not match.")
        new = [jax.numpy.asarray(a, dtype=l.dtype) for a, l in zip(info["model"], leaves)]
        if not all(np.isfinite(np.asarray(a)).all() for a in info["model"]
                   if np.issubdtype(np.asarray(a).dtype, np.inexact)):
            raise InputError(f"init_from: {info['checkpoint']!r} holds non-finite parameters.")
        model = eqx.combine(jax.tree_util.tree_unflatten(treedef, new),
                            eqx.filter(model, eqx.is_array_like, inverse=True))
        what = "parameters"
        if info["opt_state"] is not None:
            ol, otd = jax.tree_util.tree_flatten(eqx.filter(opt_state, eqx.is_array_like))
            on = [jax.numpy.asarray(a, dtype=l.dtype) for a, l in zip(info["opt_state"], ol)]
            opt_state = eqx.combine(jax.tree_util.tree_unflatten(otd, on),
                                    eqx.filter(opt_state, eqx.is_array_like, inverse=True))
            what += " and optimiser state"
        else:
            what += f" (optimiser state fresh: {info['opt_note']})"
        self.note(f"starting from the {what} of {info['workdir']} (step {info['step']})")
        self.init_info = {"workdir": info["workdir"], "step": info["step"],
                          "optimizer_state": info["opt_state"] is not None}
        return model, opt_state

    def compile(self):
        cfg = self.config
        self.t_step_start = time.perf_counter()  # the first step's clock
        example_batch = self._batch(self.start)
        cache_dir = None
        if cfg.train.compile_cache and self.single:
            cache_dir, note = usable_cache_dir("xla")
            if note:
                self.note(note)
        self.compiled = CompiledStep(
            step_body(self.task.loss, self.optim), self.model0, self.opt_state0, example_batch,
            (self.train_key, np.int32(self.start)), cache_dir=cache_dir,
            key_material=self._step_key(), fold_step=True, log=self.console.say)
        self.integrator = self.compiled.integrator
        self.compile_s = time.perf_counter() - self.t_step_start
        self.console.say(f"training step ready ({self.compile_s:.1f}s)")
        self.eval_fn = eqx.filter_jit(self.task.evaluate)
        self.state = self.compiled.flatten(self.model0, self.opt_state0)
        del self.model0, self.opt_state0
        _signals.raise_if_stopped(f"at step {self.start} before training resumed",
                                  step=self.start)

    def _step_key(self) -> dict:
        """What the compiled step depends on: everything `Config.hash` covers (data,
        model, solver, regularisers, optimiser, batch size, precision, seed), and
        `train.steps` when the learning-rate schedule spans it; not the cadences, the
        step count otherwise, or the logging (so changing those reuses the step)."""
        cfg = self.config
        return {"config": hashed_config(cfg.to_dict()),
                "steps": cfg.train.steps if _schedule_spans_steps(cfg) else None,
                # the user's data file and Python modules: an edited field is traced anew
                "files": self.task.fingerprint()}

    def _batch(self, step: int):
        batch = self.task.batch(step)
        if self.single:
            return batch  # NumPy batches go straight into the compiled call
        return put_batch(batch, self.batch_sharding)

    # ------------------------------------------------------------ phase 3: train

    def save(self, path: Path, leaves, step: int) -> None:
        cfg = self.config
        meta = {"best": json_float(self.best), "train_steps": cfg.train.steps,
                "config": cfg.to_dict(), "acc": self.acc.to_json(),
                "last_eval": {k: json_float(v) for k, v in self.last_eval.items()},
                "integrator": list(self.integrator)}
        if self.init_info is not None:
            meta["init_from"] = {k: self.init_info[k] for k in ("workdir", "step")
                                 if k in self.init_info}
        if not self.writer:
            return
        tree = self.compiled.unflatten(leaves)
        if self.log is not None:
            self.log.sync()  # the rows this checkpoint covers are on disk first
        save_checkpoint(path, tree, step=step, config_hash=cfg.hash(), meta=meta,
                        backup=self.wd.previous if path == self.wd.latest else None)
        if path == self.wd.latest and not self.saved_any:
            self.saved_any = True
            if self.wd.drop_aside():
                self.note(f"removed {self.wd.aside} (the new run has its own checkpoint)")

    def loop(self):
        cfg = self.config.train
        total, start = cfg.steps, self.start
        self.console.start_training(start, total)
        if start < total:
            self.console.say(f"training steps {start} to {total}" if start else
                             f"training {total} steps")
        state = self.state
        pending = None  # (step, metrics, state_before, state_after)
        last_done = self.t_step_start
        for step in range(start, total + 1):
            if step < total:
                batch = self._batch(step)
                # the step's key is fold_in(train_key, step), drawn inside the step
                new_state, m = self.compiled(state, batch, (self.train_key, np.int32(step)))
            if pending is not None:
                p_step, p_metrics, p_before, p_after = pending
                host = _to_host(p_metrics)
                now = time.perf_counter()
                host["step_time_s"] = now - last_done
                last_done = now
                done, logged = self.record_step(p_step, host, p_before, p_after, now)
                if self.eval_due(done):
                    self._eval(self.compiled.unflatten(p_after)[0], done, write=True)
                    self.keep_best(p_after, done)
                stop = self._stop_requested(done, logged)
                if self.checkpoint_due(done) or stop:
                    self.save(self.wd.latest, p_after, done)
                if stop:
                    self.stop_name = stop
                    state = p_after
                    break
            if step < total:
                pending = (step, m, state, new_state)
                state = new_state
        self.console.close()

    # Each finished step's host work, shared with the members of a sweep (`_ensemble`),
    # whose state arrays are the member's slice of the ensemble's.

    def record_step(self, step: int, host: dict, before, after, now: float) -> tuple[int, bool]:
        """Account for finished step `step` (its metrics `host`, the state `before` and
        `after` it): timing, guards (which raise on a fault, after saving `before`),
        the metrics row and the console. Returns `(steps done, whether it was logged)`."""
        cfg = self.config.train
        if self.t_first is None:
            self.t_first = now - self.t_origin
            self.first_step_s = now - self.t_step_start
        else:
            self.step_times.append(host["step_time_s"])
        self.state = before
        self._check(step, host, before)
        self.state = after
        done = self.done = step + 1
        row = self._row(step, host, self.integrator[0])
        self.acc.add(row)
        logged = step % cfg.log_every == 0 or step == cfg.steps - 1
        if logged and self.log is not None:
            self.log.train_row(row)
        self.console.step(done, row["loss"], row.get("nfe_forward"), logged)
        return done, logged

    def eval_due(self, done: int) -> bool:
        cfg = self.config.train
        return done % cfg.eval_every == 0 or done == cfg.steps

    def checkpoint_due(self, done: int) -> bool:
        cfg = self.config.train
        return done % cfg.checkpoint_every == 0 or done == cfg.steps

    def keep_best(self, leaves, done: int) -> None:
        """Save `leaves` as `best.nkc` when the last evaluation is the best so far."""
        if self.last_eval.get("eval_loss", math.inf) < self.best:
            self.best = self.last_eval["eval_loss"]
            self.save(self.wd.best, leaves, done)

    def _stop_requested(self, done: int, logged: bool) -> str | None:
        """The stop signal to act on after `done` steps. Several processes (multi-host)
        must stop at the same step, or one would wait for the others in the next step's
        collectives: SIGTERM is JAX's preemption notice there (its runtime catches it
        and agrees on a step: `reached_preemption_sync_point`), and a SIGINT is shared
        at each logged step (one tiny all-gather)."""
        name = _signals.requested()
        if jax.process_count() == 1:
            return name
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(done):
            return "SIGTERM"
        if not (logged or done == self.config.train.steps):
            return None
        flags = multihost_utils.process_allgather(np.int32(name is not None))
        return (name or "SIGINT") if np.any(flags) else None

    def _row(self, step: int, host: dict, integrator: str) -> dict:
        row = {"step": step, "loss": host["loss"]}
        for k, v in host.items():
            if k not in row and k != "finite":
                row[k] = v
        row.setdefault("nfe_forward", None)
        adj = self.config.solver.adjoint
        # Backprop through the solver makes one vector-Jacobian product per forward
        # evaluation; the continuous adjoint's backward count is not observable here.
        row["nfe_backward"] = row["nfe_forward"] if adj in ("recursive", "direct") else None
        row["integrator"] = integrator
        return row

    def _check(self, step: int, host: dict, state_before) -> None:
        cfg = self.config.train
        bs = cfg.batch_size
        fails = host.get("failures", 0.0)
        opt = self.config.optimizer
        smaller = f"optimizer.learning_rate={opt.learning_rate / 10:g}"
        if step <= cfg.checkpoint_every:  # early: the first updates are what went wrong
            lr_hint = (f"It failed within the first {cfg.checkpoint_every} steps, so start "
                       f"afresh with the change, e.g. {self.words.restart_with(smaller)}.")
        else:
            lr_hint = (f"To continue from the last good checkpoint with a change, start a new "
                       f"run from it: {self.words.init_from(smaller)}.")
        if fails > cfg.max_solver_failures * bs:
            self.save(self.wd.latest, state_before, step)
            s = self.config.solver
            msg = solver_failure_message(result_name(int(host.get("solver_result", 1))),
                                         solver=s.name, rtol=s.rtol, atol=s.atol,
                                         max_steps=s.max_steps, language="config")
            raise SolverError(
                f"step {step}: {int(fails)} of {bs} solves in the batch failed "
                f"(train.max_solver_failures={cfg.max_solver_failures:g}). Likely cause: {msg} "
                f"If the loss grew over the steps before (metrics.jsonl), the learning rate "
                f"(optimizer.learning_rate={opt.learning_rate:g}) is the likelier cause. "
                f"The last good checkpoint (step {step}) is in {self.wd.latest}. {lr_hint}",
                step=step, status="solver_failure",
            )
        if not host["finite"]:
            bad = [k for k in ("loss_task",) + tuple(k for k in host if k.startswith("reg_"))
                   if k in host and not math.isfinite(host[k])]
            if not math.isfinite(host.get("grad_norm", 0.0)) and math.isfinite(host["loss"]):
                bad.append("gradients")
            what = ", ".join(bad) or "loss"
            if cfg.on_nonfinite == "skip_step":
                host["skipped"] = True
                return
            self.save(self.wd.latest, state_before, step)
            raise TrainingFault(
                f"step {step}: non-finite value in {what}; the update was not applied. "
                f"The last good checkpoint (step {step}) is in {self.wd.latest}. The usual "
                f"cause is a learning rate too large for the problem (optimizer.learning_rate="
                f"{opt.learning_rate:g}): try a smaller one (e.g. {opt.learning_rate / 10:g}), "
                "optimizer.clip_norm (e.g. 1.0), tighter solver tolerances, a smaller "
                f"regulariser weight, or train.on_nonfinite=skip_step. {lr_hint}",
                step=step, status="nonfinite",
            )

    def _eval(self, model, step: int, write: bool) -> None:
        self.record_eval(step, _to_host(self.eval_fn(_local(model))), write)

    def record_eval(self, step: int, ev: dict, write: bool) -> None:
        """Keep evaluation metrics `ev` (after `step` steps); with `write`, log them."""
        self.last_eval = ev
        self.console.eval(step, ev)
        if write and self.log is not None:
            self.log.eval_row({"step": step - 1, "eval": True, **ev})

    # ------------------------------------------------------------ the end

    def summary(self, status: str, fault: BaseException | None, plots: bool) -> dict:
        model = None
        if self.compiled is not None and self.state is not None:
            model = self.compiled.unflatten(self.state)[0]
        last = self.acc.last
        s = {
            "status": status,
            "steps": self.done,
            "resumed_from_step": self.start,
            "final_loss": last.get("loss"),
            "final_loss_task": last.get("loss_task"),
            "eval_loss": self.last_eval.get("eval_loss"),
            "best_eval_loss": json_float(self.best),
            "eval_nfe": self.last_eval.get("eval_nfe"),
            "wall_time_s": time.perf_counter() - self.t_start,
            "time_to_first_step_s": self.t_first,
            "first_step_s": self.first_step_s,
            "compile_s": self.compile_s,
            "step_time_median_s": float(np.median(self.step_times)) if self.step_times else None,
            "nfe_forward_mean": self.acc.mean("nfe_forward"),
            "nfe_backward_mean": self.acc.mean("nfe_backward"),
            "solver_failures": self.acc.total("failures"),
            "integrator": self.integrator[0],
            "integrator_reason": self.integrator[1],
            "precision": self.config.precision,
            "config_hash": self.config.hash(),
            "step_source": getattr(self.compiled, "source", None),
        }
        if self.init_info is not None:
            s["init_from"] = {k: v for k, v in self.init_info.items()
                              if k in ("workdir", "step", "optimizer_state")}
        if self.compiled is not None and self.compiled.cache_error:
            s["step_cache_error"] = self.compiled.cache_error
        if self.compiled is not None and self.compiled.cache_note:
            s["step_cache_note"] = self.compiled.cache_note
        if self.notes:
            s["notes"] = self.notes
        if fault is not None:
            s["message"] = str(fault)
        if status == "ok" and model is not None:
            s.update(self._finalise(model))
        if plots and self.config.train.plots and model is not None and self.writer:
            s.update(self._plots(model, status))
        if self.writer and self.opened:
            write_json(self.wd.summary, s)
        return s

    def _finalise(self, model) -> dict:
        """The task's results computed once after training (e.g. a UDE's sparse
        regression); a failure there is recorded, never loses the run."""
        try:
            return dict(self.task.finalise(_local(model)))
        except Exception as e:  # noqa: BLE001 - the trained model is already saved
            return {"finalise_error": f"{type(e).__name__}: {e}"}

    def _plots(self, model, status: str) -> dict:
        self.console.say("writing plots")
        try:
            from .plots import plot_loss

            plots = [plot_loss(self.wd.metrics, self.wd.plot_dir / "loss.png",
                               describe=self.task.describe())]
            if status == "ok" or self.done > self.start:
                plots += self.task.plot(_local(model), self.wd.plot_dir)
            return {"plots": [str(p) for p in plots if p]}
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - a plot must never lose a run
            return {"plot_error": f"{type(e).__name__}: {e}"}

    def execute(self) -> dict:
        try:
            self.accept()  # bad input raises here: nothing written
        except BaseException:
            self.console.drop()
            raise
        fault: BaseException | None = None
        stopped: Stopped | None = None
        try:
            try:
                try:
                    self.open()
                except BaseException:
                    self.console.drop()
                    raise
                self.compile()
                self.loop()
            except TrainingFault as e:
                fault = e
            except Stopped as e:
                stopped = e
            except OSError as e:
                if e.errno not in _WRITE_ERRNOS or not self.opened:
                    raise
                fault = self._write_fault(e)
            except jax.errors.JaxRuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                fault = out_of_memory_fault(e, self.config, self.done)
            finally:
                self.console.close()
                if self.log is not None:
                    self.log.close()
            if stopped is None and fault is None and self.stop_name is not None:
                stopped = Stopped("stopped", signal_name=self.stop_name, step=self.done)
            if stopped is not None:
                return self._stop(stopped)
            if fault is not None:
                self._fault_summary(fault)
                raise fault
            if self.start >= self.config.train.steps and self.compiled is not None:
                self.console.say("evaluating the finished run")
                self._eval(self.compiled.unflatten(self.state)[0], self.done, write=False)
            try:
                summary = self.summary("ok", None, plots=True)
            except OSError as e:
                if e.errno not in _WRITE_ERRNOS:
                    raise
                raise self._write_fault(e) from None
            return summary
        finally:
            if self.opened:
                self.wd.close()

    def _stop(self, stopped: Stopped):
        name = stopped.signal
        summary = None
        if self.opened:
            try:
                summary = self.summary(f"stopped ({name})", None, plots=False)
            except OSError:
                pass
        if not self.opened and self.done == 0:
            message = f"{stopped}"
        else:
            message = f"stopped at step {self.done} ({name}); {self.words.resume()}"
        raise Stopped(message, signal_name=name, step=self.done if self.opened else None,
                      summary=summary)

    def _fault_summary(self, fault: BaseException) -> dict | None:
        status = getattr(fault, "status", "fault")
        try:
            return self.summary(status, fault, plots=status in ("nonfinite", "solver_failure"))
        except OSError:
            return None  # a full disk: the previous summary.json stays as it was

    def _write_fault(self, e: OSError) -> TrainingFault:
        what = e.filename or "a run file"
        kind = "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "write_error"
        fix = ("free some space, or move the workdir to a disk with room"
               if kind == "disk_full" else "make it writable, or choose another workdir")
        ckpt = (f"the last good checkpoint (step {self._last_checkpoint_step()}) is kept in "
                f"{self.wd.ckpt_dir}" if self.wd.has_checkpoint() else "no checkpoint was written yet")
        return TrainingFault(
            f"could not write {what} ({e.strerror}) at step {self.done}; {ckpt}. To go on, "
            f"{fix}, then {self.words.resume()}.", step=self.done, status=kind)

    def _last_checkpoint_step(self):
        for path in (self.wd.latest, self.wd.previous):
            try:
                return read_header(path)[0]["step"]
            except CheckpointError:
                continue
        return "?"
