"""The training loop: one compiled step, metrics, guards, checkpoints, eval, summary."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ._build import build_state, enable_compile_cache, setup_devices
from ._checkpoint import load_checkpoint, save_checkpoint
from ._config import Config, dump_yaml, load_config, validate
from ._errors import SolverError, TrainingFault, solver_failure_message
from ._odeint import result_name
from ._optim import make_optimizer
from ._rundir import Workdir, atomic_write_bytes, json_float, truncate_metrics
from ._step import CompiledStep, step_body
from .tasks import AbstractTask, make_task

_PROCESS_START = time.perf_counter()


def _to_host(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == bool else float(v)
    return out


class _Progress:
    """A live progress bar with loss and NFE (rich), or nothing."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  nfe {task.fields[nfe]}"),
                TimeRemainingColumn(), transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", nfe="-")
            self.bar.start()

    def update(self, step: int, loss: float, nfe: float):
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4g}", nfe=f"{nfe:.0f}")

    def close(self):
        if self.bar is not None:
            self.bar.stop()


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and stops cleanly."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: Config | dict | str | Path, workdir: str | Path, *, restart: bool = False,
          progress: bool | None = None) -> dict:
    """Train the model a config describes, writing the run's files into `workdir`.

    Rerunning into a workdir that holds a checkpoint resumes it (same config required);
    `restart=True` starts afresh and overwrites it.

    **Arguments:**

    - `config`: a `Config`, raw config data (a dict), or the path of a YAML file.
    - `workdir`: folder for `config.yaml`, `metrics.jsonl`, `summary.json`,
      `checkpoints/` and `plots/`.
    - `restart`: ignore any checkpoint in `workdir`.
    - `progress`: show a live progress bar (default: `config.train.progress`).

    **Returns:** the summary (also written to `summary.json`).

    **Raises:** `ConfigError`/`InputError`/`CheckpointError` for bad input (nothing is
    trained), `TrainingFault` when training stops on a fault (the last good checkpoint
    is kept; the summary records the status).

    **Example:**

    ```python
    summary = nodekit.train("configs/spiral.yaml", "runs/spiral")
    print(summary["final_loss"], summary["time_to_first_step_s"])
    ```
    """
    t_start = time.perf_counter()
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = validate(config)
    wd = Workdir(Path(workdir))
    wd.prepare()
    if config.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    if config.train.compile_cache:
        enable_compile_cache()

    task = make_task(config)
    optim = make_optimizer(config.optimizer, config.train.steps)
    # the seed's split, the model and the optimiser state: one compiled call
    model, opt_state, train_key = build_state(task, optim, np.uint32(config.seed), split=True)

    start_step, best = 0, math.inf
    resumed = False
    if wd.latest.exists() and not restart:
        (model, opt_state), header = load_checkpoint(wd.latest, (model, opt_state),
                                                     config_hash=config.hash())
        start_step = header["step"]
        best = header["meta"].get("best", math.inf) or math.inf
        resumed = True
    elif restart:
        for f in (wd.latest, wd.best, wd.metrics, wd.summary):
            f.unlink(missing_ok=True)

    wd.config.write_text(
        f"# resolved config written by nodekit; rerun with: nodekit train {wd.config}\n"
        + dump_yaml(config)
    )
    history = truncate_metrics(wd.metrics, start_step) if resumed else []

    mesh, batch_sharding, replicated = setup_devices(config)
    single = mesh.devices.size == 1
    if not single:  # (one device: the arrays are already there)
        model, opt_state = eqx.filter_shard((model, opt_state), replicated)
    t_step_start = time.perf_counter()  # the first step's clock: trace/load + compile + run
    example_batch = jax.device_put(task.batch(start_step), batch_sharding)
    cache_dir = enable_compile_cache() if config.train.compile_cache and single else None
    compiled = CompiledStep(step_body(task.loss, optim), model, opt_state, example_batch,
                            (train_key, np.int32(start_step)), cache_dir=cache_dir,
                            key_material=config.to_dict(), fold_step=True)
    runner = _Runner(config, task, compiled, wd, train_key, best)
    runner.history = history
    # one device: NumPy batches go straight into the compiled call (no separate transfer)
    runner.batch_sharding = None if single else batch_sharding
    runner.t_step_start = t_step_start
    runner.compile_s = time.perf_counter() - t_step_start
    show = config.train.progress if progress is None else progress
    return runner.run(model, opt_state, start_step, t_start, show, resumed)


