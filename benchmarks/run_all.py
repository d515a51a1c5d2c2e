"""Run every benchmark (the `make bench` entry point).

    python -m benchmarks.run_all            # full versions, tables stored in RESULTS.md
    python -m benchmarks.run_all --quick    # tiny versions (a smoke test, a few minutes)
    python -m benchmarks.run_all --only peer,diffrax --no-write

Each benchmark runs in its own process (a fresh JAX, so one benchmark's compilations,
caches and threads do not colour another's figures), one after the other. Full runs
write their tables into benchmarks/RESULTS.md (sections marked `bench:NAME`); quick
runs write nothing unless `--write` is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name -> (module, supports --write).
BENCHMARKS = {
    "peer": ("benchmarks.bench_peer", True),
    "diffrax": ("benchmarks.bench_diffrax", True),
    "first_step": ("benchmarks.bench_first_step", True),
    "scaling": ("benchmarks.bench_scaling", True),
    "regularisers": ("benchmarks.bench_regularisers", True),
    "devices": ("benchmarks.bench_devices", True),
    "sweep": ("benchmarks.bench_sweep", True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny versions of every benchmark")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--write", action="store_true", help="store tables in RESULTS.md (default for full runs)")
    w.add_argument("--no-write", action="store_true", help="never touch RESULTS.md")
    a = p.parse_args(argv)
    names = list(BENCHMARKS) if not a.only else [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    write = a.write or (not a.quick and not a.no_write)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    failed, t_all = [], time.perf_counter()
    for name in names:
        module, can_write = BENCHMARKS[name]
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            print(f"== {name}: {module} not present, skipped")
            continue
        cmd = [sys.executable, "-m", module]
        if a.quick:
            cmd.append("--quick")
        if write and can_write:
            cmd.append("--write")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t:.0f} s\n", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"== all: {len(names) - len(failed)} of {len(names)} ran cleanly in "
          f"{time.perf_counter() - t_all:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
