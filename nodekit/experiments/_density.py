"""Shared by the density experiments (FFJORD, RNODE, TayNODE): train a CNF on a toy 2-D
density with optional regularisers, evaluate its test NLL and NFE, and draw heatmaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._common import FitResult, figure, fit, save

#: FFJORD's choice: the batch solved as one ODE state (one shared step size).
MODE = "joint"
#: FFJORD's tolerances for the toy densities.
TOL = 1e-5
WIDTH, DEPTH = 64, 2
BATCH = 256
N_TEST = 2000
LR = 1e-3


@dataclass
class DensityRun:
    """One trained CNF and its measurements."""

    name: str
    fit: FitResult
    model: object
    test_nll: float
    eval_nfe: float
    train_s: float  # training time without the first (compiling) step

    @property
    def steps(self) -> int:
        return len(self.fit.history)


_LOSSES: dict = {}


def loss_fn(regularisers: tuple = ()):
    """The training loss `nll + sum_i weight_i * penalty_i` (one object per regulariser
    set, so that repeated fits reuse the compiled step)."""
    key = tuple(regularisers)
    if key not in _LOSSES:
        from ..models import nll

        def loss(model, batch, k):
            value, aux = nll(model, batch, k, mode=MODE, regularisers=regularisers)
            aux = dict(aux)
            penalties = aux.pop("penalties")
            total = value
            for i, r in enumerate(regularisers):
                aux[f"reg_{type(r).__name__}"] = penalties[i]
                total = total + r.weight * penalties[i]
            return total, aux

        _LOSSES[key] = loss
    return _LOSSES[key]


def test_points(name: str) -> np.ndarray:
    from ..data import sample_toy2d

    return sample_toy2d(name, N_TEST, seed=10_001)


def optimum_nll(name: str) -> float:
    """The analytic floor: the true density's mean negative log-density on the test
    samples (`nan` for densities without a closed form)."""
    from ..data import TOY2D_DENSITY_NAMES, toy2d_log_density

    if name not in TOY2D_DENSITY_NAMES:
        return float("nan")
    return float(-np.mean(toy2d_log_density(name, test_points(name))))


@eqx.filter_jit
def _evaluate(model, x, key):
    from ..models import nll

    value, aux = nll(model, x, key, mode=MODE)
    return value, aux["nfe"]


def with_trace(model, trace: str):
    """The same CNF (same parameters and solve settings) with another trace method."""
    return model.with_trace(trace)


def evaluate(model, x) -> tuple[float, float]:
    """Test NLL (exact trace) and the NFE of the joint test solve."""
    value, nfe = _evaluate(with_trace(model, "exact"), jnp.asarray(x), None)
    return float(value), float(nfe)


def train_density(name: str, *, steps: int, seed: int = 0, trace: str = "exact",
                  regularisers: tuple = (), every: int = 0, callback=None) -> DensityRun:
    """Train a CNF (FFJORD) on toy density `name` with fresh samples every step."""
    from ..data import sample_toy2d
    from ..models import CNF

    key = jax.random.PRNGKey(seed)
    model = CNF.from_mlp(2, WIDTH, DEPTH, activation="tanh", trace=trace, rtol=TOL, atol=TOL,
                         key=key)
    batch = lambda s: sample_toy2d(name, BATCH, seed=seed * 1_000_003 + s)
    res = fit(model, loss_fn(tuple(regularisers)), batch, steps=steps, learning_rate=LR,
              key=jax.random.fold_in(key, 1), every=every, callback=callback)
    test_nll, nfe = evaluate(res.model, test_points(name))
    return DensityRun(name, res, res.model, test_nll, nfe, res.train_s - res.first_step_s)


@eqx.filter_jit
def _grid_logp(model, pts):
    lp, _, _ = model.log_prob_batch(pts, None, mode=MODE)
    return lp


GRID_N, GRID_LIM = 60, 4.5


def grid():
    g = np.linspace(-GRID_LIM, GRID_LIM, GRID_N, dtype=np.float32)
    X, Y = np.meshgrid(g, g)
    return X, Y, np.stack([X.ravel(), Y.ravel()], 1)


def model_density(model) -> np.ndarray:
    """The model's density on the plotting grid (exact trace), shape `(GRID_N, GRID_N)`."""
    model = with_trace(model, "exact")
    X, _, pts = grid()
    return np.exp(np.asarray(_grid_logp(model, jnp.asarray(pts)))).reshape(X.shape)