class _Runner:
    def __init__(self, config: Config, task: AbstractTask, compiled: CompiledStep, wd: Workdir,
                 train_key, best):
        self.config, self.task, self.wd = config, task, wd
        self.train_key = train_key
        self.best = best
        self.compiled = compiled
        self.eval_fn = eqx.filter_jit(task.evaluate)
        self.history: list[dict] = []
        self.last_eval: dict = {}

    # -- checkpoints
    def save(self, path: Path, leaves, step: int):
        save_checkpoint(path, self.compiled.unflatten(leaves), step=step, config_hash=self.config.hash(),
                        meta={"best": json_float(self.best)})

    def run(self, model, opt_state, start: int, t_start: float, show: bool, resumed: bool) -> dict:
        cfg = self.config.train
        total = cfg.steps
        bar = _Progress(show, total, start)
        metrics_file = open(self.wd.metrics, "a")
        state = self.compiled.flatten(model, opt_state)
        status, fault = "ok", None
        t_first = first_step_s = None
        pending = None  # (step, metrics, state_before, state_after, t_dispatch)
        last_done = self.t_step_start
        try:
            with _Stop() as stop:
                for step in range(start, total + 1):
                    if step < total:
                        batch = self.task.batch(step)
                        if self.batch_sharding is not None:
                            batch = jax.device_put(batch, self.batch_sharding)
                        # the step's key is fold_in(train_key, step), drawn inside the step
                        new_state, m = self.compiled(state, batch, (self.train_key, np.int32(step)))
                    if pending is not None:
                        p_step, p_metrics, p_before, p_after = pending
                        host = _to_host(p_metrics)
                        now = time.perf_counter()
                        host["step_time_s"] = now - last_done
                        last_done = now
                        if t_first is None:
                            t_first = now - _PROCESS_START
                            first_step_s = now - self.t_step_start
                        self._check(p_step, host, p_before)
                        done = p_step + 1
                        host["step"] = p_step
                        self._log(metrics_file, host, p_step)
                        bar.update(done, host["loss"], host.get("nfe_forward", float("nan")))
                        if done % cfg.eval_every == 0 or done == total:
                            self._eval(self.compiled.unflatten(p_after)[0], done, metrics_file)
                            if self.last_eval.get("eval_loss", math.inf) < self.best:
                                self.best = self.last_eval["eval_loss"]
                                self.save(self.wd.best, p_after, done)
                        if done % cfg.checkpoint_every == 0 or done == total:
                            self.save(self.wd.latest, p_after, done)
                        if stop.signal is not None:
                            self.save(self.wd.latest, p_after, done)
                            status = f"stopped ({stop.signal})"
                            state = p_after
                            break
                    if step < total:
                        pending = (step, m, state, new_state)
                        state = new_state
        except TrainingFault as e:
            status, fault = e.status, e
        finally:
            bar.close()
            metrics_file.close()
        final_model = self.compiled.unflatten(state)[0]
        if start >= total and fault is None:
            self._eval(final_model, total, None)
        summary = self._summary(status, final_model, t_start, t_first, first_step_s, start, fault)
        if fault is not None:
            raise fault
        return summary

    def _check(self, step: int, host: dict, state_before):
        cfg = self.config.train
        bs = cfg.batch_size
        fails = host.get("failures", 0.0)
        if fails > cfg.max_solver_failures * bs:
            self.save(self.wd.latest, state_before, step)
            msg = solver_failure_message(
                result_name(int(host.get("solver_result", 1))), solver=self.config.solver.name,
                rtol=self.config.solver.rtol, atol=self.config.solver.atol,
                max_steps=self.config.solver.max_steps,
            )
            raise SolverError(
                f"step {step}: {int(fails)} of {bs} solves in the batch failed "
                f"(train.max_solver_failures={cfg.max_solver_failures}). Likely cause: {msg} "
                f"The last good checkpoint (step {step}) is in {self.wd.latest}.",
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
                f"The last good checkpoint (step {step}) is in {self.wd.latest}. Try a smaller "
                "optimizer.learning_rate, optimizer.clip_norm (e.g. 1.0), tighter solver "
                "tolerances, a smaller regulariser weight, or train.on_nonfinite=skip_step.",
                step=step, status="nonfinite",
            )

    def _log(self, f, host: dict, step: int):
        cfg = self.config.train
        row = {"step": step, "loss": host["loss"]}
        for k, v in host.items():
            if k not in row and k != "finite":
                row[k] = v
        row.setdefault("nfe_forward", None)
        adj = self.config.solver.adjoint
        # Backprop through the solver makes one vector-Jacobian product per forward
        # evaluation; the continuous adjoint's backward count is not observable here.
        row["nfe_backward"] = row["nfe_forward"] if adj in ("recursive", "direct") else None
        self.history.append(row)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            f.write(json.dumps({k: json_float(v) for k, v in row.items()}) + "\n")
            f.flush()

    def _eval(self, model, step: int, f):
        ev = _to_host(self.eval_fn(model))
        self.last_eval = ev
        if f is None:
            return
        f.write(json.dumps({"step": step - 1, "eval": True, **{k: json_float(v) for k, v in ev.items()}}) + "\n")

    def _summary(self, status, model, t_start, t_first, first_step_s, start, fault) -> dict:
        h = self.history
        last = h[-1] if h else {}
        def mean(key):
            vals = [r[key] for r in h if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None
        summary = {
            "status": status,
            "steps": max((h[-1]["step"] + 1) if h else 0, start),
            "resumed_from_step": start,
            "final_loss": last.get("loss"),
            "final_loss_task": last.get("loss_task"),
            "eval_loss": self.last_eval.get("eval_loss"),
            "best_eval_loss": json_float(self.best),
            "eval_nfe": self.last_eval.get("eval_nfe"),
            "wall_time_s": time.perf_counter() - t_start,
            "time_to_first_step_s": t_first,
            "first_step_s": first_step_s,
            "compile_s": self.compile_s,
            "step_time_median_s": float(np.median([r["step_time_s"] for r in h[1:]])) if len(h) > 1 else None,
            "nfe_forward_mean": mean("nfe_forward"),
            "nfe_backward_mean": mean("nfe_backward"),
            "solver_failures": float(sum(r.get("failures", 0.0) for r in h)),
            "config_hash": self.config.hash(),
            "step_source": self.compiled.source,
        }
        if self.compiled.cache_error:
            summary["step_cache_error"] = self.compiled.cache_error
        if fault is not None:
            summary["message"] = str(fault)
        try:
            from .plots import plot_loss

            plots = [plot_loss(self.wd.metrics, self.wd.plot_dir / "loss.png")]
            if status == "ok" or h:
                plots += self.task.plot(model, self.wd.plot_dir)
            summary["plots"] = [str(p) for p in plots if p]
        except Exception as e:  # a plot must never lose a run
            summary["plot_error"] = f"{type(e).__name__}: {e}"
        atomic_write_bytes(self.wd.summary, (json.dumps({k: json_float(v) for k, v in summary.items()}, indent=2) + "\n").encode())
        return summary
