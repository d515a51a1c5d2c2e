"""Shared pieces of the paper experiments: claims whose verdict is computed from
numbers, the report/summary writer, and series and figure helpers. (Training is
`nodekit.train`'s alone: see `_runs.py`.)

An experiment reads numbers from its runs' files, states each of the paper's claims as
one or more `check(lhs, op, rhs)` comparisons, and hands them to `write_report`, which writes
`report.md` (tables of claims, settings, notes, figures, timings) and `summary.json`
(the same data, machine readable: `claims` is a list of
`{"claim", "paper", "measured", "holds", "checks"}`).
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Comparison operators a `Check` may use.
OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

#: Resolution of saved figures (small PNGs, fit to commit).
DPI = 85


# ----------------------------------------------------------------- claims


def _fmt(x: float) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


@dataclass(frozen=True)
class Check:
    """One numeric comparison `lhs op rhs`; `holds` is computed, and false whenever a
    side is not a finite number (a diverged run never passes)."""

    lhs: float
    op: str
    rhs: float
    lhs_name: str = "measured"
    rhs_name: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown comparison {self.op!r}; use one of {list(OPS)}.")
        object.__setattr__(self, "lhs", float(self.lhs))
        object.__setattr__(self, "rhs", float(self.rhs))

    @property
    def holds(self) -> bool:
        if not (math.isfinite(self.lhs) and math.isfinite(self.rhs)):
            return False
        return bool(OPS[self.op](self.lhs, self.rhs))

    def __str__(self) -> str:
        rhs = f"{self.rhs_name} = {_fmt(self.rhs)}" if self.rhs_name else _fmt(self.rhs)
        return f"{self.lhs_name} = {_fmt(self.lhs)} {self.op} {rhs}"


def check(lhs, op: str, rhs, lhs_name: str = "measured", rhs_name: str = "") -> Check:
    """A comparison `lhs op rhs` of two numbers (`op` one of `<, <=, >, >=`).

    **Example:** `check(nll, "<", optimum + 0.1, "test NLL", "optimum + 0.1")`
    """
    return Check(lhs, op, rhs, lhs_name, rhs_name)


def claim(text: str, paper: str, measured: str, *checks: Check) -> dict:
    """One row of an experiment's claims table.

    **Arguments:**

    - `text`: the claim, in words.
    - `paper`: the paper's figure or statement.
    - `measured`: our figure, in words and numbers.
    - `checks`: one or more `Check`s; the claim holds when all of them hold.

    **Returns:** `{"claim", "paper", "measured", "holds", "checks"}` with `holds` a
    `bool` computed from the checks (never written by hand).

    **Raises:** `ValueError` without checks.
    """
    if not checks or not all(isinstance(c, Check) for c in checks):
        raise ValueError("a claim needs at least one Check (made with check(...)).")
    return {
        "claim": text,
        "paper": paper,
        "measured": measured,
        "holds": all(c.holds for c in checks),
        "checks": [str(c) for c in checks],
    }


# ----------------------------------------------------------------- report


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def _md_cell(x) -> str:
    if isinstance(x, float):
        x = _fmt(x)
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    workdir: Path,
    *,
    name: str,
    title: str,
    paper: str,
    quick: bool,
    claims: list[dict],
    settings: dict[str, Any],
    notes: list[str],
    figures: list[Path] = (),
    metrics: dict[str, Any] | None = None,
    tables: list[tuple[str, str]] = (),
    timings: dict[str, float] | None = None,
    batch_mode: str,
) -> Path:
    """Write `report.md` and `summary.json` into `workdir`; returns the report's path.

    **Arguments:**

    - `name`, `title`, `paper`: the experiment's name, heading and citation.
    - `quick`: whether this was the `--quick` run.
    - `claims`: rows made with `claim(...)`.
    - `settings`: the settings that produced the numbers (shown as a table).
    - `notes`: honest notes on where the small scale differs from the paper.
    - `figures`: PNG paths inside `workdir`.
    - `metrics`: extra measured numbers (summary.json only).
    - `tables`: extra `(heading, markdown table)` sections.
    - `timings`: wall times in seconds.
    - `batch_mode`: how batches were solved (`vmap` per sample, or `joint`), stated in
      the report.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n_hold = sum(c["holds"] for c in claims)
    mode = "quick (`--quick`)" if quick else "full"
    cmd = f"nodekit reproduce {name}" + (" --quick" if quick else "")
    out = [
        f"# {title}",
        "",
        f"**Paper:** {paper}  ",
        f"**Run:** `{cmd}` ({mode}), {n_hold} of {len(claims)} claims hold.  ",
        f"**Batch mode:** {batch_mode}",
        "",
        "## Claims",
        "",
        md_table(
            ["Claim", "Paper", "Measured (ours)", "Holds", "Check"],
            [[c["claim"], c["paper"], c["measured"], "yes" if c["holds"] else "**no**",
              "; ".join(c["checks"])] for c in claims],
        ),
        "",
    ]
    for heading, table in tables:
        out += [f"## {heading}", "", table, ""]
    out += ["## Settings", "", md_table(["Setting", "Value"],
                                        [[k, v] for k, v in settings.items()]), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if timings:
        out += ["## Timings", "", md_table(["What", "Seconds"],
                                           [[k, f"{v:.1f}"] for k, v in timings.items()]), ""]
    def rel(f) -> Path:  # a figure's path from the report's folder
        try:
            return Path(f).relative_to(workdir)
        except ValueError:
            return Path(f)

    if figures:
        out += ["## Figures", ""]
        for f in figures:
            out += [f"![{rel(f).stem}]({rel(f).as_posix()})", ""]
    from .. import _signals

    # a stop request during the run: its numbers are partial, so no report claims them
    _signals.raise_if_stopped("before the report was written")
    report = workdir / "report.md"
    report.write_text("\n".join(out))
    summary = {
        "experiment": name,
        "title": title,
        "paper": paper,
        "quick": quick,
        "batch_mode": batch_mode,
        "claims": claims,
        "settings": settings,
        "metrics": metrics or {},
        "timings_s": timings or {},
        "notes": notes,
        "figures": [rel(f).as_posix() for f in figures],
    }
    (workdir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return report


# ----------------------------------------------------------------- series


def smooth(x, window: int = 20) -> np.ndarray:
    """A trailing moving average (for noisy training curves)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    window = max(1, min(window, len(x)))
    c = np.cumsum(np.insert(np.nan_to_num(x), 0, 0.0))
    out = np.empty_like(x)
    for i in range(len(x)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def tail_mean(x, frac: float = 0.1) -> float:
    """The mean of the last `frac` of a series (at least one value)."""
    x = np.asarray(x, dtype=float)
    n = max(1, int(round(len(x) * frac)))
    return float(np.nanmean(x[-n:]))


def head_mean(x, frac: float = 0.1) -> float:
    """The mean of the first `frac` of a series (at least one value)."""
    x = np.asarray(x, dtype=float)
    n = max(1, int(round(len(x) * frac)))
    return float(np.nanmean(x[:n]))


# ----------------------------------------------------------------- figures


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.4)):
    """A headless Matplotlib figure `(fig, axes)` (axes always 2-D), made with the object
    API (no pyplot state, no backend switch)."""
    from ..plots import new_figure

    return new_figure(ncols, nrows, size)


def save(fig, path: Path) -> Path:
    """Save a figure as a small PNG."""
    from ..plots import save_figure

    return save_figure(fig, path, dpi=DPI)


def plot_curves(path: Path, curves: dict[str, tuple], *, xlabel: str, ylabel: str,
                title: str = "", logy: bool = False, window: int = 1) -> Path:
    """Line plot of named `(x, y)` curves (optionally smoothed)."""
    fig, axes = figure()
    ax = axes[0, 0]
    for label, (x, y) in curves.items():
        ax.plot(x, smooth(y, window) if window > 1 else y, lw=1.3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def batch_mode_text(mode: str) -> str:
    """How a batch mode is described in reports."""
    if mode == "joint":
        return ("joint: the whole batch solved as one ODE state with one shared step "
                "size (torchdiffeq/FFJORD's choice; NFE per batch)")
    if mode == "vmap":
        return "vmap: one solve per sample (each picks its own steps; NFE is the per-sample mean)"
    return mode
