"""nodekit against torchdiffeq: one training step of the same problem, same weights,
same batches.

Problems:

- **spiral** (configs/spiral.yaml = torchdiffeq's `ode_demo`): dy/dt = MLP(y**3), MLP
  2 -> 50 -> 2 tanh; batch of 20 segments of 10 points solved as one ODE state
  (nodekit `batch_mode: joint`, as torchdiffeq does); dopri5, rtol 1e-7, atol 1e-9;
  float32; L1 loss; RMSprop(1e-3).
  - backprop through the solver: nodekit `adjoint: recursive` vs `torchdiffeq.odeint`;
  - continuous adjoint: nodekit `adjoint: backsolve` vs `torchdiffeq.odeint_adjoint`.
- **wide**: state dim 32, MLP 32 -> 128 -> 32 tanh, batch 256, 10 save times on [0, 1],
  targets from a fixed linear ODE; nodekit joint and per-sample (vmap) vs torchdiffeq.

nodekit's step is `nodekit.make_step(TrajectoryTask(config).loss, optimiser)` (the
public `eqx.filter_jit` step); the row "train loop" is the same step as `nodekit.train`
runs it (flat arrays under `jax.jit`, `nodekit._step.CompiledStep`). The torch
module's weights are copied from the Equinox MLP. Steps of the two libraries are timed
interleaved over the same sequence of batches; each reports the median of the timed
steps after warm-up. NFE: nodekit's solver statistics; torchdiffeq: a counter in the
module's `forward` (calls during `loss.backward()` are the adjoint solve's).

    python -m benchmarks.bench_peer            # full (a few minutes)
    python -m benchmarks.bench_peer --quick    # spiral only, fewer steps
    python -m benchmarks.bench_peer --write    # also store the tables in RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import (  # noqa: E402
    CompileEvents, emit, interleaved, median, ms, quiet_warnings, spiral_raw, table,
)

try:
    import torch
    import torchdiffeq
except ImportError:  # the torch column is skipped
    torch = torchdiffeq = None

TORCH_THREADS = (1, 2)  # torch is timed with each; speed-ups are against the faster
BLOCK = 5  # consecutive steps of one library before switching to the other


# ----------------------------------------------------------------- torch side


def torch_module(mlp: eqx.nn.MLP, power: int):
    """A torch copy of an Equinox MLP field `f(t, y) = MLP(y**power)` with an NFE counter."""
    layers = []
    for i, lin in enumerate(mlp.layers):
        tl = torch.nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            tl.weight.copy_(torch.from_numpy(np.array(lin.weight)))
            tl.bias.copy_(torch.from_numpy(np.array(lin.bias)))
        layers.append(tl)
        if i < len(mlp.layers) - 1:
            layers.append(torch.nn.Tanh())

    class ODEFunc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*layers)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.net(y**power if power != 1 else y)

    return ODEFunc()


class TorchTrainer:
    """One torchdiffeq training step: odeint (or odeint_adjoint), L1 loss, RMSprop."""

    def __init__(self, func, ts, rtol, atol, adjoint: bool, threads: int = 1):
        self.threads = threads
        self.func, self.ts = func, torch.as_tensor(np.array(ts))
        self.rtol, self.atol = rtol, atol
        self.solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        self.opt = torch.optim.RMSprop(func.parameters(), lr=1e-3)
        self.nfe_fwd, self.nfe_bwd, self.loss = [], [], []

    def step(self, y0, target):
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        y0 = torch.as_tensor(np.array(y0))
        target = torch.as_tensor(np.array(target))
        self.opt.zero_grad()
        self.func.nfe = 0
        pred = self.solve(self.func, y0, self.ts, rtol=self.rtol, atol=self.atol, method="dopri5")
        self.nfe_fwd.append(self.func.nfe)
        loss = torch.mean(torch.abs(pred.transpose(0, 1) - target))
        self.func.nfe = 0
        loss.backward()
        self.nfe_bwd.append(self.func.nfe)
        self.opt.step()
        self.loss.append(float(loss.detach()))
        return loss


# ----------------------------------------------------------------- nodekit side


def JointField(field):
    """The batched field as an Equinox module (nodekit's one joint-batch wrapper)."""
    from nodekit._fields import JointField as _JointField

    return _JointField(field)


class NodekitTrainer:
    """A nodekit step (`make_step` or the train loop's flat step) advancing its own
    state over the batches it is given."""

    def __init__(self, step, model, opt_state, flat=False):
        self.step_fn, self.flat = step, flat
        self.state = step.flatten(model, opt_state) if flat else (model, opt_state)
        self.key = jax.random.PRNGKey(1)
        self.nfe, self.loss = [], []
        self.metrics = None

    def step(self, batch):
        if self.flat:
            self.state, m = self.step_fn(self.state, batch, self.key)
        else:
            model, opt, m = self.step_fn(*self.state, batch, self.key)
            self.state = (model, opt)
        jax.block_until_ready(m)
        self.metrics = m
        return m

    def record(self):
        self.nfe.append(float(self.metrics["nfe_forward"]))
        self.loss.append(float(self.metrics["loss"]))


def torch_contenders(label, mlp, power, ts, rtol, atol, adjoint, y0, target):
    """One torchdiffeq trainer per thread count (same initial weights), each with the
    wall time of its first step."""
    out = {}
    for n in TORCH_THREADS:
        tr = TorchTrainer(torch_module(mlp, power), ts, rtol, atol, adjoint=adjoint, threads=n)
        t = time.perf_counter()
        tr.step(y0, target)
        out[f"{label} ({n} thread{'s' if n > 1 else ''})"] = (tr, time.perf_counter() - t)
    return out


def torch_rows(torch_c, times, gradient=None, backward=None):
    """Table rows for the torch contenders, and the faster torch median (the baseline)."""
    meds = {k: median(times[k]) for k in torch_c}
    base = min(meds.values()) if meds else None
    rows = []
    for k, (tr, first) in torch_c.items():
        nb = backward(tr) if backward else f"{np.mean(tr.nfe_fwd):.1f} VJPs"
        row = [k, ms(meds[k]), f"{base / meds[k]:.2f}x", f"{first:.3f}", "-", f"{np.mean(tr.nfe_fwd):.1f}"]
        if gradient is not None:
            row = [row[0], gradient] + row[1:] + [nb]
        rows.append(row)
    return rows, base


def batch_stepper(trainer, batches):
    """A zero-argument call that takes `trainer` one step over the next batch of
    `batches[1:]` (each contender sees the same sequence of batches)."""
    pos = {"i": 0}

    def call():
        b = batches[1 + pos["i"] % (len(batches) - 1)]
        pos["i"] += 1
        if isinstance(trainer, NodekitTrainer):
            trainer.step(b)
            trainer.record()
        else:
            trainer.step(b["y0"], b["target"])

    return call


def first_call(trainer_step, *args):
    """Wall time of the first call (trace + lower + compile + run) and its breakdown."""
    with CompileEvents() as ev:
        out = trainer_step(*args)
    return ev, out


ENGINE_OFF = "nodekit train loop, solve on Diffrax (engine: diffrax)"


def spiral_setup(adjoint="recursive", batch_mode="joint", loss=None, engine="auto"):
    from nodekit._config import validate
    from nodekit._build import initial_state
    from nodekit._step import make_step

    cfg = validate(spiral_raw(adjoint=adjoint, batch_mode=batch_mode, engine=engine))
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    step = make_step(loss or task.loss, optim)
    return cfg, task, model, opt_state, step, optim


def joint_backsolve_loss(task, cfg):
    """The trajectory loss with the batch as one state (`JointField`) and
    `adjoint="backsolve"`."""
    import nodekit

    s = cfg.solver
    ts = jnp.asarray(task.ts[: cfg.data.batch_time])

    def loss(model, batch, key):
        ys, stats = nodekit.odeint(JointField(model.field), batch["y0"], ts, solver=s.name,
                                   rtol=s.rtol, atol=s.atol, adjoint="backsolve",
                                   max_steps=s.max_steps, return_stats=True, throw=False)
        err = jnp.mean(jnp.abs(jnp.moveaxis(ys, 0, 1) - batch["target"]))
        return err, {"nfe_forward": stats.nfe.astype(jnp.float32)}

    return loss


def count_evals(loss_fn, model, batch):
    """Field evaluations in a forward solve and, in the same units, the extra primal
    evaluations that one value-and-grad makes (recomputation under checkpointing, or
    the adjoint solve), counted with a `jax.debug.callback` in the field (an
    instrumented run, not timed). Returns `(forward_count, backward_extra_count)`;
    scale by the solver's NFE / `forward_count` to get evaluations per solve."""
    counter = [0]

    def bump():
        counter[0] += 1

    class Counting(eqx.Module):
        inner: eqx.Module

        def __call__(self, t, y, args):
            jax.debug.callback(bump)
            return self.inner(t, y, args)

    counted = eqx.tree_at(lambda m: m.field, model, Counting(model.field))
    fwd = eqx.filter_jit(lambda m: loss_fn(m, batch, None))
    grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: loss_fn(m, batch, None)[0]))
    jax.block_until_ready(fwd(counted))
    n_fwd = counter[0]
    counter[0] = 0
    jax.block_until_ready(grad(counted))
    n_total = counter[0]
    return n_fwd, n_total - n_fwd


