"""Paper reproductions: each experiment is a folder of configs plus a claims spec.

An experiment's training runs are built-in configs, `nodekit/configs/papers/<name>/<run>.yaml`
(`nodekit.builtin_configs()` lists them as `papers/<name>/<run>`), each trained by
`nodekit.train` into `<workdir>/<run>/` with the standard run files (`config.yaml`,
`metrics.jsonl`, `summary.json`, `checkpoints/`, `plots/`). Its module
(`nodekit/experiments/<name>.py`) declares the runs (`RUNS`: quick-mode overrides,
which run starts from which) and computes the paper's claims from the runs' files
(`report`): `report.md` (claims, our figures and whether each holds, computed from
the numbers), `summary.json` (the same, with a `claims` list of `{"claim", "paper",
"measured", "holds", "checks"}`) and PNG figures in `workdir`.

A rerun trains only what is missing: a finished run is kept, an interrupted one resumes.
`quick=True` is a small version (a minute or two on 2 CPU cores) whose runs and report
live in `<workdir>/quick/`, apart from the full run's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: its `name`, the `paper`, the `claim` it checks, and
    `run(workdir, quick, **options) -> path of report.md` (trains what is missing, then
    writes the report; see `run_experiment`).

    **Example:**

    ```python
    import nodekit

    for exp in nodekit.experiments.EXPERIMENTS.values():
        print(exp.name, "-", exp.claim)
    ```
    """

    name: str
    paper: str
    claim: str
    run: Callable[..., Path]


def _lazy(module: str) -> Callable[..., Path]:
    """`run` of an experiment module, imported only when the experiment runs (so that
    `--list` stays fast)."""

    def run(workdir: Path, quick: bool = False, **options) -> Path:
        return importlib.import_module(f"{__name__}.{module}").run(workdir, quick, **options)

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


def run_experiment(name: str, workdir: str | Path, quick: bool = False, *,
                   overrides: Sequence[str] = (), progress: bool | None = None) -> Path:
    """Reproduce experiment `name` in `workdir`: train each of its runs that is missing
    through `nodekit.train` (into `workdir/<run>/`; quick mode: `workdir/quick/<run>/`),
    compute the claims from the runs' files and write `report.md`, `summary.json` and
    the figures beside them. A run already finished (its summary `ok` at its
    configured steps) is kept, an interrupted one resumes from its checkpoint.

    **Arguments:**

    - `name`: an experiment (see `EXPERIMENTS`, or `nodekit reproduce --list`).
    - `workdir`: the experiment's folder (locked while it runs).
    - `quick`: the small version (each run's quick overrides; a few runs fewer).
    - `overrides`: `--set`-style overrides applied to every run after the quick ones
      (e.g. `["train.steps=20"]` for a smoke test). A run folder that holds a run of
      another config (other overrides) is refused, never mixed.
    - `progress`: say what is happening on stderr (each run's progress and train's own
      phase lines); `False` is silent.

    **Returns:** the path of `report.md`.

    **Raises:** `InputError` for an unknown name, when another process uses `workdir`,
    or when a run's folder holds a run of another config; `nodekit.Stopped` when
    SIGINT/SIGTERM stopped it (the run in progress keeps its checkpoint; no report is
    written: a report always describes finished runs); what `nodekit.train` raises for
    a run (e.g. `TrainingFault`).

    **Example:**

    ```python
    # not run: trains every run of the experiment (a minute or two in quick mode)
    import nodekit

    report = nodekit.experiments.run_experiment("dupont2019-anode", "runs/anode", quick=True)
    print(report.read_text())
    ```
    """
    from ._runs import console_for

    return _run(name, Path(workdir), quick, overrides=overrides,
                console=console_for(progress), cli=False)


def _run(name: str, workdir: Path, quick: bool, *, overrides: Sequence[str] = (), console,
         cli: bool) -> Path:
    """`run_experiment` with the console and the wording (`cli`) chosen by the caller."""
    if name not in EXPERIMENTS:
        from .._errors import InputError, unknown_name_message

        raise InputError(unknown_name_message("experiment", name, list(EXPERIMENTS)))
    from .. import _signals
    from .._rundir import WorkdirLock

    with _signals.guard(), WorkdirLock(workdir):
        try:
            return EXPERIMENTS[name].run(Path(workdir), quick, overrides=tuple(overrides),
                                         console=console, cli=cli)
        except _signals.Stopped as e:
            raise _signals.Stopped(
                f"{e} during reproduce {name}; no report was written. Rerun the same "
                "command to continue: finished runs are kept and the stopped one resumes "
                "from its checkpoint.", signal_name=e.signal, step=e.step) from None
