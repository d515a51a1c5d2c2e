"""`chen2018-latent-ode`: a latent ODE against an RNN baseline on irregularly sampled
noisy spirals: reconstruction and extrapolation error (Chen et al. 2018, Sec. 5).

Runs (`nodekit/configs/papers/chen2018-latent-ode/`): `latent-ode` and `rnn`."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import numpy as np

from ._common import (
    batch_mode_text,
    check,
    claim,
    figure,
    md_table,
    save,
    smooth,
    write_report,
)
from ._runs import RunSpec, Runs, reproduce, timings

NAME = "chen2018-latent-ode"
PAPER = ("Chen, Rubanova, Bettencourt, Duvenaud 2018, Neural Ordinary Differential "
         "Equations, Sec. 5 / Tab. 2 / Fig. 8 (latent ODE on irregular spirals)")
CLAIM = "a latent ODE reconstructs and extrapolates irregular noisy spirals better than an RNN"

#: Quick mode: 500 spirals and 300 steps.
QUICK = ("data.n_samples=500", "train.steps=300", "train.eval_every=100",
         "train.checkpoint_every=100")
RUNS = (RunSpec("latent-ode", quick=QUICK), RunSpec("rnn", quick=QUICK))
LABELS = {"latent-ode": "latent ODE", "rnn": "RNN"}
#: The paper's Tab. 2, 30 observations per spiral: predictive RMSE.
PAPER_LATENT_RMSE, PAPER_RNN_RMSE = 0.1642, 0.3937
#: How close to the paper's latent-ODE RMSE counts as reproducing it (fixed beforehand).
RMSE_FACTOR = 1.5


def run(workdir: Path, quick: bool = False, **options) -> Path:
    """Train what is missing of this experiment's runs and write its report."""
    return reproduce(NAME, RUNS, report, workdir, quick, **options)


