"""`AbstractTask`: the interface between a config and the training loop."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._config import Config


class AbstractTask(abc.ABC):
    """The interface between a config and the training loop.

    A task is built from a validated `Config` on the host: its constructor reads or
    generates the data and checks everything that depends on it (sizes, shapes, the
    user's model code), raising `ConfigError`/`InputError` at once, so a task that
    exists will train. `nodekit validate` builds the task too, so it refuses exactly
    what `train` refuses.

    Subclasses implement `make_model`, `batch`, `loss` and `evaluate`, and may
    override `plot` and `finalise`. `loss` and `evaluate` are traced (pure JAX);
    `batch` runs on the host and must be a pure function of `(seed, step)` so that a
    resumed run draws the same batches. Data, model and batches are in the config's
    `precision` (`dtype`); the loop enables float64 around a float64 run.

    **What the loop uses:**

    - `make_model(key)`, `batch(step)`, `loss(model, batch, key)`, `evaluate(model)`
      (every `train.eval_every` steps), `plot(model, plot_dir)` (at the end).
    - `finalise(model) -> dict`: host-side, once after training; its items go into
      `summary.json` (e.g. `test_loss`, `sparse_regression`). It may raise; the loop
      should record the error rather than lose the run.
    - `normalisation`: a `nodekit.data.Normalisation` (the training part's statistics,
      for the user's files) or `None`; the loop writes `normalisation.to_dict()` into
      the run's folder (e.g. `normalisation.json`) so predictions can be mapped back.
    - `state_names`: the coordinates' names (CSV columns, or `x1, x2, ...`) for plots
      and messages, or `None`.
    - `fingerprint()`: a hash of the user's files the run depends on (data file and
      Python modules), or `None`: add it to the compiled-step cache key (the user's
      field is traced into the step) and to what a resumed checkpoint must match.
    - `n_train`: the number of training items a batch is drawn from.
    """

    #: Coordinate names for plots and messages (set by tasks that know them).
    state_names: tuple[str, ...] | None = None
    #: Normalisation statistics of the training part (the user's files), or None.
    normalisation = None
    #: Training items a batch is drawn from.
    n_train: int = 0

    def __init__(self, config: Config):
        self.config = config
        self.dtype = np.dtype(config.precision)
        self._fingerprint_parts: list[bytes] = []

    @abc.abstractmethod
    def make_model(self, key) -> eqx.Module:
        """The initial model, its floating-point arrays in `self.dtype`."""

    @abc.abstractmethod
    def batch(self, step: int) -> Any:
        """The training batch for `step` (a pytree of NumPy arrays)."""

    @abc.abstractmethod
    def loss(self, model, batch, key) -> tuple[jax.Array, dict]:
        """`(total loss, aux)`; aux holds scalars: `loss_task`, `reg_<name>` terms,
        `nfe_forward`, `solver_steps`, `failures` (failed solves in the batch)."""

    @abc.abstractmethod
    def evaluate(self, model) -> dict:
        """Evaluation metrics (at least `eval_loss`), traced."""

    def plot(self, model, plot_dir: Path) -> list[Path]:
        """Write task-specific figures; returns their paths."""
        return []

    def finalise(self, model) -> dict:
        """Host-side results computed once after training, merged into `summary.json`
        (default: none)."""
        return {}

    def fingerprint(self) -> str | None:
        """A SHA-256 over the user's files this run reads (data file, Python modules),
        or `None` when it reads none."""
        if not self._fingerprint_parts:
            return None
        import hashlib

        h = hashlib.sha256()
        for part in self._fingerprint_parts:
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    # -- optional hooks read by the training loop and the plots (defaults below)

    def describe(self) -> dict:
        """Words for the run's plots and logs: `loss` (what the training loss
        measures), `eval_loss` (what the evaluation loss measures) and `state_names`
        (one name per state coordinate, or `None` for `x₁, x₂, ...`). Tasks override
        the entries they can say more about."""
        return {"loss": "training loss (per batch)",
                "eval_loss": "evaluation loss (held-out or whole-data solve)",
                "state_names": self.state_names}
