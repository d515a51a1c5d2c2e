"""`dupont2019-anode`: neural ODEs cannot represent some functions; one augmented
dimension fixes it and keeps the solves cheap (Dupont, Doucet and Teh 2019)."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._common import (
    Timer,
    batch_mode_text,
    check,
    claim,
    figure,
    fit,
    head_mean,
    save,
    tail_mean,
    write_report,
)

NAME = "dupont2019-anode"
PAPER = "Dupont, Doucet, Teh 2019, Augmented Neural ODEs (NeurIPS)"
CLAIM = "NODE cannot fit g(x) = -x on the line, ANODE can; NODE's NFE grows, ANODE's stays lower"

MODE = "joint"
TOL = 1e-5


# ----------------------------------------------------------------- 1-D g function


def _g1d_loss(node, batch, key):
    """MSE of the flow's own end state `h(1)_0` to the targets (no readout)."""
    x, y = batch
    sol = node.solve_batch(jnp.array([0.0, 1.0]), x, mode="vmap", throw=False)
    pred = sol.ys[:, -1, 0]
    return jnp.mean((pred - y) ** 2), {"nfe": jnp.mean(sol.stats.nfe).astype(jnp.float32)}


def _g1d(augment_dim: int, steps: int, seed: int):
    from .._fields import MLPField
    from .._neural_ode import NeuralODE
    from ..data import anode_g1d

    x, y = anode_g1d()
    key = jax.random.PRNGKey(seed)
    node = NeuralODE(MLPField(1 + augment_dim, 32, 1, activation="relu", key=key),
                     rtol=1e-3, atol=1e-3, augment_dim=augment_dim)
    res = fit(node, _g1d_loss, lambda s: (x, y), steps=steps, learning_rate=1e-2, key=key)
    ts = jnp.linspace(0.0, 1.0, 50)
    paths = np.asarray(jax.vmap(lambda x0: res.model(ts, x0))(jnp.asarray(x)))
    return res, np.asarray(ts), paths


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


# ----------------------------------------------------------------- concentric spheres


def _spheres_loss(model, batch, key):
    from ..models import anode_loss

    return anode_loss(model, batch[0], batch[1], mode=MODE)


@eqx.filter_jit
def _spheres_eval(model, x, y):
    from ..models import anode_loss

    return anode_loss(model, x, y, mode="vmap")


def _spheres(augment_dim: int, seed: int, epochs: int, train, test, batch_size: int):
    from ..data import batch_indices
    from ..models import ANODEClassifier

    key = jax.random.PRNGKey(seed)
    model = ANODEClassifier(2, augment_dim, 32, 1, activation="relu", rtol=TOL, atol=TOL,
                            key=key)
    per_epoch = len(train) // batch_size

    def batch(s):
        i = batch_indices(seed, s, len(train), batch_size)
        return train.x[i], train.y[i]

    res = fit(model, _spheres_loss, batch, steps=epochs * per_epoch, learning_rate=1e-3,
              key=key)
    test_loss, aux = _spheres_eval(res.model, jnp.asarray(test.x), jnp.asarray(test.y))
    by_epoch = lambda k: res.series(k)[: epochs * per_epoch].reshape(epochs, per_epoch).mean(1)
    return {
        "nfe": by_epoch("nfe"),
        "loss": by_epoch("loss"),
        "test_loss": float(test_loss),
        "test_accuracy": float(aux["accuracy"]),
        "train_s": res.train_s,
    }


