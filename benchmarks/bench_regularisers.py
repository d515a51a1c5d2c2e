"""What the regularisers cost per training step, and what they buy.

1. **Cost** (issue 3): one training step (`value_and_grad` of the final-state MSE plus the
   weighted penalties, an Adam update, all in one `eqx.filter_jit`) with each
   regulariser, as a ratio to the unregularised step measured interleaved in the same
   process. Grid: MLP field of width 64 and 256 (depth 2, tanh), state dim 2, 16 and 64,
   batch 256 solved as one joint state (the regularisers still see one sample each).
   Fixed-step RK4 (10 steps on [0, 1]) so every row makes the same number of field
   evaluations and the ratio isolates the regulariser's own work. Rows: none, kinetic,
   Jacobian Frobenius (Hutchinson, one JVP), Taylor R_2 (jet), exact Jacobian Frobenius
   (jacfwd; state dim <= 16 only), all with the default trapezoid quadrature (the
   integrands once per step), and Hutchinson and exact Frobenius again with
   `quadrature="augmented"` (integrals in the ODE state, evaluated at every stage).
   Targets: kinetic <= 1.2x, Hutchinson <= 1.7x, Taylor K=2 <= 2.5x, exact Frobenius
   (dim <= 16) <= 3x.
2. **Effect** (issue 3): the spiral of `configs/spiral.yaml` trained with and without
   RNODE regularisation (kinetic + Hutchinson Jacobian Frobenius, weight 0.01 each),
   same seed, steps and tolerance (`nodekit.train`); then the whole 1000-point
   trajectory solved at the trained tolerance: NFE and eval loss side by side
   (the target is >= 2x fewer NFE at a loss within 10 %).

    python -m benchmarks.bench_regularisers [--quick] [--write] [--only cost,effect]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import emit, interleaved, median, ms, table  # noqa: E402

TARGETS = {"kinetic": 1.2, "hutchinson": 1.7, "taylor K=2": 2.5, "exact Frobenius": 3.0}


def regulariser_rows(dim: int, exact_max_dim: int):
    from nodekit._regularisers import JacobianFrobenius, KineticEnergy, TaylorRK

    trap, aug = "trapezoid", "augmented"
    rows = [
        ("none", (), trap),
        ("kinetic", (KineticEnergy(0.01),), trap),
        ("hutchinson", (JacobianFrobenius(0.01, "hutchinson"),), trap),
        ("taylor K=2", (TaylorRK(0.01, 2),), trap),
    ]
    if dim <= exact_max_dim:
        rows.append(("exact Frobenius", (JacobianFrobenius(0.01, "exact"),), trap))
    rows.append(("hutchinson (augmented)", (JacobianFrobenius(0.01, "hutchinson"),), aug))
    if dim <= exact_max_dim:
        rows.append(("exact Frobenius (augmented)", (JacobianFrobenius(0.01, "exact"),), aug))
    return rows


def make_step(regs, ts, solve_kwargs, optim, mode, quadrature="trapezoid"):
    from nodekit._regularisers import regularised_odeint_batch, total_penalty

    @eqx.filter_jit
    def step(field, opt_state, y0s, target, key):
        def loss_fn(field):
            ys, penalties, _ = regularised_odeint_batch(
                field, y0s, ts, regs, key=key, mode=mode, quadrature=quadrature,
                **solve_kwargs)
            mse = jnp.mean((ys[:, -1] - target) ** 2)
            return mse + (total_penalty(regs, penalties) if regs else 0.0)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(field)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(field, eqx.is_inexact_array))
        return eqx.apply_updates(field, updates), opt_state, loss

    return step


def cost_one(width, dim, batch, steps, repeats, exact_max_dim, mode):
    import nodekit

    field = nodekit.MLPField(dim, width, 2, key=jax.random.PRNGKey(0))
    y0s = jax.random.normal(jax.random.PRNGKey(1), (batch, dim))
    target = jax.random.normal(jax.random.PRNGKey(2), (batch, dim))
    ts = jnp.array([0.0, 1.0])
    solve_kwargs = dict(solver="rk4", dt0=1.0 / steps, throw=False)
    optim = optax.adam(1e-3)
    opt_state = optim.init(eqx.filter(field, eqx.is_inexact_array))
    calls, firsts = {}, {}
    key = jax.random.PRNGKey(3)
    for name, regs, quadrature in regulariser_rows(dim, exact_max_dim):
        step = make_step(regs, ts, solve_kwargs, optim, mode, quadrature)
        t0 = time.perf_counter()
        jax.block_until_ready(step(field, opt_state, y0s, target, key))
        firsts[name] = time.perf_counter() - t0
        calls[name] = (lambda s=step: jax.block_until_ready(s(field, opt_state, y0s, target, key)))
    times = interleaved(calls, repeats, warmup=1)
    med = {k: median(v) for k, v in times.items()}
    rows = []
    for name in calls:
        ratio = med[name] / med["none"]
        tgt = TARGETS.get(name.removesuffix(" (augmented)"))
        verdict = "-" if tgt is None else (f"<= {tgt:g}: met" if ratio <= tgt else f"<= {tgt:g}: MISSED")
        rows.append([width, dim, name, ms(med[name]), f"{ratio:.2f}x", verdict, f"{firsts[name]:.1f}"])
    return rows


def cost(quick, repeats, mode):
    widths = [16] if quick else [64, 256]
    dims = [2] if quick else [2, 16, 64]
    batch = 16 if quick else 256
    steps = 4 if quick else 10
    rows = []
    for width in widths:
        for dim in dims:
            rows += cost_one(width, dim, batch, steps, repeats, 16, mode)
            print(table(["width", "dim", "regulariser", "step (ms)", "ratio", "target", "first call (s)"],
                        rows[-7:]), flush=True)
    head = (f"Cost of one training step with each regulariser (batch {batch} as one {mode} solve, "
            f"MLP depth 2 tanh, RK4 x {steps} fixed steps so NFE is equal in every row, Adam; "
            f"median of {repeats} interleaved calls per configuration; 'ratio' = step / the "
            "unregularised step of the same width and dim in the same run; 'first call' = "
            "trace + compile + one run).\n\n")
    return head + table(["width", "dim", "regulariser", "step (ms)", "ratio", "target", "first call (s)"], rows)


def _last_eval(workdir):
    ev, nfe = None, []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "eval_loss" in row:
                ev = row
            if row.get("nfe_forward") is not None:
                nfe.append(row["nfe_forward"])
    return ev, nfe


def effect(quick):
    import nodekit
    from nodekit._config import load_yaml
    from benchmarks._common import ROOT

    steps = 40 if quick else 1500
    variants = [
        ("unregularised", None),
        ("kinetic 0.01 + Jacobian (Hutchinson) 0.01", {"kinetic": 0.01, "jacobian": {"weight": 0.01}}),
    ]
    rows, summaries = [], {}
    for name, reg in variants:
        raw = load_yaml(ROOT / "configs" / "spiral.yaml")
        raw["train"].update({"steps": steps, "eval_every": steps, "checkpoint_every": steps,
                             "progress": False, "compile_cache": False})
        raw.pop("regularisation", None)
        if reg:
            raw["regularisation"] = reg
        with tempfile.TemporaryDirectory() as wd:
            t0 = time.perf_counter()
            summary = nodekit.train(raw, wd, progress=False)
            wall = time.perf_counter() - t0
            ev, nfe = _last_eval(wd)
        tail = nfe[-max(1, len(nfe) // 10):]
        summaries[name] = (ev, summary)
        rows.append([name, f"{ev['eval_nfe']:.0f}", f"{ev['eval_loss']:.4f}",
                     f"{sum(tail) / len(tail):.1f}", f"{summary['final_loss']:.4f}",
                     f"{1e3 * summary.get('step_time_median_s', float('nan')):.2f}"
                     if summary.get("step_time_median_s") else "-", f"{wall:.0f}"])
    (e0, _), (e1, _) = summaries[variants[0][0]], summaries[variants[1][0]]
    nfe_ratio = e0["eval_nfe"] / e1["eval_nfe"]
    loss_change = e1["eval_loss"] / e0["eval_loss"] - 1
    met = nfe_ratio >= 2 and loss_change <= 0.10
    head = (f"Effect on the spiral (`configs/spiral.yaml`: dopri5 rtol 1e-7 atol 1e-9, Adam 3e-3 "
            f"cosine, batch 20 x 10 points, {steps} steps, seed 0), trained with and without "
            "regularisation; then the whole trajectory (1000 points on [0, 25]) solved at the "
            "trained tolerance. 'eval NFE' and 'eval loss' (mean |error|) from that final solve; "
            "'train NFE' = mean forward NFE of a training solve over the last 10 % of steps.\n\n")
    body = head + table(["training", "eval NFE", "eval loss", "train NFE (last 10 %)", "final train loss",
                         "step (ms)", "run (s)"], rows)
    body += (f"\n\n- NFE ratio unregularised / regularised: {nfe_ratio:.2f}x; eval loss change "
             f"{100 * loss_change:+.1f} %. Target (>= 2x at a loss within 10 %): "
             f"{'met' if met else 'MISSED'}.")
    return body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny configuration and a 40-step effect run")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--mode", default="joint", choices=["joint", "vmap"], help="batch mode of the cost rows")
    p.add_argument("--only", default="cost,effect", help="comma-separated sections")
    a = p.parse_args(argv)
    repeats = a.repeats or (3 if a.quick else 9)
    only = set(a.only.split(","))
    parts = []
    if "cost" in only:
        parts.append(cost(a.quick, repeats, a.mode))
    if "effect" in only:
        parts.append(effect(a.quick))
    emit("regularisers", "Regulariser cost and effect (bench_regularisers.py)", "\n\n".join(parts),
         a.write, a.quick)


if __name__ == "__main__":
    main()
