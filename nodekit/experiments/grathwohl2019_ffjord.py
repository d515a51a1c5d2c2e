"""`grathwohl2019-ffjord`: continuous normalising flows on FFJORD's toy 2-D densities:
test NLL against the analytic optimum, density heatmaps, exact vs Hutchinson trace.

Runs (`nodekit/configs/papers/grathwohl2019-ffjord/`): `8gaussians`, `circles` (exact
trace) and `8gaussians-hutchinson` (trained with Hutchinson's estimator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _density as D
from ._common import batch_mode_text, check, claim, md_table, plot_curves, write_report
from ._runs import RunSpec, Runs, reproduce, timings

NAME = "grathwohl2019-ffjord"
PAPER = ("Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud 2019, FFJORD: Free-form "
         "Continuous Dynamics for Scalable Reversible Generative Models (ICLR)")
CLAIM = "a CNF fits toy densities close to the analytic optimum; Hutchinson's trace is unbiased"

DENSITIES = ("8gaussians", "circles")
HUTCH = "8gaussians-hutchinson"
#: How close (nats) to the analytic optimum counts as a fit.
MARGIN = 0.1
#: Quick mode: 150 steps each. The full runs' steps are in their configs: circles needs
#: more (4000 against 1000): the flow must open a hole and split the mass into two
#: rings (1000 steps: a blurred single ring, 0.48 nats off; 4000 steps: 0.02 nats off,
#: its solves growing from ~26 to ~200 NFE on the way).
QUICK = ("train.steps=150", "train.eval_every=50", "train.checkpoint_every=50")
RUNS = (RunSpec("8gaussians", quick=QUICK), RunSpec("circles", quick=QUICK),
        RunSpec(HUTCH, quick=QUICK))
#: Noise draws of the Hutchinson estimate of the trained model's test NLL.
N_DRAWS, QUICK_DRAWS = 20, 8


def run(workdir: Path, quick: bool = False, **options) -> Path:
    """Train what is missing of this experiment's runs and write its report."""
    return reproduce(NAME, RUNS, report, workdir, quick, **options)


