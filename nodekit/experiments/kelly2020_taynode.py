"""`kelly2020-taynode`: FFJORD with the Taylor-mode R_2 penalty (TayNODE; Kelly,
Bettencourt, Johnson, Duvenaud 2020): NFE at test time against loss.

Runs (`nodekit/configs/papers/kelly2020-taynode/`): `ffjord` and `r2-3e-3`, `r2-1e-2`,
`r2-3e-2` (the penalty's weight λ; quick mode: `ffjord` and `r2-1e-2` only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _density as D
from ._common import batch_mode_text, check, claim, figure, md_table, save, write_report
from ._runs import RunSpec, Runs, reproduce, timings

NAME = "kelly2020-taynode"
PAPER = ("Kelly, Bettencourt, Johnson, Duvenaud 2020, Learning Differential Equations that "
         "are Easy to Solve (NeurIPS)")
CLAIM = "the R_2 Taylor penalty trades a little NLL for far fewer NFE at test time"

#: NLL difference (nats) that still counts as "a little".
MARGIN = 0.1
QUICK = ("train.steps=150", "train.eval_every=50", "train.checkpoint_every=50")
#: The main run (λ = 0.01) and the λ sweep around it.
MAIN = "r2-1e-2"
RUNS = (RunSpec("ffjord", quick=QUICK), RunSpec("r2-3e-3", quick=QUICK, in_quick=False),
        RunSpec(MAIN, quick=QUICK), RunSpec("r2-3e-2", quick=QUICK, in_quick=False))


def run(workdir: Path, quick: bool = False, **options) -> Path:
    """Train what is missing of this experiment's runs and write its report."""
    return reproduce(NAME, RUNS, report, workdir, quick, **options)


