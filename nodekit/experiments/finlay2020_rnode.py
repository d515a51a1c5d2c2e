"""`finlay2020-rnode`: FFJORD with and without kinetic-energy + Jacobian-norm
regularisation (RNODE; Finlay, Jacobsen, Nurbekyan, Oberman 2020).

Runs (`nodekit/configs/papers/finlay2020-rnode/`): `ffjord` and `rnode`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _density as D
from ._common import batch_mode_text, check, claim, md_table, smooth, write_report
from ._runs import RunSpec, Runs, reproduce, timings

NAME = "finlay2020-rnode"
PAPER = ("Finlay, Jacobsen, Nurbekyan, Oberman 2020, How to Train Your Neural ODE: the "
         "World of Jacobian and Kinetic Regularization (ICML)")
CLAIM = "kinetic + Jacobian regularisation cuts NFE and training time at similar NLL"

#: NLL difference (nats) that still counts as "similar likelihood".
MARGIN = 0.1
QUICK = ("train.steps=150", "train.eval_every=50", "train.checkpoint_every=50")
RUNS = (RunSpec("ffjord", quick=QUICK), RunSpec("rnode", quick=QUICK))
LABELS = {"ffjord": "FFJORD", "rnode": "RNODE"}


def run(workdir: Path, quick: bool = False, **options) -> Path:
    """Train what is missing of this experiment's runs and write its report."""
    return reproduce(NAME, RUNS, report, workdir, quick, **options)