def true_density(name: str) -> np.ndarray | None:
    from ..data import TOY2D_DENSITY_NAMES, toy2d_log_density

    if name not in TOY2D_DENSITY_NAMES:
        return None
    X, _, pts = grid()
    return np.exp(toy2d_log_density(name, pts)).reshape(X.shape)


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


def density_panels(run: DensityRun, label: str, key=0) -> list[tuple[str, str, np.ndarray]]:
    """Model density heatmap and model samples for one run."""
    samples = np.asarray(_sample(run.model, jax.random.PRNGKey(key), 2000))
    return [(f"{label}: density", "density", model_density(run.model)),
            (f"{label}: samples", "points", samples)]


def hutchinson_bias(model, x, n_draws: int, seed: int = 0) -> tuple[float, float, float]:
    """`(mean, standard error, exact)` of the test NLL: Hutchinson estimates over
    `n_draws` noise draws against the exact trace, for the same model."""
    hutch = with_trace(model, "hutchinson")
    exact, _ = evaluate(model, x)
    est = []
    for i in range(n_draws):
        value, _ = _evaluate(hutch, jnp.asarray(x), jax.random.PRNGKey(seed * 7919 + i))
        est.append(float(value))
    est = np.asarray(est)
    return float(est.mean()), float(est.std(ddof=1) / np.sqrt(len(est))), exact


# ----------------------------------------------------------------- regularisation studies


def time_to_nll(run: DensityRun, level: float, window: int = 25) -> float:
    """Training seconds (excluding the compiling first step) until the smoothed training
    NLL first reaches `level`; `inf` when it never does."""
    from ._common import smooth

    nll = smooth(run.fit.series("nll"), window)
    hit = np.nonzero(nll <= level)[0]
    if len(hit) == 0:
        return float("inf")
    times = run.fit.series("time_s")
    return float(times[hit[0]] - times[0])


def regularisation_study(workdir: Path, name: str, variants: list[tuple[str, tuple]], *,
                         steps: int, seed: int = 0):
    """Train one CNF per `(label, regularisers)` variant on density `name` and draw the
    shared figures. Returns `(runs by label, figures, timings)`."""
    from ._common import Timer, plot_curves

    runs, timings = {}, {}
    for label, regs in variants:
        with Timer() as t:
            runs[label] = train_density(name, steps=steps, seed=seed, regularisers=regs)
        timings[f"{label}: {steps} steps + test (incl. compile)"] = t.s
    x = lambda r: np.arange(r.steps)
    figs = [
        plot_curves(Path(workdir) / "train_nfe.png",
                    {lbl: (x(r), r.fit.series("nfe")) for lbl, r in runs.items()},
                    xlabel="step", ylabel="NFE per training solve (smoothed)", window=25,
                    title=f"{name}: forward NFE per batch"),
        plot_curves(Path(workdir) / "train_nll.png",
                    {lbl: (x(r), r.fit.series("nll")) for lbl, r in runs.items()},
                    xlabel="step", ylabel="training NLL (nats, smoothed)", window=25,
                    title=f"{name}: training NLL (without penalties)"),
    ]
    panels = [("data samples", "points", test_points(name))]
    with Timer() as t:
        for i, (lbl, r) in enumerate(runs.items()):
            panels += density_panels(r, lbl, key=i)[:1]
    timings["heatmaps"] = t.s
    figs.append(plot_densities(Path(workdir) / "densities.png", panels))
    return runs, figs, timings