def report(runs: Runs, workdir: Path, quick: bool) -> Path:
    """The claims, computed from the runs' files, and the figures."""
    workdir = Path(workdir)
    lam = {n: runs.config(n).regularisation.taylor.weight for n in runs.names if n != "ffjord"}
    order = runs.config(MAIN).regularisation.taylor.order
    label = {"ffjord": "FFJORD", **{n: f"R{order} λ={w:g}" for n, w in lam.items()}}
    names = ["ffjord"] + sorted(lam, key=lam.get)
    labels = {n: label[n] for n in names}
    figs = D.regularisation_figures(runs, workdir, labels)
    res = {labels[n]: D.density_run(runs, n, labels[n]) for n in names}
    base, reg = res["FFJORD"], res[labels[MAIN]]
    saving = 1 - reg.eval_nfe / base.eval_nfe
    lambdas = [lam[n] for n in names[1:]]
    main = lam[MAIN]
    steps = runs.config("ffjord").train.steps
    train_nfe = {labels[n]: float(np.nanmean(runs.series(n, "nfe_forward"))) for n in names}

    labels = list(res)
    fig, axes = figure()
    ax = axes[0, 0]
    ax.plot([res[k].eval_nfe for k in labels], [res[k].test_nll for k in labels], "o-")
    for k in labels:
        ax.annotate(k, (res[k].eval_nfe, res[k].test_nll), fontsize=8)
    ax.set_xlabel("NFE (joint test solve)")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(f"{runs.config(MAIN).data.distribution}: NFE at test time against loss",
                 fontsize=9)
    ax.grid(alpha=0.3)
    figs.insert(0, save(fig, workdir / "nfe_vs_nll.png"))

    lam_nfe = [res[k].eval_nfe for k in labels]
    claims = [
        claim(f"The R_{order} penalty (λ = {main:g}) makes the trained flow cheaper to solve",
              "Fig. 1/Tab. 2: R_2/R_3 regularisation cuts NFE (FFJORD on MNIST: ~1.7x fewer)",
              f"NFE of the joint test solve: FFJORD {base.eval_nfe:.0f}, TayNODE "
              f"{reg.eval_nfe:.0f} ({100 * saving:.0f}% fewer)",
              check(reg.eval_nfe, "<", base.eval_nfe, "TayNODE NFE", "FFJORD NFE")),
        claim(f"at a small cost in likelihood (within {MARGIN} nats)",
              "Tab. 2: slightly worse bits/dim (e.g. 0.96 -> 1.04 on MNIST)",
              f"test NLL FFJORD {base.test_nll:.3f}, TayNODE {reg.test_nll:.3f} nats",
              check(reg.test_nll - base.test_nll, "<", MARGIN, "TayNODE - FFJORD")),
        claim("Larger λ trades more likelihood for fewer NFE (the NFE falls as λ grows)",
              "Fig. 5: NFE against loss traces a trade-off as λ varies",
              "NFE for λ = 0, " + ", ".join(f"{lam:g}" for lam in lambdas) + ": "
              + ", ".join(f"{n:.0f}" for n in lam_nfe),
              *[check(lam_nfe[i + 1], "<=", lam_nfe[i], f"NFE({labels[i + 1]})",
                      f"NFE({labels[i]})") for i in range(len(labels) - 1)],
              check(lam_nfe[-1], "<", lam_nfe[0], f"NFE({labels[-1]})", f"NFE({labels[0]})")),
    ]
    rows = [[k, f"{r.test_nll:.3f}", f"{r.eval_nfe:.0f}", f"{train_nfe[k]:.1f}",
             f"{r.train_s:.1f}", f"{r.train_s / max(r.steps - 1, 1):.4f}"] for k, r in res.items()]
    table = md_table(["Model", "Test NLL (nats)", "NFE (joint test solve)",
                      "Mean NFE per training batch", "Train time (s, excl. compile and evals)",
                      "s / step"], rows)
    c = runs.config(MAIN)
    f, sv = c.model.field, c.solver
    settings = {
        "configs": f"nodekit/configs/papers/{NAME}/" + ", ".join(f"{n}.yaml" for n in names),
        "data": f"{c.data.distribution} toy density, fresh batch of {c.train.batch_size} per "
                f"step, {c.data.n_test} test samples",
        "model": f"CNF (FFJORD), MLP field {f.depth}x{f.width} {f.activation}, T = "
                 f"{c.model.cnf.t1:g}, {c.model.cnf.trace} trace",
        "solver": f"{sv.name}, rtol = atol = {sv.rtol:g}, backprop through the solver",
        "TayNODE": f"R_{order} = ∫ ||d^{order}y/dt^{order}||² dt (Taylor mode, integrated in the "
                   "same solve by the trapezoid rule on the solver's steps, nodekit's default "
                   f"quadrature), λ ∈ {{{', '.join(f'{lam:g}' for lam in lambdas)}}}",
        "training": f"Adam lr {c.optimizer.learning_rate:g}, {steps} steps, one seed per λ",
    }
    notes = [
        "TayNODE's results are on MNIST classification, latent ODEs and FFJORD on MNIST; "
        "this is the same penalty on a 2-D toy density (the issue's pilot saw about 50% "
        "fewer steps with R_2 on digits).",
        "The penalty is on the state's second total time derivative only; FFJORD's "
        "log-density integral is not penalised (as in the paper).",
        "Each run starts from the weights this experiment's earlier Python loop drew, "
        "jax.random.PRNGKey(0) (`model.init_seed: 0`), and trains on the same fresh "
        "samples per step (data.seed 0).",
        "Each model is one `nodekit.train` run; test NLL and NFE are the runs' final "
        "evaluations, the training NLL, NFE and step times their metrics.jsonl rows.",
    ]
    if quick:
        notes.append(f"Quick mode: {steps} steps and one λ; the trade-off curve needs the full run.")
    metrics = {k: {"test_nll": r.test_nll, "eval_nfe": r.eval_nfe,
                   "train_nfe_mean": train_nfe[k], "train_s": r.train_s}
               for k, r in res.items()}
    return write_report(
        workdir, name=NAME, title="kelly2020-taynode: Taylor-mode regularised FFJORD",
        paper=PAPER, quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table)], timings=timings(runs),
        batch_mode=batch_mode_text(sv.batch_mode),
    )
