"""`AbstractTask`: the interface between a config and the training loop."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from .._config import Config


class AbstractTask(abc.ABC):
    """The interface between a config and the training loop.

    Subclasses implement `make_model`, `batch`, `loss` and `evaluate` (and optionally
    `plot`). `loss` and `evaluate` are traced (pure JAX); `batch` runs on the host and
    must be a pure function of `(seed, step)` so that a resumed run draws the same
    batches.
    """

    def __init__(self, config: Config):
        self.config = config

    @abc.abstractmethod
    def make_model(self, key) -> eqx.Module:
        """The initial model."""

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

    # -- optional hooks read by the training loop and the plots (defaults below)

    def describe(self) -> dict:
        """Words for the run's plots and logs: `loss` (what the training loss
        measures), `eval_loss` (what the evaluation loss measures) and `state_names`
        (one name per state coordinate, or `None` for `x₁, x₂, ...`). Tasks override
        the entries they can say more about."""
        return {"loss": "training loss (per batch)",
                "eval_loss": "evaluation loss (held-out or whole-data solve)",
                "state_names": None}

    def integrator(self) -> tuple[str, str]:
        """`(name, reason)`: which integrator the run's solves use and why (written to
        `summary.json` and each metrics row). Default: not reported."""
        return "unknown", "not reported"