def run(workdir: Path, quick: bool) -> Path:
    from ..data import anode_g1d, concentric_spheres

    workdir = Path(workdir)
    g_steps = 200 if quick else 400
    seeds = (0,) if quick else (0, 1, 2)
    epochs = 40 if quick else 60
    n_points, batch_size = 1000, 64

    with Timer() as t_g:
        node_res, ts, node_paths = _g1d(0, g_steps, 0)
        anode_res, _, anode_paths = _g1d(1, g_steps, 0)
    node_mse = tail_mean(node_res.series("loss"), 0.05)
    anode_mse = tail_mean(anode_res.series("loss"), 0.05)
    _, targets = anode_g1d()
    figs = [_plot_g1d(workdir / "g1d_flows.png", ts, node_paths, anode_paths, targets)]

    train, test = concentric_spheres(n_points, dim=2, seed=0)
    runs: dict[int, list[dict]] = {0: [], 1: []}
    with Timer() as t_s:
        for seed in seeds:
            for aug in (0, 1):
                runs[aug].append(_spheres(aug, seed, epochs, train, test, batch_size))
    mean = lambda aug, k: np.mean([r[k] for r in runs[aug]], axis=0)
    nfe = {aug: mean(aug, "nfe") for aug in (0, 1)}
    loss = {aug: mean(aug, "loss") for aug in (0, 1)}
    early = {aug: head_mean(nfe[aug], 0.1) for aug in (0, 1)}
    late = {aug: tail_mean(nfe[aug], 0.1) for aug in (0, 1)}
    growth = {aug: late[aug] / early[aug] for aug in (0, 1)}
    test_loss = {aug: mean(aug, "test_loss") for aug in (0, 1)}
    test_acc = {aug: mean(aug, "test_accuracy") for aug in (0, 1)}

    epochs_x = np.arange(1, epochs + 1)
    fig, axes = figure(2, 1, size=(4.0, 3.2))
    for aug, label in ((0, "NODE"), (1, "ANODE (+1 dim)")):
        for r in runs[aug]:
            axes[0, 0].plot(epochs_x, r["nfe"], color=f"C{aug}", lw=0.6, alpha=0.35)
            axes[0, 1].plot(epochs_x, r["loss"], color=f"C{aug}", lw=0.6, alpha=0.35)
        axes[0, 0].plot(epochs_x, nfe[aug], color=f"C{aug}", lw=1.8, label=label)
        axes[0, 1].plot(epochs_x, loss[aug], color=f"C{aug}", lw=1.8, label=label)
    axes[0, 0].set_title(f"NFE per batch (joint solve, tol {TOL:g})", fontsize=9)
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
        ["NODE", f"{node_mse:.3f}", f"{early[0]:.1f}", f"{late[0]:.1f}",
         f"{tail_mean(loss[0], 0.1):.4f}", f"{test_loss[0]:.4f}", f"{test_acc[0]:.3f}"],
        ["ANODE (+1)", f"{anode_mse:.2e}", f"{early[1]:.1f}", f"{late[1]:.1f}",
         f"{tail_mean(loss[1], 0.1):.4f}", f"{test_loss[1]:.4f}", f"{test_acc[1]:.3f}"],
    ]
    from ._common import md_table

    table = md_table(["Model", "g1d MSE", "spheres NFE (first 10% of epochs)",
                      "spheres NFE (last 10%)", "spheres train MSE (last 10%)",
                      "spheres test MSE", "spheres test acc."], table_rows)
    settings = {
        "g1d": f"x = ±1 -> ∓1, flow on R^(1+aug), MLP 1x32 ReLU, tsit5 rtol = atol = 1e-3, "
               f"prediction = h(1)_0 (no readout), Adam lr 1e-2, {g_steps} steps",
        "spheres data": f"concentric_spheres(n={n_points}, dim=2, r = 0.5 / 1.0 / 1.5), "
                        f"{len(train)} train / {len(test)} test",
        "spheres model": f"ANODEClassifier: MLP 1x32 ReLU field, linear readout, "
                         f"tsit5 rtol = atol = {TOL:g}, T = 1",
        "spheres training": f"Adam lr 1e-3, batch {batch_size}, {epochs} epochs, "
                            f"seeds {list(seeds)}",
        "NFE": "forward NFE per batch (joint solve), averaged over each epoch",
    }
    notes = [
        "g1d: ANODEClassifier's learned linear readout could map h -> -h and solve the "
        "1-D task without any crossing, so (as in the paper's Fig. 2/3) the flow's own end "
        "state h(1)_0 is the prediction here.",
        "Spheres: in 2-D a NODE can still fit the data by squeezing the flow through the "
        "gap between the regions; that is exactly what makes its field stiff and its NFE "
        "grow (the paper's point), so NODE's loss also falls, only more slowly.",
        f"Scale: {n_points} points and {epochs} epochs on a CPU, versus the paper's larger "
        "data sets and longer training; the paper's NFE figures are from torchdiffeq's "
        "dopri5 on the whole batch, so NFE is counted per joint batch solve here too.",
    ]
    if quick:
        notes.append("Quick mode: one seed and 40 epochs; the NFE gap opens late in "
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
        metrics=metrics, tables=[("Measured", table)],
        timings={"g1d (2 models, incl. compile)": t_g.s,
                 f"spheres ({2 * n_seeds} runs, incl. compile)": t_s.s},
        batch_mode=batch_mode_text(MODE) + " for the spheres; g1d: vmap (2 points)",
    )
