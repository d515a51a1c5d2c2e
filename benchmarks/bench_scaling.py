"""How a nodekit training step scales, and what the adjoints and batch modes cost.

1. **Sweeps** around a base problem (state dim 32, MLP 32 -> 128 -> 32 tanh, batch 64,
   10 save times on [0, 1], targets from a fixed linear ODE, dopri5 rtol 1e-6 atol 1e-8,
   recursive adjoint, joint batch, RMSprop): step time against batch (1 -> 1024), width
   (16 -> 512), state dim (2 -> 128) and number of save points (2 -> 100), with NFE and
   time per NFE. All configurations are compiled first, then timed interleaved.
2. **Memory against solver steps**: the XLA temporary buffer size of the compiled
   gradient (`jax.jit(...).lower(...).compile().memory_analysis()`) of a fixed-step
   Dopri5 solve of N steps (N = 16 -> 4096, `max_steps = N`), batch 64 x dim 32, for the
   `recursive`, `backsolve` and `direct` adjoints.
3. **Batch modes and adjoints**: per-sample (vmap) vs whole-batch (joint) solves, each
   with `recursive` and `backsolve`, on the spiral problem (batch 20, the peer
   benchmark's) and the base problem at batch 256; NFE and the `backsolve / recursive`
   step-time ratio (target <= 3x).

    python -m benchmarks.bench_scaling [--quick] [--write] [--only sweeps,memory,modes]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import CompileEvents, emit, interleaved, median, ms, spiral_raw, table  # noqa: E402

RTOL, ATOL = 1e-6, 1e-8
BASE = dict(dim=32, width=128, batch=64, n_save=10)


def linear_targets(dim, batch, n_save, seed=0):
    import scipy.linalg

    rng = np.random.default_rng(seed)
    m = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    a = (m - m.T) - 0.1 * np.eye(dim)
    ts = np.linspace(0.0, 1.0, n_save)
    y0 = rng.standard_normal((batch, dim))
    target = np.stack([y0 @ scipy.linalg.expm(a * t).T for t in ts], axis=1)
    return ts.astype(np.float32), y0.astype(np.float32), target.astype(np.float32)


class Problem:
    """A compiled nodekit step for one configuration, advancing from a fixed state (every
    timed call does the same work)."""

    def __init__(self, dim, width, batch, n_save, mode="joint", adjoint="recursive"):
        import nodekit

        ts, y0, target = linear_targets(dim, batch, n_save)
        self.batch = {"y0": jnp.asarray(y0), "target": jnp.asarray(target)}
        field = nodekit.MLPField(dim, width, 1, key=jax.random.PRNGKey(0))
        self.model = nodekit.NeuralODE(field, solver="dopri5", rtol=RTOL, atol=ATOL, adjoint=adjoint)
        optim = optax.rmsprop(1e-3, decay=0.99)
        self.opt_state = optim.init(eqx.filter(self.model, eqx.is_inexact_array))
        ts = jnp.asarray(ts)

        def loss(model, batch, key):
            sol = model.solve_batch(ts, batch["y0"], mode=mode, throw=False)
            err = jnp.mean(jnp.abs(sol.ys - batch["target"]))
            return err, {"nfe_forward": jnp.mean(sol.stats.nfe).astype(jnp.float32),
                         "nfe_max": jnp.max(sol.stats.nfe).astype(jnp.float32)}

        self.step = nodekit.make_step(loss, optim)
        self.key = jax.random.PRNGKey(1)
        with CompileEvents() as self.ev:
            out = self.call()
        self.nfe = float(out[2]["nfe_forward"])
        self.nfe_max = float(out[2]["nfe_max"])

    def call(self):
        return jax.block_until_ready(self.step(self.model, self.opt_state, self.batch, self.key))


class SpiralProblem(Problem):
    def __init__(self, mode, adjoint, batch=20):
        from nodekit._config import validate
        from nodekit.tasks import TrajectoryTask
        from nodekit._optim import make_optimizer
        from nodekit._step import make_step

        raw = spiral_raw(adjoint=adjoint, batch_mode=mode)
        raw["train"]["batch_size"] = batch
        cfg = validate(raw)
        task = TrajectoryTask(cfg)
        self.model = task.make_model(jax.random.PRNGKey(0))
        optim = make_optimizer(cfg.optimizer, cfg.train.steps)
        self.opt_state = optim.init(eqx.filter(self.model, eqx.is_inexact_array))
        self.batch = jax.tree_util.tree_map(jnp.asarray, task.batch(0))
        self.step = make_step(task.loss, optim)
        self.key = jax.random.PRNGKey(1)
        with CompileEvents() as self.ev:
            out = self.call()
        self.nfe = float(out[2]["nfe_forward"])
        self.nfe_max = float("nan")


# ----------------------------------------------------------------- 1. sweeps


def sweeps(quick, repeats):
    if quick:
        grid = {"batch": [16, 256]}
        base = dict(BASE, batch=16)
    else:
        grid = {"batch": [1, 64, 1024], "width": [16, 128, 512], "dim": [2, 32, 128], "n_save": [2, 10, 100]}
        base = BASE
    problems = {}
    for var, values in grid.items():
        for v in values:
            cfg = dict(base, **{var: v})
            key = tuple(sorted(cfg.items()))
            if key not in problems:
                problems[key] = Problem(**cfg)
    times = interleaved({k: p.call for k, p in problems.items()}, repeats, warmup=2)
    rows = []
    for var, values in grid.items():
        for v in values:
            key = tuple(sorted(dict(base, **{var: v}).items()))
            p, t = problems[key], median(times[key])
            rows.append([var, v, ms(t), f"{p.nfe:.0f}", f"{1e6 * t / p.nfe:.0f}", f"{p.ev.wall:.1f}"])
    return rows, base


# ----------------------------------------------------------------- 2. memory


def memory(quick):
    import nodekit

    ns = [64] if quick else [16, 256, 4096]
    adjoints = ["recursive", "backsolve"] if quick else ["recursive", "backsolve", "direct"]
    field = nodekit.MLPField(32, 128, 1, key=jax.random.PRNGKey(0))
    y0 = jax.random.normal(jax.random.PRNGKey(1), (64, 32))
    ts = jnp.array([0.0, 1.0])
    params, static = eqx.partition(field, eqx.is_array)
    rows = []
    state_bytes = y0.size * 4
    for adj in adjoints:
        for n in ns:
            def loss(p, n=n, adj=adj):
                f = eqx.combine(p, static)
                node = nodekit.NeuralODE(f, solver="dopri5", dt0=1.0 / n, adjoint=adj, max_steps=n)
                return jnp.sum(node.solve_batch(ts, y0, mode="joint", throw=False).ys[-1] ** 2)

            with CompileEvents() as ev:
                compiled = jax.jit(jax.grad(loss)).lower(params).compile()
            m = compiled.memory_analysis()
            temp = getattr(m, "temp_size_in_bytes", None)
            rows.append([adj, n, f"{temp / 1e6:.2f}" if temp is not None else "n/a",
                         f"{temp / state_bytes:.0f}" if temp is not None else "n/a", f"{ev.wall:.1f}"])
    return rows


# ----------------------------------------------------------------- 3. modes


def modes(quick, repeats):
    cases = [("spiral, batch 20", lambda m, a: SpiralProblem(m, a))]
    if not quick:
        cases.append(("base problem, batch 256", lambda m, a: Problem(**dict(BASE, batch=256), mode=m, adjoint=a)))
    rows = []
    mode_list = ("joint",) if quick else ("vmap", "joint")
    for label, make in cases:
        probs, fails = {}, {}
        for mode in mode_list:
            for adj in ("recursive", "backsolve"):
                try:
                    probs[(mode, adj)] = make(mode, adj)
                except Exception as e:  # noqa: BLE001 - reported
                    fails[(mode, adj)] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        times = interleaved({k: p.call for k, p in probs.items()}, repeats, warmup=2)
        for mode in mode_list:
            rec = probs.get((mode, "recursive"))
            for adj in ("recursive", "backsolve"):
                k = (mode, adj)
                if k in fails:
                    rows.append([label, mode, adj, "fails", "-", "-", "-", fails[k]])
                    continue
                p, t = probs[k], median(times[k])
                ratio = f"{t / median(times[(mode, 'recursive')]):.2f}x" if rec is not None else "-"
                nfe = f"{p.nfe:.1f}" + (f" (max {p.nfe_max:.0f})" if mode == "vmap" and p.nfe_max == p.nfe_max else "")
                rows.append([label, mode, adj, ms(t), ratio, nfe, f"{p.ev.wall:.1f}", ""])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two batch sizes, one memory point, spiral joint adjoints")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--only", default="sweeps,memory,modes", help="comma-separated sections")
    a = p.parse_args(argv)
    repeats = a.repeats or (5 if a.quick else 15)
    only = set(a.only.split(","))
    body = ""
    if "sweeps" in only:
        rows, base = sweeps(a.quick, repeats)
        body += (f"Step time sweeps (nodekit `make_step`, joint batch, dopri5 rtol {RTOL:g} atol {ATOL:g}, "
                 f"recursive adjoint; base: dim {base['dim']}, width {base['width']}, batch {base['batch']}, "
                 f"{base['n_save']} save times; one variable changed per row; median of {repeats} "
                 "interleaved calls).\n\n")
        body += table(["varied", "value", "step (ms)", "NFE", "us per NFE", "first call (s)"], rows)
    if "memory" in only:
        rows = memory(a.quick)
        body += ("\n\nMemory of the compiled gradient against the number of solver steps "
                 "(fixed-step Dopri5, batch 64 x dim 32 as one state, MLP width 128, "
                 "`max_steps` = N; XLA temporary buffers from `memory_analysis()`; one state = "
                 f"{64 * 32 * 4 / 1e3:.1f} kB).\n\n")
        body += table(["adjoint", "solver steps N", "temp memory (MB)", "in states", "compile (s)"], rows)
    if "modes" in only:
        rows = modes(a.quick, repeats)
        body += ("\n\nBatch modes and adjoints (nodekit `make_step`; vmap = one solve per sample, "
                 "joint = the batch as one ODE state). NFE: mean per solve (vmap: per sample, and "
                 "the largest). 'vs recursive' = step time / the same mode's recursive step "
                 "(target for backsolve: <= 3x).\n\n")
        body += table(["problem", "batch mode", "adjoint", "step (ms)", "vs recursive", "NFE fwd",
                       "first call (s)", "note"], rows)
    emit("scaling", "Scaling, memory and batch modes (bench_scaling.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
