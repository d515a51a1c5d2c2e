"""Sweeps: K members in one compiled program against K single runs, and the ensemble's
throughput against the number of (emulated) devices.

Three measurements, each on the spiral (`configs/spiral.yaml`: dopri5 rtol 1e-7, the
batch as one ODE state, fewer steps) and the 2-D density (`configs/density.yaml`: a
CNF with kinetic + Jacobian regularisation, smaller data, fewer steps), members differing
in their seed:

1. **Step, interleaved in one process.** The sweep's compiled step for K members (its K
   batches drawn on the host included) against the single run's compiled step (its
   batch included), called in turn (`interleaved`), medians. `K x single / ensemble` is
   what one program gains over K runs one after another, in steady state.
2. **Whole runs, alternating in one process.** `nodekit.sweep` of K members against
   `nodekit.train` of one member, each from scratch (`train.compile_cache: false`: the
   compile is paid as on a first run), wall time from the call to its return. K single
   runs cost K times one (each recompiles: the seed is in its step's key); the table
   gives the measured single run and the sweep, and their ratio.
3. **Devices.** `nodekit sweep` of 16 spiral members with `train.devices` = 1, 2, 4, each
   a fresh process started with `XLA_FLAGS=--xla_force_host_platform_device_count=4`,
   alternating; throughput = member-steps per second of the ensemble step (`sweep.json`'s
   median step time). Each device steps its own members (`shard_map`): no collective
   inside a solve.

The spiral runs with `solver.engine: nodekit` on both sides: on this branch an `"auto"`
engine inside the sweep's `vmap` would fall back to Diffrax (nodekit/_odeint.py's
`engine_for` looks for batching tracers), while the single run of a joint batch uses the
engine, so the two would not be the same solver. The density's regularised solve runs
on Diffrax on both sides.

    python -m benchmarks.bench_sweep [--quick] [--write] [--only step,runs,devices]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, emit, interleaved, machine_line, median, table

KS = (1, 4, 16, 64)


def spiral_raw(steps: int) -> dict:
    from nodekit._config import load_yaml

    raw = load_yaml(ROOT / "configs" / "spiral.yaml")
    raw["solver"]["engine"] = "nodekit"
    raw["optimizer"]["schedule"] = "constant"
    raw["train"].update({"steps": steps, "log_every": 10, "eval_every": steps,
                         "checkpoint_every": steps, "plots": False, "progress": False,
                         "compile_cache": False})
    return raw


def density_raw(steps: int) -> dict:
    from nodekit._config import load_yaml

    raw = load_yaml(ROOT / "configs" / "density.yaml")
    raw["data"].update({"n_train": 2000, "n_test": 500})
    raw["optimizer"]["schedule"] = "constant"
    raw["train"].update({"steps": steps, "batch_size": 128, "log_every": 10,
                         "eval_every": steps, "checkpoint_every": steps, "plots": False,
                         "progress": False, "compile_cache": False})
    return raw


PROBLEMS = {"spiral": spiral_raw, "density": density_raw}


def _members(raw: dict, k: int, root: Path):
    import nodekit
    from nodekit._ensemble import plan_groups
    from nodekit._loop import _Console, _Run
    from nodekit._sweep import plan_members

    members = plan_members(nodekit.validate_config(raw), root, seeds=k)
    for m in members:
        m.run = _Run(m.config, m.workdir, restart=True, init_from=None, cli=False,
                     console=_Console("quiet"), t_start=0.0)
        m.run.accept_task()
    (group,) = plan_groups(members)
    return members, group


def step_table(problem: str, ks, repeats: int) -> list[list]:
    """Steady-state step: the ensemble of K against one single run, interleaved."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import nodekit
    from nodekit._build import build_state
    from nodekit._ensemble import Ensemble
    from nodekit._step import CompiledStep, step_body
    from nodekit.tasks import make_task

    raw = PROBLEMS[problem](10_000)
    cfg = nodekit.validate_config(raw)
    task = make_task(cfg)
    from nodekit._optim import make_optimizer

    optim = make_optimizer(cfg.optimizer, cfg.train.steps)
    model, opt, key = build_state(task, optim, np.uint32(cfg.seed), split=True)
    single = CompiledStep(step_body(task.loss, optim), model, opt, task.batch(0),
                          (key, np.int32(0)), cache_dir=None, key_material={}, fold_step=True)
    s_state = single.flatten(model, opt)
    calls = {}
    step = [0]

    def run_single():
        step[0] += 1
        out, m = single(s_state, task.batch(step[0] % 1000), (key, np.int32(step[0])))
        jax.block_until_ready(m["loss"])

    calls["single"] = run_single
    ensembles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            members, group = _members(raw, k, Path(tmp) / f"k{k}")
            ens = Ensemble(group, None, lambda s: None, True)
            t = time.perf_counter()
            ens.build()
            compile_s = time.perf_counter() - t
            state = [jnp.asarray(x) for x in ens.fresh.host()]
            live = np.ones(ens.k_pad, bool)

            def run_ens(ens=ens, state=state, live=live):
                step[0] += 1
                steps = np.full(ens.k_pad, step[0] % 1000, np.int64)
                out, m = ens.compiled(state, ens._inputs(steps, live), ens._key(steps))
                jax.block_until_ready(m["loss"])

            calls[f"K={k}"] = run_ens
            ensembles[k] = compile_s
        times = interleaved(calls, repeats, warmup=3)
    t1 = median(times["single"])
    rows = []
    for k in ks:
        tk = median(times[f"K={k}"])
        rows.append([problem, k, f"{1e3 * t1:.2f}", f"{1e3 * tk:.2f}", f"{tk / t1:.2f}x",
                     f"{k * t1 / tk:.2f}x", f"{ensembles[k]:.1f}"])
        print(table(STEP_HEAD, rows[-1:]), flush=True)
    return rows


