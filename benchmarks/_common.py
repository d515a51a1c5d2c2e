"""Shared helpers for the benchmarks: machine description, timing, tables, RESULTS.md.

Timing rules used by every script:

- compilation is timed apart from execution (the first call, or `lower()`/`compile()`,
  with JAX's own monitoring events splitting tracing, lowering and XLA compilation);
- steady-state figures are medians over many calls, each ending in
  `jax.block_until_ready`, after warm-up calls;
- rows that are compared with each other are timed interleaved (one call of each in
  turn), so that background load on a shared machine hits all of them alike; ratios are
  always taken between figures measured in the same process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ----------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "equinox", "diffrax", "optax", "nodekit", "torch", "torchdiffeq"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            out[name] = "not installed"
    return out


def machine_line() -> str:
    """One line naming the machine, its load and the library versions."""
    v = versions()
    load = os.getloadavg()
    vs = ", ".join(f"{k} {v[k]}" for k in v)
    return (f"{datetime.date.today().isoformat()}; {os.cpu_count()} CPU cores ({cpu_model()}), "
            f"no accelerator; load average at start {load[0]:.1f}; {vs}")


# ----------------------------------------------------------------- timing


def median(xs) -> float:
    return float(statistics.median(xs))


def block(x):
    import jax

    return jax.block_until_ready(x)


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                block: int = 1) -> dict[str, list[float]]:
    """Time each zero-argument call `repeats` times, taking the calls in turn in blocks
    of `block` consecutive calls (block > 1 when the contenders are different runtimes
    whose idle worker threads spin for a while after their own work, e.g. torch's
    OpenMP pool next to XLA's: a block keeps that spin out of all but its first call).

    Each call must block until its result is ready. Returns the per-call wall times.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {k: [] for k in calls}
    done = 0
    while done < repeats:
        n = min(block, repeats - done)
        for k, fn in calls.items():
            for _ in range(n):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        done += n
    return times


class CompileEvents:
    """Collects JAX's duration events (tracing, lowering to MLIR, XLA compile, cache
    loads) while active. `totals()` sums them by short name."""

    _installed = False
    _active: "CompileEvents | None" = None

    def __init__(self):
        import jax

        if not CompileEvents._installed:
            jax.monitoring.register_event_duration_secs_listener(CompileEvents._listen)
            CompileEvents._installed = True
        self.events: dict[str, float] = {}

    @staticmethod
    def _listen(name, duration, **kwargs):
        cur = CompileEvents._active
        if cur is not None:
            short = name.rsplit("/", 1)[-1]
            cur.events[short] = cur.events.get(short, 0.0) + duration

    def __enter__(self):
        self.events = {}
        CompileEvents._active = self
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        CompileEvents._active = None
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0

    @property
    def trace(self) -> float:
        return self.events.get("jaxpr_trace_duration", 0.0)

    @property
    def lower(self) -> float:
        return self.events.get("jaxpr_to_mlir_module_duration", 0.0)

    @property
    def compile(self) -> float:
        return self.events.get("backend_compile_duration", 0.0)


# ----------------------------------------------------------------- tables


def fmt(x, spec=".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and x != x:
        return "nan"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return format(x, spec)


def ms(x) -> str:
    return "-" if x is None else f"{1e3 * x:.2f}"


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(out)


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between `<!-- bench:NAME:start -->` and
    `<!-- bench:NAME:end -->` in RESULTS.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block_ = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda m: block_, text)
    else:
        text = text.rstrip() + "\n\n" + block_ + "\n"
    path.write_text(text)


def emit(name: str, title: str, body: str, write: bool, quick: bool) -> None:
    """Print a benchmark's markdown and, with `write`, store it in RESULTS.md."""
    header = f"### {title}{' (quick)' if quick else ''}\n\n_{machine_line()}_\n\n"
    text = header + body
    print(text)
    if write:
        write_section(name + ("-quick" if quick else ""), text)
        print(f"\n(written to {RESULTS})")


# ----------------------------------------------------------------- configs


def spiral_raw(**solver) -> dict:
    """The benchmark spiral problem (configs/spiral.yaml's data and model), with the
    settings torchdiffeq's `ode_demo` uses pinned explicitly so that an edit to the
    shipped config does not change what is measured: dopri5, rtol 1e-7, atol 1e-9, the
    batch as one ODE state, RMSprop(1e-3) (decay 0.99 = torch's alpha), 20 segments of
    10 points, float32."""
    from nodekit._config import load_yaml

    raw = load_yaml(ROOT / "configs" / "spiral.yaml")
    raw["seed"] = 0
    raw["precision"] = "float32"
    raw["data"] = {"name": "spiral", "n_points": 1000, "t1": 25.0, "batch_time": 10}
    raw["model"] = {"field": {"type": "mlp", "width": 50, "depth": 1, "activation": "tanh",
                              "input_power": 3}, "augment_dim": 0}
    raw["solver"] = {"name": "dopri5", "rtol": 1e-7, "atol": 1e-9, "adjoint": "recursive",
                     "batch_mode": "joint", "max_steps": 4096, **solver}
    raw["optimizer"] = {"name": "rmsprop", "learning_rate": 1e-3, "schedule": "constant",
                        "kwargs": {"decay": 0.99}}
    raw.setdefault("train", {})
    raw["train"].update({"batch_size": 20, "steps": 2000})
    raw.pop("regularisation", None)
    return raw


def spiral_step(**solver):
    """`(task, model, opt_state, step, optim)` for the spiral problem, with
    `nodekit.make_step` over `TrajectoryTask.loss`."""
    import jax

    from nodekit._config import validate
    from nodekit._build import initial_state
    from nodekit._step import make_step

    cfg = validate(spiral_raw(**solver))
    task, model, optim, opt_state = initial_state(cfg, jax.random.PRNGKey(0))
    return task, model, opt_state, make_step(task.loss, optim), optim


@contextlib.contextmanager
def quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_subprocess(cmd: list[str], env: dict | None = None, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return time.perf_counter() - t, proc
