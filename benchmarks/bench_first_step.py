"""Time to first step: the CLI cold and warm, and the levers that decide it.

1. **The CLI**, each run a fresh process:
   `python -m nodekit train configs/spiral.yaml --set train.steps=5 --workdir TMP
   --no-progress`, with `NODEKIT_CACHE_DIR` pointing at a fresh folder:
   - cold: empty cache folder;
   - warm: the same folder again (exported step + XLA cache);
   - warm, XLA cache only: the folder with the exported steps (`steps/`) removed, so the
     step is traced again but its XLA compile is a persistent-cache hit;
   - no cache: `--set train.compile_cache=false`.
   Read from the run's `summary.json`: `time_to_first_step_s` (process start to first
   step done), `first_step_s` (trace/load + compile + first step), `compile_s`,
   `step_source`; plus the process's whole wall time measured from outside.
   Targets: cold <= 3 s; warm <= 0.5 s for the step and <= 1.5 s from process start.
2. **Import time** of `nodekit` (and of jax alone), in fresh processes, with the
   heaviest modules from `python -X importtime`.
3. **Trace / lower / XLA compile** of the spiral step (`make_step`), each setting in a
   fresh process, from JAX's monitoring events: the adjoint, `max_steps`, the batch
   mode, and XLA's backend optimisation level (`XLA_FLAGS=
   --xla_backend_optimization_level=0`) with the steady step time it costs; and the
   compile of the evaluation function the run compiles at the end.

    python -m benchmarks.bench_first_step [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks._common import ROOT, emit, median, run_subprocess, table

PY = sys.executable


# ----------------------------------------------------------------- probe (child process)


def probe(spec: dict) -> dict:
    """Runs in a fresh process: build the spiral step with `spec['solver']` overrides,
    time its first call split by JAX's events, then the steady step time."""
    import time

    t0 = time.perf_counter()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from benchmarks._common import CompileEvents, spiral_raw
    from nodekit._config import validate
    from nodekit._build import initial_state
    from nodekit._step import make_step

    t_import = time.perf_counter() - t0
    if "eval_cache" in spec:
        return probe_eval_cache(spec)
    cfg = validate(spiral_raw(**spec.get("solver", {})))
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    step = make_step(task.loss, optim)
    batch = jax.tree_util.tree_map(jnp.asarray, task.batch(0))
    key = jax.random.PRNGKey(1)
    with CompileEvents() as ev:
        out = step(model, opt_state, batch, key)
        jax.block_until_ready(out)
    res = {"first": ev.wall, "cpu": ev.cpu, "trace": ev.trace, "lower": ev.lower,
           "compile": ev.compile, "import": t_import, "nfe": float(out[2]["nfe_forward"])}
    times = []
    for _ in range(spec.get("repeats", 20)):
        t = time.perf_counter()
        jax.block_until_ready(step(model, opt_state, batch, key))
        times.append(time.perf_counter() - t)
    res["step"] = median(times)
    if spec.get("eval"):
        ev_fn = eqx.filter_jit(task.evaluate)
        with CompileEvents() as ev2:
            jax.block_until_ready(ev_fn(model))
        res["eval_first"] = ev2.wall
        res["eval_trace"], res["eval_lower"], res["eval_compile"] = ev2.trace, ev2.lower, ev2.compile
    return res


def probe_eval_cache(spec: dict) -> dict:
    """The end-of-run evaluation function's first call with JAX's persistent cache on,
    in a process with Equinox's default error mode (host callbacks: never cached) or
    with `EQX_ON_ERROR=nan` (as the CLI sets it: cacheable; `run_probe` sets the
    variable for the child). Run twice on one cache folder: the second run shows what a
    warm run pays."""
    import equinox as eqx
    import jax

    from benchmarks._common import CompileEvents, spiral_raw
    from nodekit._config import validate
    from nodekit.tasks import TrajectoryTask
    from nodekit._build import enable_compile_cache

    enable_compile_cache(spec["eval_cache"])
    cfg = validate(spiral_raw())
    task = TrajectoryTask(cfg)
    model = task.make_model(jax.random.PRNGKey(0))
    ev_fn = eqx.filter_jit(task.evaluate)
    with CompileEvents() as ev:
        jax.block_until_ready(ev_fn(model))
    return {"first": ev.wall, "trace": ev.trace, "lower": ev.lower, "compile": ev.compile,
            "cache_hit": ev.events.get("cache_retrieval_time_sec", 0.0)}