def report(runs: Runs, workdir: Path, quick: bool) -> Path:
    """The claims, computed from the runs' files, and the figures."""
    workdir = Path(workdir)
    res = {n: D.density_run(runs, n) for n in runs.names}
    steps = {n: runs.config(n).train.steps for n in runs.names}
    floors = {n: D.optimum_nll(runs.config(n).data.distribution, D.test_points(runs, n))
              for n in DENSITIES}
    n_draws = QUICK_DRAWS if quick else N_DRAWS
    h_mean, h_se, h_exact = D.hutchinson_bias(runs, "8gaussians", n_draws)
    hutch = res[HUTCH]

    figs = []
    for name in DENSITIES:
        r = res[name]
        panels = [("data samples", "points", D.test_points(runs, name)),
                  ("true density", "density", D.true_density(name))]
        panels += D.density_panels(runs, name, f"CNF ({r.test_nll:.2f} nats)")
        figs.append(D.plot_densities(workdir / f"density_{name}.png", panels))
    figs.append(D.plot_densities(
        workdir / "density_8gaussians_hutchinson.png",
        [("true density", "density", D.true_density("8gaussians"))]
        + D.density_panels(runs, "8gaussians", "exact trace")
        + D.density_panels(runs, HUTCH, "Hutchinson")))
    curves = {f"{n} (exact)": (runs.steps(n), runs.series(n, "loss_task")) for n in DENSITIES}
    curves["8gaussians (Hutchinson)"] = (runs.steps(HUTCH), runs.series(HUTCH, "loss_task"))
    figs.append(plot_curves(workdir / "nll_curves.png", curves, xlabel="step",
                            ylabel="training NLL (nats, smoothed)", window=20,
                            title="training NLL"))
    runs_ = {n: res[n] for n in DENSITIES}

    claims = []
    for name in DENSITIES:
        r, floor = runs_[name], floors[name]
        claims.append(claim(
            f"{name}: the CNF's test NLL comes within {MARGIN} nats of the analytic optimum",
            "Fig. 2: FFJORD's densities match the toy data (qualitative)",
            f"test NLL {r.test_nll:.3f} nats vs optimum {floor:.3f} "
            f"(gap {r.test_nll - floor:.3f}) after {steps[name]} steps",
            check(r.test_nll - floor, "<", MARGIN, "gap (nats)")))
    gap = abs(h_mean - h_exact)
    claims.append(claim(
        "Hutchinson's trace estimator is unbiased: its mean NLL estimate over noise draws "
        "matches the exact trace (within 3 standard errors)",
        "Sec. 3.1: unbiased stochastic estimate of log-density",
        f"mean of {n_draws} estimates {h_mean:.4f} ± {h_se:.4f} (s.e.) vs exact {h_exact:.4f}",
        check(gap, "<=", 3 * h_se, "|mean - exact|", "3 s.e.")))
    e8 = runs_["8gaussians"]
    claims.append(claim(
        "Training with the Hutchinson estimator reaches a test NLL close to exact-trace "
        f"training (within {MARGIN} nats)",
        "Tab. 1/2: FFJORD trains with the stochastic trace at no loss in quality",
        f"test NLL (scored with the exact trace) Hutchinson {hutch.test_nll:.3f} vs exact "
        f"{e8.test_nll:.3f}",
        check(hutch.test_nll - e8.test_nll, "<", MARGIN, "Hutchinson - exact")))

    rows = [[n, f"{runs_[n].test_nll:.3f}", f"{floors[n]:.3f}", f"{runs_[n].test_nll - floors[n]:.3f}",
             f"{runs_[n].eval_nfe:.0f}", f"{runs_[n].train_s:.1f}"] for n in DENSITIES]
    rows.append(["8gaussians (Hutchinson)", f"{hutch.test_nll:.3f}", f"{floors['8gaussians']:.3f}",
                 f"{hutch.test_nll - floors['8gaussians']:.3f}", f"{hutch.eval_nfe:.0f}",
                 f"{hutch.train_s:.1f}"])
    table = md_table(["Density", "Test NLL (nats)", "Analytic optimum", "Gap",
                      "NFE (joint test solve)", "Train time (s, excl. compile and evals)"], rows)
    c = runs.config("8gaussians")
    f, sv = c.model.field, c.solver
    settings = {
        "configs": f"nodekit/configs/papers/{NAME}/" + ", ".join(f"{n}.yaml" for n in runs.names),
        "model": f"CNF, MLP field {f.depth}x{f.width} {f.activation} with t as input, "
                 f"T = {c.model.cnf.t1:g}",
        "solver": f"{sv.name}, rtol = atol = {sv.rtol:g}, backprop through the solver "
                  f"({sv.adjoint}), the batch as one joint solve",
        "training": f"Adam lr {c.optimizer.learning_rate:g}, batch {c.train.batch_size} fresh "
                    "samples per step, " + ", ".join(f"{steps[n]} steps ({n})" for n in DENSITIES),
        "test set": f"{c.data.n_test} samples per density (seed {c.data.test_seed}), scored "
                    "with the exact trace (each run's final evaluation)",
        "Hutchinson": f"{runs.config(HUTCH).model.cnf.noise} noise, one vector per sample per "
                      "solve",
    }
    notes = [
        "The analytic optimum is the true density's own mean negative log-density on the "
        "test samples (nodekit.data.toy2d_log_density); no model can beat it in expectation.",
        "FFJORD's toy runs use 3 hidden layers of 64, a learnable end time and 10k+ "
        "iterations; here 2 hidden layers, T = 1 and "
        + ", ".join(f"{steps[n]} iterations ({n})" for n in DENSITIES) + " on a CPU.",
        "In 2-D the exact trace costs 2 Jacobian-vector products per evaluation and "
        "Hutchinson's one: the estimator's real advantage (O(1) instead of O(D) in the "
        "dimension) does not show at this size, so only unbiasedness and trained quality "
        "are checked.",
        "circles (two nested rings) is the hardest of these densities for a flow from one "
        "Gaussian: it must open a hole and split the mass into two rings. After 1000 "
        "iterations the flow had only learned a blurred single ring (0.48 nats from the "
        "optimum); it trains 4000 here (a schedule set after that run missed, and said so), "
        "and its solves grow several-fold in NFE as the rings separate (see the NFE column).",
    ]
    notes.append("Each CNF is one `nodekit.train` run; test NLLs and NFE are the runs' "
                 "final evaluations (metrics.jsonl), the curves their training rows, and the "
                 "Hutchinson estimates and figures use the final checkpoints. Each starts "
                 "from the weights this experiment's earlier Python loop drew, "
                 "jax.random.PRNGKey(0) (`model.init_seed: 0`), and trains on the same fresh "
                 "samples per step (data.seed 0); the Hutchinson run's noise vectors come "
                 "from the run's seed and differ from the earlier loop's.")
    if quick:
        notes.append(f"Quick mode trains {steps['circles']} steps: far from converged, so the "
                     "optimum-gap claims are not expected to hold.")
    metrics = {
        "test_nll": {n: runs_[n].test_nll for n in DENSITIES},
        "optimum_nll": floors,
        "hutchinson_test_nll": hutch.test_nll,
        "hutchinson_estimate": {"mean": h_mean, "se": h_se, "exact": h_exact},
        "eval_nfe": {n: runs_[n].eval_nfe for n in DENSITIES},
        "train_s": {n: runs_[n].train_s for n in DENSITIES} | {"8gaussians_hutchinson": hutch.train_s},
    }
    return write_report(
        workdir, name=NAME, title="grathwohl2019-ffjord: CNFs on toy 2-D densities",
        paper=PAPER, quick=quick, claims=claims, settings=settings, notes=notes,
        figures=figs, metrics=metrics, tables=[("Measured", table)], timings=timings(runs),
        batch_mode=batch_mode_text(c.solver.batch_mode),
    )