# ----------------------------------------------------------------- spiral


def bench_spiral(repeats: int, warmup: int, adjoint_too: bool, train_loop_too: bool):
    rows, notes = [], []
    cfg, task, model, opt_state, step, optim = spiral_setup()
    batches = [jax.tree_util.tree_map(jnp.asarray, task.batch(i)) for i in range(warmup + repeats + 1)]
    ts = task.ts[: cfg.data.batch_time]

    nk = NodekitTrainer(step, model, opt_state)
    ev, _ = first_call(nk.step, batches[0])
    nk.record()
    contenders = {"nodekit make_step": nk}
    firsts = {"nodekit make_step": ev}
    losses = {"nodekit make_step": (task.loss, model)}  # for the instrumented NFE count

    if train_loop_too:
        try:
            from nodekit._step import CompiledStep
            from nodekit._step import step_body

            # the train loop's flat step, and the same step with the solve on Diffrax
            _, task_d, model_d, opt_d, _, optim_d = spiral_setup(engine="diffrax")
            setups = {"nodekit train loop (flat jit)": (task, model, opt_state, optim),
                      ENGINE_OFF: (task_d, model_d, opt_d, optim_d)}
            for name, (t_, m_, o_, opt_) in setups.items():
                with CompileEvents() as ev_:
                    cs = CompiledStep(step_body(t_.loss, opt_), m_, o_, batches[0],
                                      jax.random.PRNGKey(1), cache_dir=None, key_material=None)
                    flat = NodekitTrainer(cs, m_, o_, flat=True)
                    flat.step(batches[0])
                flat.record()
                contenders[name], firsts[name], losses[name] = flat, ev_, (t_.loss, m_)
        except ImportError as e:
            notes.append(f"train-loop row skipped: {e}")

    torch_c = {}
    if torch is not None:
        torch_c = torch_contenders("torchdiffeq odeint", model.field.mlp, 3, ts, 1e-7, 1e-9, False,
                                   batches[0]["y0"], batches[0]["target"])
        th = next(iter(torch_c.values()))[0]
        notes.append(f"step-0 loss: nodekit {nk.loss[0]:.6f}, torchdiffeq {th.loss[0]:.6f} "
                     f"(same weights, same batch); step-0 NFE: nodekit {nk.nfe[0]:.0f}, "
                     f"torchdiffeq {th.nfe_fwd[0]}")

    calls = {name: batch_stepper(tr, batches) for name, tr in contenders.items()}
    for k, (tr, _) in torch_c.items():
        calls[k] = batch_stepper(tr, batches)
    times = interleaved(calls, repeats, warmup, block=BLOCK)
    trows, base = torch_rows(torch_c, times, gradient="backprop")
    backward = {}
    for name, (loss_fn, m) in losses.items():
        with quiet_warnings():
            n_fwd, n_extra = count_evals(loss_fn, m, batches[0])
        extra = contenders[name].nfe[0] * n_extra / max(n_fwd, 1)
        backward[name] = (f"{extra:.0f} re-evaluations, each with its VJP" if name != ENGINE_OFF
                          else f"{contenders[name].nfe[0]:.0f} VJPs + {extra:.0f} re-evaluations")
    notes.append("nodekit recursive backward pass (step 0, instrumented run with a callback "
                 "counter): nodekit's engine re-forms each accepted step's 7 Dopri5 stages once "
                 "and takes their VJP; Diffrax's checkpointed loop takes one VJP per forward "
                 "evaluation and re-runs each step's body twice more (the same count with its "
                 "default `checkpoints=None`, so not binomial recomputation).")
    for name, tr in contenders.items():
        ev = firsts[name]
        t_med = median(times[name])
        rows.append([name, "backprop (recursive)", ms(t_med),
                     f"{base / t_med:.1f}x" if base else "-", f"{ev.wall:.2f}",
                     f"{ev.trace:.2f} / {ev.lower:.2f} / {ev.compile:.2f}",
                     f"{np.mean(tr.nfe):.1f}", backward[name]])
    rows += trows

    if adjoint_too:
        rows2, notes2 = bench_spiral_adjoint(max(10, repeats // 2), warmup, batches)
        rows += rows2
        notes += notes2
    return rows, notes


def bench_spiral_adjoint(repeats, warmup, batches):
    rows, notes = [], []
    # 1. nodekit's own joint backsolve, through make_step.
    cfg, task, model, opt_state, step, optim = spiral_setup(adjoint="backsolve")
    nk_joint = NodekitTrainer(step, model, opt_state)
    try:
        ev_joint, _ = first_call(nk_joint.step, batches[0])
        nk_joint.record()
        joint_ok = True
    except Exception as e:  # noqa: BLE001 - reported in the table
        joint_ok = False
        notes.append(f"nodekit `adjoint: backsolve` with `batch_mode: joint` FAILS at trace time: "
                     f"{type(e).__name__}: {str(e).splitlines()[0][:160]} (the joint field is a "
                     "Python closure over the parameters; see the prototype row).")
        rows.append(["nodekit make_step, backsolve joint", "continuous adjoint", "fails", "-", "-", "-", "-", "-"])
    contenders, firsts, loss_fns = {}, {}, {}
    if joint_ok:
        name = "nodekit make_step, backsolve joint"
        contenders[name], firsts[name], loss_fns[name] = nk_joint, ev_joint, task.loss
    else:
        from nodekit._step import make_step

        loss = joint_backsolve_loss(task, cfg)
        proto = NodekitTrainer(make_step(loss, optim), model, opt_state)
        ev, _ = first_call(proto.step, batches[0])
        proto.record()
        name = "nodekit backsolve joint (PROTOTYPE JointField module)"
        contenders[name], firsts[name], loss_fns[name] = proto, ev, loss
    # 2. per-sample backsolve (vmap), which works.
    cfg_v, task_v, model_v, opt_v, step_v, _ = spiral_setup(adjoint="backsolve", batch_mode="vmap")
    vm = NodekitTrainer(step_v, model_v, opt_v)
    ev, _ = first_call(vm.step, batches[0])
    vm.record()
    contenders["nodekit backsolve vmap (per-sample)"] = vm
    firsts["nodekit backsolve vmap (per-sample)"] = ev

    torch_c = {}
    if torch is not None:
        torch_c = torch_contenders("torchdiffeq odeint_adjoint", model.field.mlp, 3,
                                   task.ts[: cfg.data.batch_time], 1e-7, 1e-9, True,
                                   batches[0]["y0"], batches[0]["target"])
    calls = {name: batch_stepper(tr, batches) for name, tr in contenders.items()}
    for k, (tr, _) in torch_c.items():
        calls[k] = batch_stepper(tr, batches)
    times = interleaved(calls, repeats, warmup, block=BLOCK)
    trows, base = torch_rows(torch_c, times, gradient="continuous adjoint",
                             backward=lambda tr: f"{np.mean(tr.nfe_bwd):.1f}")
    for name, tr in contenders.items():
        ev = firsts[name]
        t_med = median(times[name])
        nb = "-"
        if name in loss_fns:
            with quiet_warnings():
                n_fwd, n_extra = count_evals(loss_fns[name], model, batches[0])
            nb = f"{tr.nfe[0] * n_extra / max(n_fwd, 1):.0f} (step 0, instrumented)"
        rows.append([name, "continuous adjoint", ms(t_med), f"{base / t_med:.1f}x" if base else "-",
                     f"{ev.wall:.2f}", f"{ev.trace:.2f} / {ev.lower:.2f} / {ev.compile:.2f}",
                     f"{np.mean(tr.nfe):.1f}", nb])
    rows += trows
    return rows, notes


# ----------------------------------------------------------------- wide


def wide_data(dim, batch, n_t, seed=0):
    import scipy.linalg

    rng = np.random.default_rng(seed)
    m = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    a = (m - m.T) - 0.1 * np.eye(dim)  # rotations with slow decay
    ts = np.linspace(0.0, 1.0, n_t)
    y0 = rng.standard_normal((batch, dim))
    target = np.stack([y0 @ scipy.linalg.expm(a * t).T for t in ts], axis=1)
    return ts.astype(np.float32), y0.astype(np.float32), target.astype(np.float32)


def wide_loss(ts, mode, rtol, atol):
    import nodekit

    ts = jnp.asarray(ts)

    def loss(model, batch, key):
        sol = model.solve_batch(ts, batch["y0"], mode=mode, throw=False)
        err = jnp.mean(jnp.abs(sol.ys - batch["target"]))
        return err, {"nfe_forward": jnp.mean(sol.stats.nfe).astype(jnp.float32)}

    return loss


def bench_wide(repeats, warmup, dim=32, width=128, batch=256, rtol=1e-7, atol=1e-9):
    import nodekit
    import optax

    ts, y0, target = wide_data(dim, batch, 10)
    b = {"y0": jnp.asarray(y0), "target": jnp.asarray(target)}
    field = nodekit.MLPField(dim, width, 1, key=jax.random.PRNGKey(0))
    rows, contenders, firsts = [], {}, {}
    for mode in ("joint", "vmap"):
        model = nodekit.NeuralODE(field, solver="dopri5", rtol=rtol, atol=atol)
        optim = optax.rmsprop(1e-3, decay=0.99)
        opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
        tr = NodekitTrainer(nodekit.make_step(wide_loss(ts, mode, rtol, atol), optim), model, opt_state)
        ev, _ = first_call(tr.step, b)
        tr.record()
        contenders[f"nodekit {mode}"], firsts[f"nodekit {mode}"] = tr, ev
    torch_c = {}
    if torch is not None:
        torch_c = torch_contenders("torchdiffeq odeint (joint)", field.mlp, 1, ts, rtol, atol, False, y0, target)
    calls = {}
    for name, tr in contenders.items():
        def call(tr=tr):
            tr.step(b)
            tr.record()
        calls[name] = call
    for k, (tr, _) in torch_c.items():
        calls[k] = lambda tr=tr: tr.step(y0, target)
    times = interleaved(calls, repeats, warmup, block=BLOCK)
    trows, base = torch_rows(torch_c, times)
    for name, tr in contenders.items():
        ev, t_med = firsts[name], median(times[name])
        rows.append([name, ms(t_med), f"{base / t_med:.2f}x" if base else "-", f"{ev.wall:.2f}",
                     f"{ev.trace:.2f} / {ev.lower:.2f} / {ev.compile:.2f}", f"{np.mean(tr.nfe):.1f}"])
    return rows + trows


# ----------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="spiral backprop only, few steps")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per contender")
    a = p.parse_args(argv)
    repeats = a.repeats or (8 if a.quick else 40)
    warmup = 2 if a.quick else 5
    if torch is None:
        print("torch/torchdiffeq not installed: the torchdiffeq column is skipped "
              "(pip install torch==2.13.0 torchdiffeq).")
    rows, notes = bench_spiral(repeats, warmup, adjoint_too=not a.quick, train_loop_too=not a.quick)
    body = ("Spiral (ode_demo): batch 20 x 10 points, joint solve, dopri5 rtol 1e-7 atol 1e-9, "
            f"float32, RMSprop(1e-3). Median of {repeats} steps after {warmup} warm-up, "
            f"interleaved in blocks of {BLOCK}; torch timed with 1 and with 2 threads (XLA uses its "
            "default thread pool). 'speed-up' = the faster torchdiffeq time / this row's time "
            "(within each gradient group). 'first step' = trace + lower + XLA compile + run for "
            "nodekit, the first call for torch.\n\n")
    body += table(["contender", "gradient", "step (ms)", "speed-up vs torchdiffeq", "first step (s)",
                   "trace / lower / compile (s)", "NFE fwd (mean)", "NFE backward"], rows)
    if notes:
        body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if not a.quick:
        wrows = bench_wide(max(10, repeats // 4), 2)
        body += ("\n\nWide: state 32, MLP 32 -> 128 -> 32 tanh, batch 256, 10 save times on [0, 1], "
                 "dopri5 rtol 1e-7 atol 1e-9, backprop through the solver (nodekit recursive).\n\n")
        body += table(["contender", "step (ms)", "speed-up vs torchdiffeq", "first step (s)",
                       "trace / lower / compile (s)", "NFE fwd (mean per solve)"], wrows)
    emit("peer", "nodekit vs torchdiffeq (bench_peer.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
