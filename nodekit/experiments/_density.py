"""Shared by the density experiments (FFJORD, RNODE, TayNODE): a trained CNF's numbers
read from its run's files (test NLL and NFE of the final evaluation, training NLL and
NFE per step, training time), the Hutchinson estimate of a trained model's NLL, and
the figures (training curves, density heatmaps, samples). Training is `nodekit.train`'s
(the runs' configs are in `nodekit/configs/papers/<experiment>/`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._common import figure, plot_curves, save, smooth
from ._runs import Runs


@dataclass
class DensityRun:
    """One trained CNF's measurements, read from its run's files."""

    name: str
    label: str
    distribution: str
    steps: int
    test_nll: float   # the final evaluation: exact trace on the test set
    eval_nfe: float   # NFE of that (joint) test solve
    train_s: float    # training seconds without compilation and evaluations


def density_run(runs: Runs, name: str, label: str | None = None) -> DensityRun:
    """The measurements of density run `name` (its last evaluation and its steps)."""
    ev = runs.last_eval(name)
    cfg = runs.config(name)
    return DensityRun(name, label or name, cfg.data.distribution, len(runs.rows(name)),
                      float(ev.get("eval_loss", np.nan)), float(ev.get("eval_nfe", np.nan)),
                      float(cumulative_seconds(runs, name)[-1]) if runs.rows(name) else np.nan)


def cumulative_seconds(runs: Runs, name: str) -> np.ndarray:
    """Training wall time after each logged step, from the rows' `step_time_s`,
    without compilation and evaluations: the first step of each session (it compiles)
    and the steps whose time includes an evaluation count at the median step time."""
    rows = runs.rows(name)
    t = runs.step_seconds(name)
    every = runs.config(name).train.eval_every
    steps = np.array([r["step"] for r in rows])
    t[(steps > 0) & (steps % every == 0)] = np.nan  # (the time since the previous row holds an eval)
    med = np.nanmedian(t) if np.isfinite(t).any() else 0.0
    t = np.where(np.isfinite(t), t, med)
    t[0] = 0.0  # the clock starts after the first (compiling) step, as before
    return np.cumsum(t)


def test_points(runs: Runs, name: str) -> np.ndarray:
    """The run's test samples (`data.n_test` drawn with `data.test_seed`)."""
    return np.asarray(runs.task(name).test_x)


def optimum_nll(distribution: str, x: np.ndarray) -> float:
    """The analytic floor: the true density's mean negative log-density on `x`
    (`nan` for densities without a closed form)."""
    from ..data import TOY2D_DENSITY_NAMES, toy2d_log_density

    if distribution not in TOY2D_DENSITY_NAMES:
        return float("nan")
    return float(-np.mean(toy2d_log_density(distribution, np.asarray(x, np.float64))))


@eqx.filter_jit
def _nll(model, x, key, mode: str):
    from ..models import nll

    value, aux = nll(model, x, key, mode=mode, throw=False)
    return value, aux["nfe"]


def hutchinson_bias(runs: Runs, name: str, n_draws: int, seed: int = 0
                    ) -> tuple[float, float, float]:
    """`(mean, standard error, exact)` of run `name`'s test NLL: Hutchinson estimates
    over `n_draws` noise draws against the exact trace, for the same trained model."""
    model = runs.load(name).model
    cfg = runs.config(name)
    mode = cfg.train.eval_batch_mode or cfg.solver.batch_mode
    x = jnp.asarray(test_points(runs, name))
    exact, _ = _nll(model.with_trace("exact"), x, None, mode)
    hutch = model.with_trace("hutchinson")
    est = np.asarray([float(_nll(hutch, x, jax.random.PRNGKey(seed * 7919 + i), mode)[0])
                      for i in range(n_draws)])
    return float(est.mean()), float(est.std(ddof=1) / np.sqrt(len(est))), float(exact)