def run_probe(spec: dict, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    env.pop("NODEKIT_CACHE_DIR", None)
    env.pop("EQX_ON_ERROR", None)
    if spec.get("nan_mode"):
        env["EQX_ON_ERROR"] = "nan"  # Equinox's documented switch, as the CLI sets it
    wall, proc = run_subprocess([PY, "-m", "benchmarks.bench_first_step", "--probe", json.dumps(spec)], env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise RuntimeError(f"probe {spec} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------- CLI runs


def cli_run(cache: Path, workdir: Path, extra_sets=()) -> dict:
    """One CLI run in a fresh process. Besides the summary, measures from outside the
    time from process start to the first metrics row appearing in `metrics.jsonl`
    (step 0 is always logged), polling every 5 ms."""
    import subprocess
    import time

    env = dict(os.environ, NODEKIT_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    cmd = [PY, "-m", "nodekit", "train", "configs/spiral.yaml", "--set", "train.steps=5",
           *[a for s in extra_sets for a in ("--set", s)], "--workdir", str(workdir), "--no-progress"]
    metrics = workdir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_row = None
    while proc.poll() is None:
        if first_row is None and metrics.exists() and metrics.stat().st_size > 0:
            first_row = time.perf_counter() - t0
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    s = json.loads((workdir / "summary.json").read_text())
    s["process_wall_s"] = wall
    s["process_to_first_row_s"] = first_row
    return s


def bench_cli(repeats: int, quick: bool):
    rows, raw = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="nodekit-bench-first-"))
    names = ["cold (empty cache)", "warm (exported step + XLA cache)",
             "warm, XLA cache only (step re-traced)", "no cache (train.compile_cache=false)"]
    if quick:
        names = names[:2]
    try:
        kinds = {n: [] for n in names}
        for r in range(repeats):
            cache = tmp / f"cache{r}"
            kinds[names[0]].append(cli_run(cache, tmp / f"cold{r}"))
            kinds[names[1]].append(cli_run(cache, tmp / f"warm{r}"))
            if not quick and r == 0:  # one run each of the two reference kinds
                shutil.rmtree(cache / "steps", ignore_errors=True)
                kinds[names[2]].append(cli_run(cache, tmp / f"xla{r}"))
                kinds[names[3]].append(cli_run(tmp / f"unused{r}", tmp / f"nocache{r}",
                                               ["train.compile_cache=false"]))
        for name, runs in kinds.items():
            def m(k, spec=".2f", scale=1.0):
                vals = [r.get(k) for r in runs if r.get(k) is not None]
                return format(scale * median(vals), spec) if vals else "-"
            rows.append([name, m("process_to_first_row_s"), m("time_to_first_step_s"), m("first_step_s"),
                         m("compile_s"), m("process_wall_s"), m("wall_time_s"),
                         m("step_time_median_s", ".1f", 1e3),
                         ", ".join(sorted({str(r.get("step_source", "?")) for r in runs}))])
            raw[name] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, raw


# ----------------------------------------------------------------- imports


def bench_imports(repeats: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = {}
    for name, code in (("jax", "import jax"), ("jax + equinox + optax", "import jax, equinox, optax"),
                       ("diffrax (with jax, equinox, lineax, optimistix)", "import diffrax"),
                       ("nodekit", "import nodekit"),
                       ("nodekit.cli + _loop (the CLI's path)", "import nodekit.cli, nodekit._loop")):
        times = []
        for _ in range(repeats):
            c = f"import time; t=time.perf_counter(); {code}; print('T', time.perf_counter()-t)"
            _, proc = run_subprocess([PY, "-c", c], env=env)
            times += [float(l.split()[1]) for l in proc.stdout.splitlines() if l.startswith("T ")]
        res[name] = median(times)
    _, proc = run_subprocess([PY, "-X", "importtime", "-c", "import nodekit.cli, nodekit._loop"], env=env)
    self_us = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m:
            pkg = m.group(3).split(".")[0]
            self_us[pkg] = self_us.get(pkg, 0) + int(m.group(1))
    heavy = sorted(self_us.items(), key=lambda kv: -kv[1])[:10]
    return res, heavy


# ----------------------------------------------------------------- levers


def bench_levers(quick: bool):
    specs = [("default: recursive, max_steps 4096 (checkpoints auto = 4096), joint",
              {"solver": {}, "eval": True}, None)]
    if not quick:
        specs += [
            ("solver.engine diffrax (the opt-out: the solve on Diffrax's loop)",
             {"solver": {"engine": "diffrax"}}, None),
            ("solver.checkpoints null (Diffrax with its binomial checkpoints)",
             {"solver": {"checkpoints": None}}, None),
            ("XLA_FLAGS=--xla_cpu_use_thunk_runtime=false", {"solver": {}},
             {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"}),
            ("XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1", {"solver": {}},
             {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}),
            ("max_steps 64", {"solver": {"max_steps": 64}}, None),
            ("max_steps 65536", {"solver": {"max_steps": 65536}}, None),
            ("adjoint direct", {"solver": {"adjoint": "direct"}}, None),
            ("adjoint backsolve, joint (the engine's continuous adjoint)", {"solver": {"adjoint": "backsolve"}}, None),
            ("adjoint backsolve, vmap (Diffrax, per sample)", {"solver": {"adjoint": "backsolve", "batch_mode": "vmap"}}, None),
            ("batch_mode vmap", {"solver": {"batch_mode": "vmap"}}, None),
            ("XLA_FLAGS=--xla_backend_optimization_level=0", {"solver": {}},
             {"XLA_FLAGS": "--xla_backend_optimization_level=0"}),
        ]
    rows, eval_row = [], None
    for name, spec, env in specs:
        try:
            r = run_probe(spec, env)
        except RuntimeError as e:
            rows.append([name, "failed", "-", "-", "-", "-", "-", str(e).splitlines()[0][:80]])
            continue
        rows.append([name, f"{r['trace']:.2f}", f"{r['lower']:.2f}", f"{r['compile']:.2f}",
                     f"{r['first']:.2f}", f"{r['cpu']:.2f}", f"{1e3 * r['step']:.2f}", f"{r['nfe']:.0f}"])
        if "eval_first" in r:
            eval_row = r
    return rows, eval_row


def bench_eval_cache():
    """Warm-run cost of the eval function, as now and with the prototype fix."""
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="nodekit-bench-eval-"))
    try:
        for label, nan_mode in (("EQX_ON_ERROR unset (library caller: host callbacks)", False),
                                ("EQX_ON_ERROR=nan (as the CLI sets it)", True)):
            cache = tmp / ("nan" if nan_mode else "raise")
            cold = run_probe({"eval_cache": str(cache), "nan_mode": nan_mode})
            warm = run_probe({"eval_cache": str(cache), "nan_mode": nan_mode})
            rows.append([label, f"{cold['first']:.2f}", f"{warm['first']:.2f}",
                         f"{warm['trace']:.2f} / {warm['lower']:.2f} / {warm['compile']:.2f}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one CLI pair, default lever only")
    p.add_argument("--write", action="store_true", help="store the tables in benchmarks/RESULTS.md")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        print("PROBE " + json.dumps(probe(json.loads(a.probe))), flush=True)
        return
    repeats = 1 if a.quick else 2
    rows, raw = bench_cli(repeats, a.quick)
    body = ("`python -m nodekit train configs/spiral.yaml --set train.steps=5 --no-progress`, "
            f"each a fresh process (cold and warm: median of {repeats} runs; the other two: one run). 'process -> first step' = from "
            "launching the process to step 0's metrics row appearing in metrics.jsonl, measured "
            "from outside; `time_to_first_step_s`, `first_step_s` (trace or load + compile + run "
            "of step 0), `compile_s`, `wall_time_s` (train() call) and the steady step time are "
            "the run's own summary.json figures; 'process' = the whole process from outside "
            "(includes the end-of-run eval compile, plots and interpreter exit). Targets: cold "
            "<= 3 s; warm <= 0.5 s (step) and <= 1.5 s (from process start).\n\n")
    body += table(["run", "process -> first step (s)", "time_to_first_step_s", "first_step_s", "compile_s",
                   "process (s)", "train() wall (s)", "steady step (ms)", "step source"], rows)
    imps, heavy = bench_imports(1 if a.quick else 3)
    body += "\n\nImport time (fresh processes, median):\n\n"
    body += table(["import", "seconds"], [[k, f"{v:.2f}"] for k, v in imps.items()])
    body += ("\n\nWhere the import time goes (`-X importtime` of `import nodekit.cli, "
             "nodekit._loop`, self time summed by top-level package, one run): " + ", ".join(f"{k} {v / 1e6:.2f} s" for k, v in heavy) + ".")
    lrows, ev = bench_levers(a.quick)
    body += ("\n\nCompile levers: the spiral `make_step` step's first call in a fresh process, "
             "split by JAX's monitoring events (wall seconds; 'CPU' = process CPU seconds of the "
             "first call, less sensitive to other load), and its steady step time.\n\n")
    body += table(["setting", "trace (s)", "lower (s)", "XLA compile (s)", "first call (s)",
                   "first call CPU (s)", "steady step (ms)", "NFE"], lrows)
    if ev:
        body += (f"\n\nThe run's evaluation function (whole 1000-point trajectory, compiled at the "
                 f"first eval): first call {ev['eval_first']:.2f} s (trace {ev['eval_trace']:.2f}, "
                 f"lower {ev['eval_lower']:.2f}, compile {ev['eval_compile']:.2f}).")
    if not a.quick:
        try:
            erows = bench_eval_cache()
            body += ("\n\nThe evaluation function at the end of every run (compiled again even in a "
                     "warm run): its first call in a fresh process, first and second run on one "
                     "persistent-cache folder.\n\n")
            body += table(["eval function traced", "cold first call (s)", "warm first call (s)",
                           "warm trace / lower / compile (s)"], erows)
        except Exception as e:  # noqa: BLE001 - internal API may move
            body += f"\n\n(eval-cache prototype skipped: {type(e).__name__}: {e})"
    emit("first-step", "Time to first step (bench_first_step.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