def report(runs: Runs, workdir: Path, quick: bool) -> Path:
    """The claims, computed from the runs' files, and the figures."""
    workdir = Path(workdir)
    figs = D.regularisation_figures(runs, workdir, LABELS)
    res = {LABELS[n]: D.density_run(runs, n, LABELS[n]) for n in LABELS}
    base, reg = res["FFJORD"], res["RNODE"]
    steps = runs.config("ffjord").train.steps
    # the loss level both runs are timed to: the unregularised run's final NLL + margin
    level = float(smooth(runs.series("ffjord", "loss_task"), 25)[-1]) + MARGIN
    t_to = {LABELS[n]: D.time_to_nll(runs, n, level) for n in LABELS}
    t_base, t_reg = t_to["FFJORD"], t_to["RNODE"]
    train_nfe = {LABELS[n]: float(np.nanmean(runs.series(n, "nfe_forward"))) for n in LABELS}
    saving = 1 - reg.eval_nfe / base.eval_nfe

    claims = [
        claim("RNODE needs fewer function evaluations to solve the trained flow",
              "Tab. 1/Fig. 1: RNODE cuts NFE several-fold (2.8x fewer on MNIST)",
              f"NFE of the joint test solve: FFJORD {base.eval_nfe:.0f}, RNODE {reg.eval_nfe:.0f} "
              f"({100 * saving:.0f}% fewer)",
              check(reg.eval_nfe, "<", base.eval_nfe, "RNODE NFE", "FFJORD NFE")),
        claim(f"at a similar likelihood (within {MARGIN} nats)",
              "Tab. 1: similar bits/dim (e.g. MNIST 0.97 vs 0.99)",
              f"test NLL FFJORD {base.test_nll:.3f}, RNODE {reg.test_nll:.3f} nats",
              check(reg.test_nll - base.test_nll, "<", MARGIN, "RNODE - FFJORD")),
        claim("RNODE trains with fewer NFE per step",
              "Fig. 4: NFE during training stays low with RNODE",
              f"mean NFE per training batch: FFJORD {train_nfe['FFJORD']:.1f}, RNODE "
              f"{train_nfe['RNODE']:.1f}",
              check(train_nfe["RNODE"], "<", train_nfe["FFJORD"], "RNODE", "FFJORD")),
        claim("and reaches a given training loss sooner (wall time)",
              "Tab. 1: training time 4 days -> 1 day (MNIST, 4 GPUs)",
              f"seconds to a smoothed training NLL of {level:.3f} nats (FFJORD's final + "
              f"{MARGIN}): FFJORD {t_base:.1f}, RNODE {t_reg:.1f}",
              check(t_reg, "<", t_base, "RNODE s", "FFJORD s")),
    ]
    rows = [[k, f"{r.test_nll:.3f}", f"{r.eval_nfe:.0f}", f"{train_nfe[k]:.1f}",
             f"{r.train_s:.1f}", f"{r.train_s / max(r.steps - 1, 1):.4f}",
             f"{t_to[k]:.1f}"] for k, r in res.items()]
    table = md_table(["Model", "Test NLL (nats)", "NFE (joint test solve)",
                      "Mean NFE per training batch", "Train time (s, excl. compile and evals)",
                      "s / step", f"s to NLL {level:.3f}"], rows)
    c = runs.config("rnode")
    f, sv, rg = c.model.field, c.solver, c.regularisation
    settings = {
        "configs": f"nodekit/configs/papers/{NAME}/ffjord.yaml, rnode.yaml",
        "data": f"{c.data.distribution} toy density, fresh batch of {c.train.batch_size} per "
                f"step, {c.data.n_test} test samples",
        "model": f"CNF (FFJORD), MLP field {f.depth}x{f.width} {f.activation}, T = "
                 f"{c.model.cnf.t1:g}, {c.model.cnf.trace} trace",
        "solver": f"{sv.name}, rtol = atol = {sv.rtol:g}, backprop through the solver",
        "RNODE": f"kinetic energy λ_K = {rg.kinetic.weight:g} + Jacobian Frobenius λ_J = "
                 f"{rg.jacobian.weight:g} "
                 "(exact Jacobian in 2-D), integrated in the same solve by the trapezoid "
                 "rule on the solver's steps (nodekit's default quadrature; RNODE's code "
                 "puts them in the ODE state, `quadrature: augmented`)",
        "training": f"Adam lr {c.optimizer.learning_rate:g}, {steps} steps, one seed",
    }
    notes = [
        "RNODE's headline numbers are on MNIST/CIFAR with multi-scale FFJORD; this is the "
        "2-D toy analogue (the issue's pilot: about 40% fewer solver steps at evaluation "
        "for under 0.1 nats).",
        "The Jacobian penalty uses the exact Frobenius norm (2 JVPs in 2-D) instead of "
        "RNODE's Hutchinson estimate: cheaper than noise at this size and deterministic.",
        "Per step, RNODE costs more per function evaluation (the penalties' extra "
        "Jacobian products); whether it is faster overall depends on how many fewer "
        "evaluations it needs, which is what the wall-time claim checks.",
        "Training NLL is the data term only (penalties excluded), so the two curves are "
        "comparable.",
        "Each run starts from the weights this experiment's earlier Python loop drew, "
        "jax.random.PRNGKey(0) (`model.init_seed: 0`), and trains on the same fresh "
        "samples per step (data.seed 0).",
        "Each model is one `nodekit.train` run; test NLL and NFE are the runs' final "
        "evaluations, the training NLL, NFE and step times their metrics.jsonl rows "
        "(training time leaves out the compiling first step and the steps that include an "
        "evaluation, which count at the median step time).",
    ]
    if quick:
        notes.append(f"Quick mode trains {steps} steps; the regularised dynamics have "
                     "barely had time to differ, so none of the claims is expected to "
                     "hold reliably.")
    metrics = {k: {"test_nll": r.test_nll, "eval_nfe": r.eval_nfe, "train_nfe_mean": train_nfe[k],
                   "train_s": r.train_s, "time_to_level_s": t_to[k]}
               for k, r in res.items()}
    metrics["level_nll"] = level
    return write_report(
        workdir, name=NAME, title="finlay2020-rnode: regularised FFJORD (RNODE)", paper=PAPER,
        quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table)], timings=timings(runs),
        batch_mode=batch_mode_text(sv.batch_mode),
    )
