"""Paper reproductions: each experiment is configs + the paper's claim + a check.

Every experiment's `run(workdir, quick)` writes `report.md` (the paper's claims, our
measured figures and whether each claim's direction holds, computed from the numbers),
`summary.json` (the same, with a `claims` list of `{"claim", "paper", "measured",
"holds"}`) and PNG figures into `workdir`, and returns the report's path.
`quick=True` is a small version (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: its `name`, the `paper`, the `claim` it checks, and
    `run(workdir, quick) -> path of report.md`.

    **Example:**

    ```python
    for exp in nodekit.experiments.EXPERIMENTS.values():
        print(exp.name, "-", exp.claim)
    ```
    """

    name: str
    paper: str
    claim: str
    run: Callable[[Path, bool], Path]


def _lazy(module: str) -> Callable[[Path, bool], Path]:
    """`run` of an experiment module, imported only when the experiment runs (so that
    `--list` stays fast)."""

    def run(workdir: Path, quick: bool) -> Path:
        return importlib.import_module(f"{__name__}.{module}").run(workdir, quick)

    run.__name__ = f"run_{module}"
    return run


# (name, module, paper, claim): the modules import JAX and models only when run.
_REGISTRY = (
    ("chen2018-spiral", "chen2018_spiral", "Chen et al. 2018 (NeurIPS), ode_demo",
     "a neural ODE fits the ode_demo spiral; the learned field matches the true one"),
    ("chen2018-odenet-digits", "chen2018_odenet_digits", "Chen et al. 2018 (NeurIPS), Sec. 3",
     "ODE-Net matches a same-width ResNet's test accuracy on digits with fewer parameters"),
    ("chen2018-latent-ode", "chen2018_latent_ode", "Chen et al. 2018 (NeurIPS), Sec. 5",
     "a latent ODE reconstructs and extrapolates irregular noisy spirals better than an RNN"),
    ("dupont2019-anode", "dupont2019_anode", "Dupont, Doucet, Teh 2019 (NeurIPS)",
     "NODE fails on g(x) = -x where ANODE succeeds; NODE's NFE grows, ANODE's stays lower"),
    ("grathwohl2019-ffjord", "grathwohl2019_ffjord", "Grathwohl et al. 2019 (ICLR), FFJORD",
     "CNF test NLL near the analytic optimum on toy densities; Hutchinson trace unbiased"),
    ("finlay2020-rnode", "finlay2020_rnode", "Finlay et al. 2020 (ICML), RNODE",
     "kinetic + Jacobian regularisation: fewer NFE and faster training at similar NLL"),
    ("kelly2020-taynode", "kelly2020_taynode", "Kelly et al. 2020 (NeurIPS), TayNODE",
     "the Taylor R_2 penalty: fewer NFE at test time for a small loss in NLL"),
    ("rackauckas2020-ude", "rackauckas2020_ude", "Rackauckas et al. 2020, UDEs",
     "a Lotka-Volterra UDE recovers the missing interaction and extrapolates past the data"),
)

__all__ = ["EXPERIMENTS", "Experiment", "run_experiment"]

#: Experiments by name (`nodekit reproduce --list`).
EXPERIMENTS: dict[str, Experiment] = {
    name: Experiment(name, paper, claim, _lazy(module))
    for name, module, paper, claim in _REGISTRY
}


def run_experiment(name: str, workdir: Path, quick: bool = False) -> Path:
    """Run experiment `name` into `workdir`; returns the path of its `report.md`.

    **Example:**

    ```python
    report = nodekit.experiments.run_experiment("dupont2019-anode", "runs/anode", quick=True)
    print(report.read_text())
    ```

    **Raises:** `InputError` for an unknown name, or when another process uses
    `workdir`; `nodekit.Stopped` when SIGINT/SIGTERM stopped it (no report is written:
    a report always describes a whole run).
    """
    if name not in EXPERIMENTS:
        from .._errors import InputError, unknown_name_message

        raise InputError(unknown_name_message("experiment", name, list(EXPERIMENTS)))
    from .. import _signals
    from .._rundir import WorkdirLock

    with _signals.guard(), WorkdirLock(workdir):
        try:
            return EXPERIMENTS[name].run(Path(workdir), quick)
        except _signals.Stopped as e:
            raise _signals.Stopped(
                f"stopped during reproduce {name} ({e.signal}); no report was written. Rerun "
                "the same command to run it again.", signal_name=e.signal, step=e.step) from None
