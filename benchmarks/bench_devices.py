"""Training throughput against the number of devices (issue 6's scaling line).

`python -m nodekit train configs/spiral.yaml --set train.devices=N` for N = 1, 2, 4 in
fresh processes, all started with `XLA_FLAGS=--xla_force_host_platform_device_count=4`
(so the device count is the only thing that changes). The batch is sharded over a
`Mesh` of N devices, parameters replicated (`nodekit.train`'s data-parallel path).
Throughput = batch size / the run's median step time (`summary.json`'s
`step_time_median_s`). The runs alternate (1, 2, 4, 1, 2, 4, ...) so that background
load hits every device count alike; the median over rounds is reported.

On a CPU these are *emulated* devices: XLA splits one host's cores among them, so on a
2-core machine no speed-up is possible and the figures show the cost of sharding
(collectives, smaller per-device work); on a GPU node the same command with
`train.devices: all` uses the real devices.

    python -m benchmarks.bench_devices [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from benchmarks._common import emit, run_subprocess, table

DEVICES = (1, 2, 4)


def run_one(n, batch, mode, steps):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
    with tempfile.TemporaryDirectory() as wd:
        cmd = [sys.executable, "-m", "nodekit", "train", "configs/spiral.yaml", "--workdir", wd,
               "--no-progress", "--set", f"train.devices={n}", "--set", f"train.batch_size={batch}",
               "--set", f"solver.batch_mode={mode}", "--set", f"train.steps={steps}",
               "--set", f"train.eval_every={steps}", "--set", f"train.checkpoint_every={steps}",
               "--set", "train.compile_cache=false"]
        wall, proc = run_subprocess(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        s = json.load(open(os.path.join(wd, "summary.json")))
    return s["step_time_median_s"], s.get("time_to_first_step_s"), s["final_loss"], wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one problem, one round, 20 steps")
    p.add_argument("--write", action="store_true", help="store the table in benchmarks/RESULTS.md")
    p.add_argument("--rounds", type=int, default=None)
    a = p.parse_args(argv)
    rounds = a.rounds or (1 if a.quick else 2)
    steps = 20 if a.quick else 150
    problems = [(64, "joint")] if a.quick else [(64, "joint"), (256, "joint"), (256, "vmap")]
    rows = []
    for batch, mode in problems:
        res = {n: [] for n in DEVICES}
        for _ in range(rounds):
            for n in DEVICES:
                res[n].append(run_one(n, batch, mode, steps))
        base = statistics.median(r[0] for r in res[1])
        for n in DEVICES:
            st = statistics.median(r[0] for r in res[n])
            first = statistics.median(r[1] for r in res[n])
            rows.append([f"spiral, batch {batch}, {mode}", n, f"{1e3 * st:.2f}", f"{batch / st:,.0f}",
                         f"{base / st:.2f}x", f"{first:.1f}", f"{res[n][-1][2]:.4f}"])
        print(table(["problem", "devices", "step (ms)", "samples/s", "throughput vs 1 device",
                     "time to first step (s)", "final loss"], rows[-3:]), flush=True)
    body = (f"`nodekit train configs/spiral.yaml --set train.devices=N` (dopri5 rtol 1e-7 atol 1e-9, "
            f"recursive adjoint, {steps} steps), each run a fresh process with "
            "`XLA_FLAGS=--xla_force_host_platform_device_count=4`; median of "
            f"{rounds} alternating round(s). **CPU-emulated devices on a 2-core machine**: the 4 "
            "'devices' share the same 2 cores, so this measures the overhead of the sharded "
            "step (batch split, gradient all-reduce, and for `joint` the all-reduce of the "
            "error norm inside every solver step), not real scaling. No GPU was available.\n\n")
    body += table(["problem", "devices", "step (ms)", "samples/s", "throughput vs 1 device",
                   "time to first step (s)", "final loss"], rows)
    emit("devices", "Throughput against device count (bench_devices.py)", body, a.write, a.quick)


if __name__ == "__main__":
    main()
