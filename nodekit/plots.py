"""Matplotlib figures written by training runs and experiments (PNG, headless).

Figures are made with Matplotlib's object API (`matplotlib.figure.Figure` drawn by the
Agg canvas): importing or using this module never switches the process's backend and
never touches pyplot's global figures, so a notebook or application keeps its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    """A headless figure and its axes (always 2-D), outside pyplot.

    **Arguments:**

    - `ncols`, `nrows`: the grid of axes.
    - `size`: inches per panel `(width, height)`.

    **Returns:** `(fig, axes)` with `axes[row, col]`.

    **Example:**

    ```python
    from nodekit.plots import new_figure, save_figure

    fig, axes = new_figure(2)
    axes[0, 0].plot([0, 1], [1, 0])
    save_figure(fig, "/tmp/nodekit-example-figure.png")
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def save_figure(fig, path, dpi: int = 110, *, tight: bool = True) -> Path:
    """Save a figure made by `new_figure` as PNG (atomically: a reader never sees a
    half-written file); returns the path. `tight` applies `fig.tight_layout()` first."""
    import io

    from ._rundir import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def subscript_names(n: int, stem: str = "x") -> list[str]:
    """`["x₁", "x₂", ...]`: default names of state coordinates (not `y0`, which the API
    uses for the initial state)."""
    digits = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
    return [f"{stem}{str(i + 1).translate(digits)}" for i in range(n)]


def smooth(x, window: int) -> np.ndarray:
    """A trailing moving average over `window` points (NaN-free input)."""
    x = np.asarray(x, dtype=float)
    window = max(1, min(int(window), len(x)))
    if len(x) == 0 or window == 1:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def plot_loss(metrics_path, out: Path, describe: dict | None = None) -> Path | None:
    """The training loss (raw trace faint, moving average on top) and, on its own
    panel, the evaluation loss, each against the step, with captions saying what each
    measures (`describe`: a task's `describe()`; generic words by default).

    **Returns:** the PNG's path, or `None` when no training row is logged yet.

    **Example:**

    ```python
    import json, tempfile
    from pathlib import Path
    from nodekit.plots import plot_loss

    folder = Path(tempfile.mkdtemp())
    rows = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(50)]
    rows.append({"step": 49, "eval": True, "eval_loss": 0.05})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    print(plot_loss(folder / "metrics.jsonl", folder / "loss.png"))
    ```
    """
    from ._rundir import read_metrics

    words = {"loss": "training loss", "eval_loss": "evaluation loss"}
    words.update({k: v for k, v in (describe or {}).items() if isinstance(v, str) and v})
    rows, _ = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows
             if not r.get("eval") and isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"] + 1, r["eval_loss"]) for r in rows
             if r.get("eval") and isinstance(r.get("eval_loss"), (int, float))]
    if not train:
        return None
    fig, axes = new_figure(2 if evals else 1, size=(5.2, 3.8))
    ax = axes[0, 0]
    s, loss = (np.asarray(v, dtype=float) for v in zip(*train))
    ax.plot(s, loss, lw=0.6, color="C0", alpha=0.3, label="raw")
    window = max(1, len(loss) // 50)
    if window > 1:
        ax.plot(s, smooth(loss, window), lw=1.6, color="C0",
                label=f"moving average ({window} logged steps)")
    if loss.min() > 0:
        ax.set_yscale("log")  # a negative log-likelihood can be below zero: linear then
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    captions = [f"Training loss: {words['loss']}."]
    if evals:
        ax = axes[0, 1]
        s, ev = (np.asarray(v, dtype=float) for v in zip(*evals))
        ax.plot(s, ev, "o-", ms=3, color="C1")
        if ev.min() > 0:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("evaluation loss")
        ax.set_title("evaluation loss", fontsize=10)
        ax.grid(alpha=0.3)
        captions.append(f"Evaluation loss: {words['eval_loss']}.")
    fig.text(0.01, 0.01, "\n".join(captions), fontsize=8, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.06 * len(captions), 1, 1))
    return save_figure(fig, out, tight=False)


def plot_trajectory(ts, true, pred, out: Path, names: list[str] | None = None,
                    time_name: str = "t") -> Path:
    """True against predicted trajectory: each coordinate over time, and (for 2-D states)
    the phase plane.

    **Arguments:**

    - `ts`: times `(T,)`; `true`, `pred`: states `(T, d)`.
    - `out`: the PNG's path.
    - `names`: one name per coordinate (e.g. a CSV's column names); default `x₁, x₂, ...`.
    - `time_name`: the time axis's label.

    **Example:**

    ```python
    import numpy as np
    from nodekit.plots import plot_trajectory

    ts = np.linspace(0, 6, 50)
    true = np.stack([np.cos(ts), np.sin(ts)], -1)
    plot_trajectory(ts, true, true + 0.05, "/tmp/nodekit-example-trajectory.png",
                    names=["position", "velocity"])
    ```
    """
    ts, true, pred = np.asarray(ts), np.asarray(true), np.asarray(pred)
    d = true.shape[-1]
    names = list(names) if names is not None else subscript_names(d)
    ncols = 2 if d == 2 else 1
    fig, axes = new_figure(ncols, size=(6.0, 4.0))
    ax = axes[0, 0]
    for i in range(min(d, 6)):
        ax.plot(ts, true[:, i], "-", lw=1.5, color=f"C{i}", label=f"data {names[i]}")
        ax.plot(ts, pred[:, i], "--", lw=1.5, color=f"C{i}", label=f"model {names[i]}")
    ax.set_xlabel(time_name)
    ax.set_ylabel("state")
    ax.set_title("trajectories (solid: data, dashed: model)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if d == 2:
        ax = axes[0, 1]
        ax.plot(true[:, 0], true[:, 1], "g-", lw=1.5, label="data")
        ax.plot(pred[:, 0], pred[:, 1], "b--", lw=1.5, label="model")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_title("phase portrait", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_density(samples, density, lim: float, out: Path,
                 names: list[str] | None = None) -> Path:
    """Data samples beside a model density on the square `[-lim, lim]^2` (`density`:
    an `(n, n)` grid, rows along the second coordinate).

    **Example:**

    ```python
    import numpy as np
    from nodekit.plots import plot_density

    rng = np.random.default_rng(0)
    g = np.linspace(-3, 3, 40)
    density = np.exp(-0.5 * (g[None, :] ** 2 + g[:, None] ** 2)) / (2 * np.pi)
    plot_density(rng.standard_normal((500, 2)), density, 3.0,
                 "/tmp/nodekit-example-density.png")
    ```
    """
    samples, density = np.asarray(samples), np.asarray(density)
    names = list(names) if names is not None else subscript_names(2)
    fig, axes = new_figure(2, size=(4.5, 4.5))
    a0, a1 = axes[0, 0], axes[0, 1]
    a0.hist2d(samples[:, 0], samples[:, 1], bins=80, range=[[-lim, lim], [-lim, lim]],
              cmap="viridis")
    a0.set_title("data (histogram)", fontsize=10)
    a1.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
    a1.set_title("model density", fontsize=10)
    for ax in (a0, a1):
        ax.set_aspect("equal")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    return save_figure(fig, out)
