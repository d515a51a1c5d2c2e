"""Paper reproductions: each experiment is configs + the paper's claim + a check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: `run(workdir, quick) -> path of report.md`."""

    name: str
    paper: str
    claim: str
    run: Callable[[Path, bool], Path]


#: Experiments by name (`nodekit reproduce --list`).
EXPERIMENTS: dict[str, Experiment] = {}


def run_experiment(name: str, workdir: Path, quick: bool = False) -> Path:
    """Run experiment `name` into `workdir`; returns the path of its `report.md`."""
    return EXPERIMENTS[name].run(Path(workdir), quick)
