"""`nodekit.load`: a finished (or stopped) run back in Python: its resolved config, the
trained model, its metrics and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._config import Config


@dataclass(frozen=True)
class Run:
    """A run loaded by `nodekit.load`.

    **Fields:**

    - `config`: the resolved `Config` the run trained with (from its `config.yaml`).
    - `model`: the trained model (an Equinox module; call it at once, e.g.
      `run.model(ts, y0)` for a trajectory run).
    - `metrics`: the training rows of `metrics.jsonl` (dicts: `step`, `loss`, ...), in
      step order.
    - `evals`: the evaluation rows (`step`, `eval_loss`, ...).
    - `summary`: `summary.json` as a dict (`None` if the run wrote none yet).
    - `task`: the task object (its data: e.g. `run.task.ts`, `run.task.ys`).
    - `step`: the training steps behind `model`; `checkpoint`: the file it came from.

    **Example:**

    ```python
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=3", "train.plots=false"])
    nodekit.train(config, "runs/tiny", restart=True, progress=False)
    run = nodekit.load("runs/tiny", which="latest")
    steps, losses = run.series("loss")   # one point per logged step
    print(run.config.model.field.width, run.step, steps, losses)
    ```
    """

    config: Config
    model: Any
    metrics: list[dict]
    evals: list[dict]
    summary: dict | None
    task: Any
    step: int
    checkpoint: Path
    workdir: Path
    skipped_rows: int = field(default=0, repr=False)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`(steps, values)` of `key` over the training rows (or the eval rows, for a key
        they hold), as float arrays (NaN where a row lacks a number)."""
        rows = self.metrics if any(key in r for r in self.metrics) else self.evals
        steps = np.array([r["step"] for r in rows], dtype=float)
        vals = np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan
                         for r in rows], dtype=float)
        return steps, vals


def load(workdir: str | Path, which: str = "best") -> Run:
    """Load a run that `nodekit.train` (or `nodekit train`) wrote.

    **Arguments:**

    - `workdir`: the run's folder.
    - `which`: `"best"` (`checkpoints/best.nkc`, the lowest evaluation loss) or
      `"latest"` (`checkpoints/latest.nkc`, the last step; falls back to
      `previous.nkc` if `latest` is unusable).

    **Returns:** a `Run` with `config`, `model`, `metrics`, `evals`, `summary`, `task`.
    A `precision: float64` run's model holds float64 arrays: call it inside
    `jax.enable_x64(True)`.

    **Raises:** `InputError` if `workdir` holds no run or no such checkpoint;
    `CheckpointError` if the checkpoint is unusable.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=3", "train.plots=false"])
    nodekit.train(config, "runs/tiny", restart=True, progress=False)
    run = nodekit.load("runs/tiny", which="latest")
    ts = jnp.asarray(run.task.ts[:20])
    ys = run.model(ts, jnp.asarray(run.task.ys[0]))   # the trained model, at once
    print(run.step, run.summary["status"], ys.shape, run.metrics[-1]["loss"])
    ```
    """
    import jax

    from ._build import state_shapes
    from ._checkpoint import load_checkpoint
    from ._config import load_config
    from ._errors import CheckpointError, InputError
    from ._optim import make_optimizer
    from ._rundir import Workdir, read_json, read_metrics
    from .tasks import make_task

    if which not in ("best", "latest"):
        raise InputError(f"which: got {which!r}; use 'best' or 'latest'.")
    wd = Workdir(Path(workdir))
    if not wd.config.exists():
        raise InputError(f"{str(wd.path)!r} holds no nodekit run (no config.yaml); give the "
                         "workdir a run was trained into.")
    config = load_config(wd.config)
    candidates = [wd.best] if which == "best" else [wd.latest, wd.previous]
    existing = [p for p in candidates if p.exists()]
    if not existing:
        hint = (" (no evaluation has run yet; use which='latest')" if which == "best"
                else "")
        raise InputError(f"{str(wd.path)!r} has no {candidates[0].name}{hint}.")
    with jax.enable_x64(config.precision == "float64"):
        task = make_task(config)
        optim = make_optimizer(config.optimizer, config.train.steps)
        model_like, opt_like, _ = state_shapes(task, optim, np.uint32(config.seed), split=True)
        error = None
        for path in existing:
            try:
                (model, _), header = load_checkpoint(path, (model_like, opt_like),
                                                     config_hash=config.hash(),
                                                     config=config.to_dict())
                break
            except CheckpointError as e:
                error = error or e
        else:
            raise error
    rows, skipped = read_metrics(wd.metrics)
    metrics = sorted((r for r in rows if not r.get("eval")), key=lambda r: r["step"])
    evals = sorted((r for r in rows if r.get("eval")), key=lambda r: r["step"])
    summary = read_json(wd.summary, f"summary {str(wd.summary)!r}")
    return Run(config=config, model=model, metrics=metrics, evals=evals, summary=summary,
               task=task, step=header["step"], checkpoint=path, workdir=wd.path,
               skipped_rows=skipped)