def time_to_nll(runs: Runs, name: str, level: float, window: int = 25) -> float:
    """Training seconds (without compilation and evaluations) until the smoothed
    training NLL (`loss_task`, the data term without penalties) first reaches `level`;
    `inf` when it never does."""
    nll = smooth(runs.series(name, "loss_task"), window)
    hit = np.nonzero(nll <= level)[0]
    if len(hit) == 0:
        return float("inf")
    return float(cumulative_seconds(runs, name)[hit[0]])


# ----------------------------------------------------------------- figures


GRID_N, GRID_LIM = 60, 4.5


def grid():
    g = np.linspace(-GRID_LIM, GRID_LIM, GRID_N, dtype=np.float32)
    X, Y = np.meshgrid(g, g)
    return X, Y, np.stack([X.ravel(), Y.ravel()], 1)


@eqx.filter_jit
def _grid_logp(model, pts):
    lp, _, _ = model.log_prob_batch(pts, None, mode="joint", throw=False)
    return lp


def model_density(model) -> np.ndarray:
    """The model's density on the plotting grid (exact trace), shape `(GRID_N, GRID_N)`."""
    X, _, pts = grid()
    return np.exp(np.asarray(_grid_logp(model.with_trace("exact"), jnp.asarray(pts)))
                  ).reshape(X.shape)


def true_density(distribution: str) -> np.ndarray | None:
    from ..data import TOY2D_DENSITY_NAMES, toy2d_log_density

    if distribution not in TOY2D_DENSITY_NAMES:
        return None
    X, _, pts = grid()
    return np.exp(toy2d_log_density(distribution, pts)).reshape(X.shape)


@eqx.filter_jit
def _sample(model, key, n: int):
    return model.sample(key, n, throw=False)[0]


def plot_densities(path: Path, panels: list[tuple[str, str, np.ndarray]]) -> Path:
    """A row of panels `(title, kind, data)`; kind `"density"` (a grid image) or
    `"points"` (an `(n, 2)` scatter)."""
    fig, axes = figure(len(panels), 1, size=(2.6, 2.6))
    for ax, (title, kind, data) in zip(axes[0], panels):
        if kind == "density":
            ax.imshow(data, origin="lower", extent=[-GRID_LIM, GRID_LIM, -GRID_LIM, GRID_LIM],
                      cmap="magma")
        else:
            ax.scatter(data[:, 0], data[:, 1], s=0.6, alpha=0.5, color="C0")
            ax.set_xlim(-GRID_LIM, GRID_LIM)
            ax.set_ylim(-GRID_LIM, GRID_LIM)
            ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save(fig, path)


def density_panels(runs: Runs, name: str, label: str, key=0) -> list[tuple[str, str, np.ndarray]]:
    """Model density heatmap and model samples of run `name`'s final model."""
    model = runs.load(name).model
    samples = np.asarray(_sample(model, jax.random.PRNGKey(key), 2000))
    return [(f"{label}: density", "density", model_density(model)),
            (f"{label}: samples", "points", samples)]


def regularisation_figures(runs: Runs, workdir: Path, labels: dict[str, str]) -> list[Path]:
    """The figures shared by the regularisation studies: training NFE and NLL per step
    for each run (`labels`: run name -> label) and the learned densities."""
    names = list(labels)
    distribution = runs.config(names[0]).data.distribution
    figs = [
        plot_curves(Path(workdir) / "train_nfe.png",
                    {labels[n]: (runs.steps(n), runs.series(n, "nfe_forward")) for n in names},
                    xlabel="step", ylabel="NFE per training solve (smoothed)", window=25,
                    title=f"{distribution}: forward NFE per batch"),
        plot_curves(Path(workdir) / "train_nll.png",
                    {labels[n]: (runs.steps(n), runs.series(n, "loss_task")) for n in names},
                    xlabel="step", ylabel="training NLL (nats, smoothed)", window=25,
                    title=f"{distribution}: training NLL (without penalties)"),
    ]
    panels = [("data samples", "points", test_points(runs, names[0]))]
    for i, n in enumerate(names):
        panels += density_panels(runs, n, labels[n], key=i)[:1]
    figs.append(plot_densities(Path(workdir) / "densities.png", panels))
    return figs
