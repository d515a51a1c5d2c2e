"""`kelly2020-taynode`: FFJORD with the Taylor-mode R_2 penalty (TayNODE; Kelly,
Bettencourt, Johnson, Duvenaud 2020): NFE at test time against loss."""

from __future__ import annotations

from pathlib import Path

from . import _density as D
from ._common import batch_mode_text, check, claim, figure, md_table, save, write_report

NAME = "kelly2020-taynode"
PAPER = ("Kelly, Bettencourt, Johnson, Duvenaud 2020, Learning Differential Equations that "
         "are Easy to Solve (NeurIPS)")
CLAIM = "the R_2 Taylor penalty trades a little NLL for far fewer NFE at test time"

DENSITY = "2spirals"
ORDER = 2
#: NLL difference (nats) that still counts as "a little".
MARGIN = 0.1


def run(workdir: Path, quick: bool) -> Path:
    from .._regularisers import TaylorRK

    workdir = Path(workdir)
    steps = 150 if quick else 1000
    lambdas = (0.01,) if quick else (0.003, 0.01, 0.03)
    main = 0.01
    variants = [("FFJORD", ())] + [(f"R2 λ={lam:g}", (TaylorRK(lam, order=ORDER),))
                                   for lam in lambdas]
    runs, figs, timings = D.regularisation_study(workdir, DENSITY, variants, steps=steps)
    base = runs["FFJORD"]
    reg = runs[f"R2 λ={main:g}"]
    saving = 1 - reg.eval_nfe / base.eval_nfe

    labels = list(runs)
    fig, axes = figure()
    ax = axes[0, 0]
    ax.plot([runs[k].eval_nfe for k in labels], [runs[k].test_nll for k in labels], "o-")
    for k in labels:
        ax.annotate(k, (runs[k].eval_nfe, runs[k].test_nll), fontsize=8)
    ax.set_xlabel("NFE (joint test solve)")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(f"{DENSITY}: NFE at test time against loss", fontsize=9)
    ax.grid(alpha=0.3)
    figs.insert(0, save(fig, workdir / "nfe_vs_nll.png"))

    lam_nfe = [runs[k].eval_nfe for k in labels]
    claims = [
        claim(f"The R_{ORDER} penalty (λ = {main:g}) makes the trained flow cheaper to solve",
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
    rows = [[k, f"{r.test_nll:.3f}", f"{r.eval_nfe:.0f}", f"{r.fit.series('nfe').mean():.1f}",
             f"{r.train_s:.1f}", f"{r.train_s / max(r.steps - 1, 1):.4f}"] for k, r in runs.items()]
    table = md_table(["Model", "Test NLL (nats)", "NFE (joint test solve)",
                      "Mean NFE per training batch", "Train time (s, excl. compile)", "s / step"],
                     rows)
    settings = {
        "data": f"{DENSITY} toy density, fresh batch of {D.BATCH} per step, {D.N_TEST} test samples",
        "model": f"CNF (FFJORD), MLP field {D.DEPTH}x{D.WIDTH} tanh, T = 1, exact trace",
        "solver": f"tsit5, rtol = atol = {D.TOL:g}, backprop through the solver",
        "TayNODE": f"R_{ORDER} = ∫ ||d^{ORDER}y/dt^{ORDER}||² dt (Taylor mode, integrated in the "
                   "same solve by the trapezoid rule on the solver's steps, nodekit's default "
                   f"quadrature), λ ∈ {{{', '.join(f'{lam:g}' for lam in lambdas)}}}",
        "training": f"Adam lr {D.LR:g}, {steps} steps, one seed per λ",
    }
    notes = [
        "TayNODE's results are on MNIST classification, latent ODEs and FFJORD on MNIST; "
        "this is the same penalty on a 2-D toy density (the issue's pilot saw about 50% "
        "fewer steps with R_2 on digits).",
        "The penalty is on the state's second total time derivative only; FFJORD's "
        "log-density integral is not penalised (as in the paper).",
    ]
    if quick:
        notes.append(f"Quick mode: {steps} steps and one λ; the trade-off curve needs the full run.")
    metrics = {k: {"test_nll": r.test_nll, "eval_nfe": r.eval_nfe,
                   "train_nfe_mean": float(r.fit.series("nfe").mean()), "train_s": r.train_s}
               for k, r in runs.items()}
    return write_report(
        workdir, name=NAME, title="kelly2020-taynode: Taylor-mode regularised FFJORD",
        paper=PAPER, quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table)], timings=timings,
        batch_mode=batch_mode_text(D.MODE),
    )