STEP_HEAD = ["problem", "K", "single step (ms)", "K-member step (ms)", "K-member / single",
             "gain over K runs in turn", "sweep build + compile (s)"]


def runs_table(problem: str, ks, steps: int, rounds: int) -> list[list]:
    """Whole runs from scratch: a sweep of K against a single run, alternating."""
    import nodekit

    raw = PROBLEMS[problem](steps)
    res: dict = {"single": []} | {k: [] for k in ks}
    steps_s: dict = {k: [] for k in ks}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            t = time.perf_counter()
            s = nodekit.train(raw, Path(tmp) / f"single{r}", progress=False)
            res["single"].append(time.perf_counter() - t)
            single_step = s["step_time_median_s"]
            for k in ks:
                t = time.perf_counter()
                out = nodekit.sweep(raw, Path(tmp) / f"sweep{k}-{r}", seeds=k, progress=False)
                res[k].append(time.perf_counter() - t)
                steps_s[k].append(out["groups"][0]["step_time_median_s"])
                assert all(m["status"] == "ok" for m in out["members"]), out["members"]
            print(f"round {r}: single {res['single'][-1]:.1f} s, "
                  + ", ".join(f"K={k} {res[k][-1]:.1f} s" for k in ks), flush=True)
    one = statistics.median(res["single"])
    rows = []
    for k in ks:
        w = statistics.median(res[k])
        rows.append([problem, k, steps, f"{one:.1f}", f"{k * one:.1f}", f"{w:.1f}",
                     f"{w / one:.2f}x", f"{k * one / w:.1f}x",
                     f"{1e3 * statistics.median(steps_s[k]):.2f}", f"{1e3 * single_step:.2f}"])
    return rows


RUNS_HEAD = ["problem", "K", "steps", "one run (s)", "K runs = K x one (s)", "sweep of K (s)",
             "sweep / one run", "K runs / sweep", "sweep step (ms)", "single step (ms)"]