def report(runs: Runs, workdir: Path, quick: bool) -> Path:
    """The claims, computed from the runs' files, and the figures."""
    workdir = Path(workdir)
    cfg = runs.config("latent-ode")
    steps = cfg.train.steps
    n_spirals = cfg.data.n_samples
    preds, loaded = {}, {}
    for n, label in LABELS.items():
        loaded[label] = r = runs.load(n)  # the final model (checkpoints/latest.nkc)
        preds[label] = np.asarray(eqx.filter_jit(r.task.predict)(r.model))
    task = loaded["latent ODE"].task
    end = task.obs_end
    ts = np.asarray(task.grid)
    obs, mask = task.eval_values, task.eval_mask.astype(bool).any(-1)

    truth = task.truth
    sq = {k: ((p - truth) ** 2).mean(axis=(0, 2)) for k, p in preds.items()}  # per time point
    rmse = {k: {"all": float(np.sqrt(s.mean())), "reconstruction": float(np.sqrt(s[:end].mean())),
                "extrapolation": float(np.sqrt(s[end:].mean()))} for k, s in sq.items()}
    n_bins = 5
    horizon = {k: np.sqrt(s[end:][: (len(s) - end) // n_bins * n_bins]
                          .reshape(n_bins, -1).mean(1)) for k, s in sq.items()}
    nfe = float(np.nanmean(runs.series("latent-ode", "nfe_forward")[-20:]))

    # figures: test spirals, and training curves
    fig, axes = figure(4, 1, size=(2.8, 2.8))
    for j, ax in enumerate(axes[0]):
        m = mask[j]
        ax.plot(truth[j, :, 0], truth[j, :, 1], color="0.7", lw=2.5, label="true")
        ax.plot(obs[j, m, 0], obs[j, m, 1], "k.", ms=3, label="observed")
        for c, k in (("C0", "latent ODE"), ("C3", "RNN")):
            ax.plot(preds[k][j, :end, 0], preds[k][j, :end, 1], color=c, lw=1.2, label=k)
            ax.plot(preds[k][j, end - 1:, 0], preds[k][j, end - 1:, 1], color=c, lw=1.2,
                    ls="--")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"test spiral {j} (dashed: extrapolation)", fontsize=7)
        if j == 0:
            ax.legend(fontsize=6, loc="lower left")
    figs = [save(fig, workdir / "spirals.png")]
    fig, axes = figure(2, 1, size=(4.0, 3.2))
    for n, k in LABELS.items():
        axes[0, 0].plot(runs.steps(n), smooth(runs.series(n, "mse"), 20), lw=1.3, label=k)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_title("training MSE on observed points (smoothed)", fontsize=9)
    axes[0, 0].set_xlabel("step")
    t_future = ts[end:][: len(horizon["RNN"]) * ((len(ts) - end) // n_bins)]
    centers = t_future.reshape(n_bins, -1).mean(1)
    for c, k in (("C0", "latent ODE"), ("C1", "RNN")):
        axes[0, 1].plot(centers, horizon[k], "o-", color=c, label=k)
    axes[0, 1].set_title("test RMSE beyond the observed window", fontsize=9)
    axes[0, 1].set_xlabel("t (window ends at %.2f)" % float(ts[end - 1]))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figs.append(save(fig, workdir / "errors.png"))

    L, R = rmse["latent ODE"], rmse["RNN"]
    bar = RMSE_FACTOR * PAPER_LATENT_RMSE
    claims = [
        claim("The latent ODE reconstructs the observed window of held-out spirals better "
              "than the RNN baseline",
              f"Tab. 2 (30 obs.): predictive RMSE latent ODE {PAPER_LATENT_RMSE} vs RNN "
              f"{PAPER_RNN_RMSE}",
              f"test RMSE on the window (vs the clean spiral): latent ODE {L['reconstruction']:.3f}, "
              f"RNN {R['reconstruction']:.3f}",
              check(L["reconstruction"], "<", R["reconstruction"], "latent ODE", "RNN")),
        claim(f"and its RMSE is close to the paper's (within {RMSE_FACTOR}x of "
              f"{PAPER_LATENT_RMSE})",
              f"Tab. 2: {PAPER_LATENT_RMSE} with 30 observations per spiral",
              f"latent ODE window RMSE {L['reconstruction']:.3f}",
              check(L["reconstruction"], "<", bar, "RMSE", f"{RMSE_FACTOR} x paper")),
        claim("The latent ODE extrapolates beyond the observed window better than the RNN",
              "Fig. 8: the latent ODE's extrapolations follow the spiral, the RNN's do not",
              f"test RMSE on the unobserved second half: latent ODE {L['extrapolation']:.3f}, "
              f"RNN {R['extrapolation']:.3f}",
              check(L["extrapolation"], "<", R["extrapolation"], "latent ODE", "RNN")),
    ]
    rows = [[k, f"{rmse[k]['reconstruction']:.4f}", f"{rmse[k]['extrapolation']:.4f}",
             f"{rmse[k]['all']:.4f}", f"{np.nanmean(runs.series(n, 'mse')[-20:]):.4f}",
             f"{(runs.summary(n).get('step_time_median_s') or float('nan')) * 1e3:.1f}"]
            for n, k in LABELS.items()]
    table = md_table(["Model", "RMSE window (reconstruction)", "RMSE future (extrapolation)",
                      "RMSE whole grid", "Train MSE (obs., last 20 steps)", "ms / step (median)"],
                     rows)
    h_table = md_table(["t range"] + list(horizon),
                       [[f"{t_future.reshape(n_bins, -1)[b, 0]:.2f}–"
                         f"{t_future.reshape(n_bins, -1)[b, -1]:.2f}"]
                        + [f"{horizon[k][b]:.3f}" for k in horizon] for b in range(n_bins)])
    d, lt, f, s_ = cfg.data, cfg.model.latent, cfg.model.field, cfg.solver
    settings = {
        "configs": f"nodekit/configs/papers/{NAME}/latent-ode.yaml, rnn.yaml",
        "data": f"latent_spirals({n_spirals}, n_obs={d.n_obs}, noise_std={d.noise_std:g}, "
                f"seed={cfg.data_seed}): {task.n_train} train / {len(truth)} test spirals, "
                f"{d.n_points} grid points on [0, 2π]; {d.n_obs} random observations in the "
                f"first {end} points (the window), none after",
        "latent ODE": f"{lt.encoder.upper()} encoder ({lt.hidden_size}) run backwards over "
                      f"the window with the time gaps as input -> q(z0), latent "
                      f"{lt.latent_size}, field MLP {f.depth}x{f.width} {f.activation}, "
                      f"decoder MLP {lt.decoder_depth}x{lt.decoder_width}; {s_.name} rtol "
                      f"{s_.rtol:g} atol {s_.atol:g}",
        "RNN baseline": f"the same GRU encoder; a time-aware GRU decoder ({lt.hidden_size}) "
                        "fed its own predictions and the time gaps (RNNBaseline)",
        "training": f"-ELBO (latent ODE) / Gaussian NLL (RNN), obs. std {lt.obs_std:g}, on "
                    f"the window's observations only; Adam lr {cfg.optimizer.learning_rate:g} "
                    f"{cfg.optimizer.schedule}, batch {cfg.train.batch_size}, {steps} steps, "
                    "batches an epoch's random permutation at a time, one seed",
        "test": "encode each test spiral's window observations, decode the posterior mean "
                "on the whole grid, RMSE against the clean spiral",
        "latent ODE NFE": f"{nfe:.1f} per sequence (decoder solve, last 20 training steps)",
    }
    notes = [
        "Chen et al.'s spirals have 1000 points and are scored by predictive RMSE over "
        "observed and future points; here the data come from nodekit.data.latent_spirals "
        "(100 points on [0, 2π], the first half the observation window), so the absolute "
        "RMSEs are comparable in scale only (spiral radius 0.3 z, up to ~3.8).",
        "The encoder is the GRU run backwards in time (Chen et al.'s latent ODE); the "
        "ODE-RNN encoder of Rubanova et al. 2019 (encoder='ode_rnn') solves an ODE between "
        "every pair of observations and is several times slower on a CPU.",
        "Extrapolation is the hard part: the spiral's radius keeps growing past the "
        "window, into radii most training windows never reach, and both models are "
        "trained on the window only. The error-by-horizon table shows how far each model "
        "stays accurate.",
        "Each model is one `nodekit.train` run of the `latent` task. As in this "
        "experiment's earlier Python loop, each step's 50 spirals are drawn anew "
        "(`train.batch_order: random`, numpy's default_rng(step) for seed 0) and the "
        "initial weights are jax.random.PRNGKey(0) (`model.init_seed: 0`), so the RNN's "
        "run is the earlier one; the latent ODE's per-step sampling keys (its ELBO's "
        "posterior samples) come from the run's seed and differ from the earlier loop's. "
        "With the task's default batch order (each epoch a permutation of the training "
        "spirals) the RNN extrapolated better (RMSE 1.07 against the latent ODE's 1.18): "
        "the extrapolation comparison is sensitive to the batch order and the seed. The "
        "RMSEs are computed from the runs' final checkpoints (posterior-mean predictions "
        "of the test spirals), the curves from their metrics.jsonl.",
    ]
    if quick:
        notes.append(f"Quick mode: {n_spirals} spirals and {steps} steps; the models are "
                     "far from converged.")
    metrics = {"rmse": rmse, "rmse_by_horizon": {k: v for k, v in horizon.items()},
               "latent_nfe_per_sequence": nfe,
               "paper_rmse": {"latent ODE": PAPER_LATENT_RMSE, "RNN": PAPER_RNN_RMSE}}
    return write_report(
        workdir, name=NAME, title="chen2018-latent-ode: latent ODE vs RNN on irregular spirals",
        paper=PAPER, quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table), ("Test RMSE by horizon (future half)",
                                                       h_table)],
        timings=timings(runs), batch_mode=batch_mode_text(s_.batch_mode)
        + " (each sequence's latent solve is its own, vmapped)",
    )
