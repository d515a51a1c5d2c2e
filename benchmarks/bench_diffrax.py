"""nodekit's overhead over hand-written Diffrax, and where the time of a step goes.

The reference is the spiral training step written directly with Diffrax, Equinox and
Optax the way a reader of the Diffrax docs would write it: `eqx.filter_jit`,
`diffeqsolve(ODETerm(f), Dopri5(), ..., stepsize_controller=PIDController(rtol, atol),
saveat=SaveAt(ts=ts))` with the default adjoint, default `max_steps` and default
`throw`, `eqx.filter_value_and_grad`, `optax.rmsprop`, `eqx.apply_updates`. The same
problem in both modes: the batch as one ODE state (joint; the field vmaps the MLP over
the batch) and one solve per sample (vmap of `diffeqsolve`, as in Diffrax's neural-ODE
example). nodekit's step is `nodekit.make_step(TrajectoryTask(config).loss, ...)` and
the train loop's flat-array step. Same initial weights, same batch; interleaved timing.
Target: nodekit / Diffrax <= 1.0.

The profile splits the joint step into a bare dispatch, the forward solve, the
value-and-grad and the optimiser update, and measures Diffrax's per-step loop cost with
a trivial field against the MLP field at a fixed number of steps.

    python -m benchmarks.bench_diffrax [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import (  # noqa: E402
    CompileEvents, emit, interleaved, median, ms, spiral_raw, table,
)


# ----------------------------------------------------------------- hand-written Diffrax


class Func(eqx.Module):
    """dy/dt = MLP(y**3), on one state (vmap mode) or on the whole batch (joint)."""

    mlp: eqx.nn.MLP
    joint: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        if self.joint:
            return jax.vmap(self.mlp)(y**3)
        return self.mlp(y**3)


def diffrax_step_fn(ts, joint: bool, rtol=1e-7, atol=1e-9, optim=None):
    """The step as a Diffrax user writes it (docs defaults everywhere not named)."""
    optim = optim or optax.rmsprop(1e-3, decay=0.99)

    def solve(func, y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(func), diffrax.Dopri5(), ts[0], ts[-1], None, y0,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(ts=ts),
        )
        return sol.ys, sol.stats["num_steps"]

    def loss(func, y0, target):
        if joint:
            ys, steps = solve(func, y0)
            ys = jnp.moveaxis(ys, 0, 1)
        else:
            ys, steps = jax.vmap(solve, in_axes=(None, 0))(func, y0)
        return jnp.mean(jnp.abs(ys - target)), steps

    @eqx.filter_jit
    def step(func, opt_state, y0, target):
        (l, steps), grads = eqx.filter_value_and_grad(loss, has_aux=True)(func, y0, target)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(func, eqx.is_inexact_array))
        return eqx.apply_updates(func, updates), opt_state, l, steps

    return step, loss, optim


# ----------------------------------------------------------------- comparison


def compare(repeats, modes, flat_too=True):
    from nodekit._config import validate
    from nodekit._build import initial_state, make_step

    rows = []
    for mode in modes:
        cfg = validate(spiral_raw(batch_mode=mode))
        task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
        batch = jax.tree_util.tree_map(jnp.asarray, task.batch(0))
        key = jax.random.PRNGKey(1)
        ts = jnp.asarray(task.ts[: cfg.data.batch_time])

        # nodekit: make_step
        nk_step = make_step(task.loss, optim)
        with CompileEvents() as ev_nk:
            out = nk_step(model, opt_state, batch, key)
            jax.block_until_ready(out)
        nk_nfe = float(out[2]["nfe_forward"])
        nk_loss = float(out[2]["loss"])

        # Diffrax by hand, same weights
        func = Func(model.field.mlp, joint=(mode == "joint"))
        dx_step, _, dx_optim = diffrax_step_fn(ts, joint=(mode == "joint"))
        dx_opt_state = dx_optim.init(eqx.filter(func, eqx.is_inexact_array))
        with CompileEvents() as ev_dx:
            dout = dx_step(func, dx_opt_state, batch["y0"], batch["target"])
            jax.block_until_ready(dout)
        dx_loss = float(dout[2])

        calls = {
            "diffrax": lambda: jax.block_until_ready(dx_step(func, dx_opt_state, batch["y0"], batch["target"])),
            "nodekit make_step": lambda: jax.block_until_ready(nk_step(model, opt_state, batch, key)),
        }
        firsts = {"diffrax": ev_dx, "nodekit make_step": ev_nk}
        if flat_too:
            try:
                from nodekit._step import CompiledStep
                from nodekit._step import step_body

                with CompileEvents() as ev_fl:
                    cs = CompiledStep(step_body(task.loss, optim), model, opt_state, batch, key,
                                      cache_dir=None, key_material=None)
                    leaves = cs.flatten(model, opt_state)
                    jax.block_until_ready(cs(leaves, batch, key))
                calls["nodekit train loop (flat jit)"] = lambda: jax.block_until_ready(cs(leaves, batch, key))
                firsts["nodekit train loop (flat jit)"] = ev_fl
            except ImportError:
                pass
        # every call repeats the same step from the same state (same work each time)
        times = interleaved(calls, repeats, warmup=3)
        base = median(times["diffrax"])
        for name in calls:
            ev = firsts[name]
            t = median(times[name])
            rows.append([mode, name, ms(t), f"{t / base:.2f}", f"{ev.wall:.2f}",
                         f"{ev.trace:.2f} / {ev.lower:.2f} / {ev.compile:.2f}",
                         f"{nk_loss:.6f}" if name != "diffrax" else f"{dx_loss:.6f}",
                         f"{nk_nfe:.1f}" if name != "diffrax" else
                         f"{np.mean(np.asarray(dout[3])) * 6 + 1 + 2:.1f}"])
    return rows


# ----------------------------------------------------------------- profile


def profile(repeats):
    """Where a joint spiral step's time goes."""
    import nodekit
    from nodekit._config import validate
    from nodekit._build import initial_state

    cfg = validate(spiral_raw())
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    batch = jax.tree_util.tree_map(jnp.asarray, task.batch(0))
    key = jax.random.PRNGKey(1)

    noop = eqx.filter_jit(lambda m, o, b, k: b["y0"])
    flat_leaves, flat_def = jax.tree_util.tree_flatten(eqx.filter((model, opt_state), eqx.is_array))
    noop_flat = jax.jit(lambda leaves, b, k: b["y0"])
    fwd = eqx.filter_jit(lambda m, b: task.loss(m, b, None))
    vg = eqx.filter_jit(eqx.filter_value_and_grad(lambda m, b: task.loss(m, b, None), has_aux=True))
    grads = vg(model, batch)[1]
    upd = eqx.filter_jit(lambda g, o, m: optim.update(g, o, eqx.filter(m, eqx.is_inexact_array)))
    from nodekit._step import make_step

    step = make_step(task.loss, optim)
    calls = {
        "dispatch: empty eqx.filter_jit with the step's arguments": lambda: jax.block_until_ready(noop(model, opt_state, batch, key)),
        "dispatch: empty jax.jit over flat arrays": lambda: jax.block_until_ready(noop_flat(flat_leaves, batch, key)),
        "forward solve + loss": lambda: jax.block_until_ready(fwd(model, batch)),
        "value_and_grad (forward + backward)": lambda: jax.block_until_ready(vg(model, batch)),
        "optimiser update alone": lambda: jax.block_until_ready(upd(grads, opt_state, model)),
        "whole step (make_step)": lambda: jax.block_until_ready(step(model, opt_state, batch, key)),
    }
    times = interleaved(calls, repeats, warmup=3)
    out = fwd(model, batch)
    steps = float(out[1]["solver_steps"])
    nfe = float(out[1]["nfe_forward"])
    rows = [[name, ms(median(t))] for name, t in times.items()]
    rows.append([f"forward solve per solver step ({steps:.0f} steps, {nfe:.0f} NFE)",
                 ms(median(times["forward solve + loss"]) / max(steps, 1))])

    # Loop overhead: a fixed number of Dopri5 steps with a trivial field vs the MLP field.
    n = 200
    y0 = batch["y0"]

    def fixed(field):
        def run(y0):
            sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Dopri5(), 0.0, 1.0, 1.0 / n, y0,
                                      saveat=diffrax.SaveAt(t1=True), max_steps=n + 1)
            return sol.ys
        return jax.jit(run), jax.jit(jax.grad(lambda y: jnp.sum(run(y))))

    trivial = lambda t, y, args: -y  # noqa: E731
    mlp_field = lambda t, y, args: jax.vmap(model.field.mlp)(y**3)  # noqa: E731
    f_triv, g_triv = fixed(trivial)
    f_mlp, g_mlp = fixed(mlp_field)
    calls = {
        "trivial field (dy/dt = -y)": lambda: jax.block_until_ready(f_triv(y0)),
        "MLP field (the spiral's)": lambda: jax.block_until_ready(f_mlp(y0)),
        "trivial field, gradient": lambda: jax.block_until_ready(g_triv(y0)),
        "MLP field, gradient": lambda: jax.block_until_ready(g_mlp(y0)),
    }
    t2 = interleaved(calls, max(5, repeats // 4), warmup=2)
    loop_rows = [[name, f"{1e6 * median(t) / n:.1f}"] for name, t in t2.items()]
    return rows, loop_rows, n


def loop_profile(repeats):
    """Host work per step in `nodekit.train`'s loop, piece by piece, and the loop's own
    steady step time from a real run."""
    import tempfile

    import nodekit
    from nodekit._step import CompiledStep
    from nodekit._config import validate
    from nodekit._loop import _to_host
    from nodekit._build import initial_state, setup_devices
    from nodekit._step import step_body

    raw = spiral_raw()
    cfg = validate(raw)
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    _, batch_sharding, _ = setup_devices(cfg)
    batch = jax.device_put(task.batch(0), batch_sharding)
    key = jax.random.PRNGKey(1)
    cs = CompiledStep(step_body(task.loss, optim), model, opt_state, batch, key,
                      cache_dir=None, key_material=None)
    leaves = cs.flatten(model, opt_state)
    _, m = cs(leaves, batch, key)
    i = {"n": 0}

    def nxt():
        i["n"] += 1
        return i["n"]

    calls = {
        "task.batch(step) (NumPy)": lambda: task.batch(nxt()),
        "jax.device_put(batch, sharding)": lambda: jax.block_until_ready(jax.device_put(task.batch(0), batch_sharding)),
        "jax.random.fold_in(key, step)": lambda: jax.block_until_ready(jax.random.fold_in(key, nxt())),
        "compiled step (flat jit), dispatch + run": lambda: jax.block_until_ready(cs(leaves, batch, key)),
        "_to_host(metrics)": lambda: _to_host(m),
    }
    times = interleaved(calls, repeats * 4, warmup=3)
    rows = [[k, f"{1e6 * median(v):.0f}"] for k, v in times.items()]
    # the real loop
    steps = max(30, repeats)
    raw["train"].update({"steps": steps, "log_every": 1, "eval_every": 10 * steps,
                         "checkpoint_every": 10 * steps, "progress": False})
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("NODEKIT_CACHE_DIR")
        os.environ["NODEKIT_CACHE_DIR"] = os.path.join(tmp, "cache")
        try:
            summary = nodekit.train(validate(raw), os.path.join(tmp, "run"), progress=False)
        finally:
            if old is None:
                os.environ.pop("NODEKIT_CACHE_DIR", None)
            else:
                os.environ["NODEKIT_CACHE_DIR"] = old
    loop_step = summary.get("step_time_median_s")
    return rows, loop_step, median(times["compiled step (flat jit), dispatch + run"]), steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="joint mode only, fewer repeats, no profile")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    repeats = a.repeats or (10 if a.quick else 50)
    modes = ("joint",) if a.quick else ("joint", "vmap")
    rows = compare(repeats, modes, flat_too=not a.quick)
    body = ("Spiral step (batch 20 x 10 points, dopri5 rtol 1e-7 atol 1e-9, float32, RMSprop). "
            f"Median of {repeats} interleaved calls of the same step from the same state. "
            "'ratio' = time / hand-written Diffrax (target <= 1.0). NFE for Diffrax = "
            "6 x steps + 3 (same count as nodekit's stats).\n\n")
    body += table(["batch mode", "implementation", "step (ms)", "ratio", "first call (s)",
                   "trace / lower / compile (s)", "loss", "NFE"], rows)
    if not a.quick:
        prow, lrows, n = profile(repeats)
        body += "\n\nWhere a joint spiral step's time goes (median of interleaved calls):\n\n"
        body += table(["component", "time (ms)"], prow)
        body += (f"\n\nDiffrax loop cost: {n} fixed Dopri5 steps (ConstantStepSize) on the "
                 "(20, 2) batch state, microseconds per step:\n\n")
        body += table(["field", "us per step"], lrows)
        try:
            hrows, loop_step, flat, n = loop_profile(repeats)
            body += ("\n\nHost work per step in `nodekit.train`'s loop (each piece timed alone, "
                     "microseconds, median):\n\n")
            body += table(["piece", "us"], hrows)
            if loop_step:
                body += (f"\n\n`nodekit.train` itself ({n} steps, logging every step): median "
                         f"`step_time_s` {1e3 * loop_step:.2f} ms, vs {1e3 * flat:.2f} ms for the "
                         f"compiled step alone ({loop_step / flat:.1f}x).")
        except Exception as e:  # noqa: BLE001 - internal API may move
            body += f"\n\n(train-loop profile skipped: {type(e).__name__}: {e})"
    emit("diffrax", "nodekit vs hand-written Diffrax (bench_diffrax.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