DEVICE_SCRIPT = """
import json, sys, time
import nodekit
from benchmarks.bench_sweep import spiral_raw
raw = spiral_raw(int(sys.argv[3]))
raw["train"]["devices"] = int(sys.argv[1])
t = time.perf_counter()
out = nodekit.sweep(raw, sys.argv[2], seeds=int(sys.argv[4]), progress=False)
g = out["groups"][0]
print("RESULT " + json.dumps({"step": g["step_time_median_s"], "partition": g["partition"],
                              "compile": g["compile_s"], "wall": time.perf_counter() - t,
                              "ok": sum(m["status"] == "ok" for m in out["members"])}))
"""


def device_table(members: int, steps: int, rounds: int) -> list[list]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=4").strip())
    res: dict = {n: [] for n in (1, 2, 4)}
    for _ in range(rounds):
        for n in (1, 2, 4):
            with tempfile.TemporaryDirectory() as wd:
                p = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(n), wd, str(steps),
                                    str(members)], capture_output=True, text=True, env=env,
                                   cwd=ROOT, timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"devices={n} failed:\n{p.stderr[-3000:]}")
            line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
            res[n].append(json.loads(line[len("RESULT "):]))
            print(f"devices={n}: {res[n][-1]}", flush=True)
    base = statistics.median(r["step"] for r in res[1])
    rows = []
    for n in (1, 2, 4):
        st = statistics.median(r["step"] for r in res[n])
        rows.append(["spiral", members, n, res[n][-1]["partition"], f"{1e3 * st:.2f}",
                     f"{members / st:,.0f}", f"{base / st:.2f}x",
                     f"{statistics.median(r['compile'] for r in res[n]):.1f}",
                     f"{statistics.median(r['wall'] for r in res[n]):.1f}"])
    return rows


DEVICE_HEAD = ["problem", "members", "devices", "partition", "ensemble step (ms)",
               "member-steps/s", "throughput vs 1 device", "build + compile (s)",
               "sweep wall (s)"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="K = 1, 4; few steps; one round")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--only", default="step,runs,devices")
    p.add_argument("--problems", default="spiral,density")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    problems = [x for x in a.problems.split(",") if x]
    ks = (1, 4) if a.quick else KS
    rounds = a.rounds or 1
    repeats = a.repeats or (5 if a.quick else 20)
    print(machine_line(), flush=True)
    body = ""
    if "step" in only:
        rows = []
        for prob in problems:
            rows += step_table(prob, ks, repeats)
        body += ("**Steady-state step, interleaved in one process** (each call blocks until its "
                 f"metrics are ready; median of {repeats} calls each, taken in turn). The "
                 "K-member step includes drawing its K batches on the host. 'gain over K runs "
                 "in turn' = K x single / K-member.\n\n" + table(STEP_HEAD, rows) + "\n\n")
    if "runs" in only:
        rows = []
        for prob in problems:
            steps = {"spiral": 20 if a.quick else 200, "density": 5 if a.quick else 30}[prob]
            rows += runs_table(prob, ks, steps, rounds)
            print(table(RUNS_HEAD, rows), flush=True)
        body += ("**Whole runs from scratch, alternating in one process**: `nodekit.sweep` of K "
                 "members (seeds 0..K-1) against `nodekit.train` of one, compile included "
                 "(`train.compile_cache: false`), median of "
                 f"{rounds} round(s). K single runs take K times one run (each compiles its "
                 "own step: the seed is part of its key).\n\n" + table(RUNS_HEAD, rows) + "\n\n")
    if "devices" in only:
        members = 4 if a.quick else 16
        rows = device_table(members, 20 if a.quick else 100, rounds)
        print(table(DEVICE_HEAD, rows), flush=True)
        body += ("**Ensemble throughput against emulated devices**: `nodekit.sweep` of "
                 f"{members} spiral members with `train.devices` = 1, 2, 4, each a fresh process "
                 "with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, alternating, "
                 f"median of {rounds} round(s); the members are padded to a multiple of the "
                 "devices and each device steps its own. **CPU-emulated devices on a 2-core "
                 "machine**: at most the second core can be gained.\n\n"
                 + table(DEVICE_HEAD, rows) + "\n\n")
    load = os.getloadavg()
    body += f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).\n"
    emit("sweep", "Sweeps: K members in one program (bench_sweep.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
