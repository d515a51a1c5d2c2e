"""Matplotlib figures written by training runs and experiments (PNG, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(metrics_path, out: Path) -> Path | None:
    """Training loss (and eval loss, where logged) against step, log scale.

    **Example:** `plot_loss("runs/spiral/metrics.jsonl", "runs/spiral/plots/loss.png")`
    """
    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    train = [(r["step"], r["loss"]) for r in rows if not r.get("eval") and r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval") and r.get("eval_loss") is not None]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    s, l = zip(*train)
    ax.plot(s, l, lw=1, label="train loss")
    if evals:
        s, l = zip(*evals)
        ax.plot(s, l, "o-", ms=3, label="eval loss")
    if min(min(l for _, l in train), min((l for _, l in evals), default=1.0)) > 0:
        ax.set_yscale("log")  # a negative log-likelihood can be below zero: linear then
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_trajectory(ts, true, pred, out: Path) -> Path:
    """True against predicted trajectory: each coordinate over time, and (for 2-D states)
    the phase plane.

    **Example:** `plot_trajectory(ts, ys_true, ys_pred, "plots/trajectory.png")`
    """
    ts, true, pred = np.asarray(ts), np.asarray(true), np.asarray(pred)
    d = true.shape[-1]
    ncols = 2 if d == 2 else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    for i in range(min(d, 6)):
        ax.plot(ts, true[:, i], "-", lw=1.5, color=f"C{i}", label=f"true y{i}")
        ax.plot(ts, pred[:, i], "--", lw=1.5, color=f"C{i}", label=f"model y{i}")
    ax.set_xlabel("t")
    ax.set_title("trajectories")
    ax.legend(fontsize=8)
    if d == 2:
        ax = axes[0, 1]
        ax.plot(true[:, 0], true[:, 1], "g-", lw=1.5, label="true")
        ax.plot(pred[:, 0], pred[:, 1], "b--", lw=1.5, label="model")
        ax.set_xlabel("y0")
        ax.set_ylabel("y1")
        ax.set_title("phase portrait")
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_density(samples, density, lim: float, out: Path) -> Path:
    """Data samples beside a model density on the square `[-lim, lim]^2` (`density`:
    an `(n, n)` grid, rows along the second coordinate).

    **Example:** `plot_density(test_x, np.exp(logp_grid), 4.5, "plots/density.png")`
    """
    samples, density = np.asarray(samples), np.asarray(density)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    axes[0].hist2d(samples[:, 0], samples[:, 1], bins=80, range=[[-lim, lim], [-lim, lim]],
                   cmap="viridis")
    axes[0].set_title("data")
    axes[1].imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
    axes[1].set_title("model density")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out)
