"""A reproduction's training runs: declared as configs, trained through `nodekit.train`,
read back from their files.

Each experiment module declares its runs as `RunSpec`s (one built-in config each,
`papers/<experiment>/<run>`, with its quick-mode overrides and the run it starts from,
if any) and a `report(runs, workdir, quick)` function that computes the claims from
the runs' files. `reproduce` trains into `<workdir>/<run>/` (quick mode:
`<workdir>/quick/<run>/`, so the two never share files) whatever is missing: a run
whose `summary.json` says `ok` at its configured steps is kept, an interrupted one
resumes from its checkpoint. Then the report is written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: Quick runs live in this sub-folder of the workdir (never beside the full runs).
QUICK_DIR = "quick"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a reproduction.

    **Fields:**

    - `name`: the run's name: its sub-folder, and its config
      `papers/<experiment>/<name>` (a built-in config, `nodekit.builtin_configs()`).
    - `quick`: `--set` overrides for `--quick` (fewer steps, smaller data).
    - `init_from`: the name of an earlier run of the same experiment whose parameters
      this one starts from (`nodekit.train(..., init_from=...)`), e.g. L-BFGS after Adam.
    - `in_quick`: whether quick mode trains this run at all (e.g. one seed of three).
    """

    name: str
    quick: tuple[str, ...] = ()
    init_from: str | None = None
    in_quick: bool = True


def config_name(experiment: str, run: str) -> str:
    """The built-in config of `run` of `experiment`."""
    return f"papers/{experiment}/{run}"


class Runs:
    """The runs of one reproduction in one mode, and their files read back.

    `names` are the runs of this mode (quick mode may train fewer). Readers: `dir`,
    `config`, `summary`, `rows` (training rows of `metrics.jsonl`), `evals`,
    `last_eval`, `series`, and `load` (`nodekit.load`, cached) for the trained model.
    """

    def __init__(self, experiment: str, specs: Sequence[RunSpec], root: Path, quick: bool,
                 overrides: Sequence[str] = ()):
        self.experiment = experiment
        self.quick = quick
        self.root = Path(root)
        self.overrides = tuple(overrides)
        self.specs = {s.name: s for s in specs if s.in_quick or not quick}
        self.names = list(self.specs)
        #: What `train_missing` did to each run (`trained`, `resumed`, `kept`).
        self.status: dict[str, str] = {}
        #: When the claims' computation began (for the report's timings).
        self.report_started: float | None = None
        self._configs: dict = {}
        self._loaded: dict = {}
        self._rows: dict = {}

    def dir(self, name: str) -> Path:
        return self.root / name

    def overrides_of(self, name: str) -> list[str]:
        spec = self.specs[name]
        return list(spec.quick if self.quick else ()) + list(self.overrides)

    def config(self, name: str):
        """The run's validated config (the built-in one with this mode's overrides)."""
        if name not in self._configs:
            from .._config import load_config

            self._configs[name] = load_config(config_name(self.experiment, name),
                                              self.overrides_of(name))
        return self._configs[name]

    def task(self, name: str):
        """The run's task (its data), built from its config (no model loaded)."""
        if ("task", name) not in self._loaded:
            from ..tasks import make_task

            self._loaded[("task", name)] = make_task(self.config(name))
        return self._loaded[("task", name)]

    def summary(self, name: str) -> dict:
        from .._rundir import read_json

        s = read_json(self.dir(name) / "summary.json", f"summary of run {name!r}")
        if s is None:
            from .._errors import InputError

            raise InputError(f"run {name!r} has no summary.json in {str(self.dir(name))!r}.")
        return s

    def _all_rows(self, name: str) -> list[dict]:
        if name not in self._rows:
            from .._rundir import read_metrics

            rows, _ = read_metrics(self.dir(name) / "metrics.jsonl")
            self._rows[name] = rows
        return self._rows[name]

    def rows(self, name: str) -> list[dict]:
        """The training rows of the run's `metrics.jsonl`, in step order."""
        return sorted((r for r in self._all_rows(name) if not r.get("eval")),
                      key=lambda r: r["step"])

    def evals(self, name: str) -> list[dict]:
        """The evaluation rows, in step order."""
        return sorted((r for r in self._all_rows(name) if r.get("eval")),
                      key=lambda r: r["step"])

    def last_eval(self, name: str) -> dict:
        """The last evaluation row: the final model's (train evaluates at the end)."""
        ev = self.evals(name)
        return ev[-1] if ev else {}

    def series(self, name: str, key: str) -> np.ndarray:
        """`key` over the training rows (NaN where a row has no number)."""
        return np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan
                         for r in self.rows(name)], dtype=float)

    def steps(self, name: str) -> np.ndarray:
        return np.array([r["step"] for r in self.rows(name)], dtype=int)

    def load(self, name: str, which: str = "latest"):
        """`nodekit.load` of the run (the final model by default)."""
        if (name, which) not in self._loaded:
            from .._load_run import load

            self._loaded[(name, which)] = load(self.dir(name), which=which)
        return self._loaded[(name, which)]

    def model_under(self, name: str, changes: Sequence[str]):
        """`(task, model)`: the run's trained parameters in the model that its config
        with `changes` (`--set` overrides, e.g. other solver settings) builds, and that
        config's task. The changes must keep the model's arrays (their number, shapes
        and order): solve settings may change, sizes may not."""
        import equinox as eqx
        import jax

        from .._config import load_config
        from ..tasks import make_task

        trained = self.load(name).model
        cfg = load_config(config_name(self.experiment, name),
                          self.overrides_of(name) + list(changes))
        task = make_task(cfg)
        fresh = task.make_model(jax.random.PRNGKey(cfg.seed))
        leaves = jax.tree_util.tree_leaves(eqx.filter(trained, eqx.is_array))
        slots, treedef = jax.tree_util.tree_flatten(eqx.filter(fresh, eqx.is_array))
        if [(a.shape, a.dtype) for a in leaves] != [(a.shape, a.dtype) for a in slots]:
            raise ValueError(f"the changes {list(changes)} alter the arrays of run {name!r}'s "
                             "model; only settings that keep its parameters can change.")
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        return task, eqx.combine(params, eqx.filter(fresh, eqx.is_array, inverse=True))

    def step_seconds(self, name: str) -> np.ndarray:
        """Each logged training step's wall time, with the compile-bearing first step of
        each session (the run's first step, and the first after a resume) set to NaN."""
        rows = self.rows(name)
        times = np.array([r.get("step_time_s", np.nan) for r in rows], dtype=float)
        restarts = {0, int(self.summary(name).get("resumed_from_step") or 0)}
        for i, r in enumerate(rows):
            if r["step"] in restarts:
                times[i] = np.nan
        return times


def _finished(run_dir: Path, config) -> bool:
    """Whether `run_dir` holds this config's run, trained to its configured steps."""
    from .._rundir import read_json

    s = read_json(run_dir / "summary.json", "summary")
    return (s is not None and s.get("status") == "ok" and s.get("steps") == config.train.steps
            and s.get("config_hash") == config.hash()
            and (run_dir / "checkpoints" / "latest.nkc").exists())


def _check_same_config(run_dir: Path, config, tag: str) -> None:
    """Refuse a run folder that holds a run of another config (other overrides, or a
    config changed since), rather than mix the two.

    **Raises:** `InputError` naming the folder and the way out."""
    from .._rundir import read_json

    s = read_json(run_dir / "summary.json", "summary")
    if s is not None and s.get("config_hash") not in (None, config.hash()):
        from .._errors import InputError

        raise InputError(f"{tag}: {str(run_dir)!r} holds a run of another config (config "
                         f"hash {s.get('config_hash')}, this one's {config.hash()}: other "
                         "overrides, or the experiment's config changed since). Remove that "
                         "folder to train this run afresh, or reproduce into another workdir.")


def train_missing(runs: Runs, *, console, cli: bool = False) -> dict[str, str]:
    """Train each run of `runs` that is not finished, in order; returns what happened to
    each (`"trained"`, `"resumed"` or `"kept"`).

    **Raises:** `nodekit.Stopped` naming the run when a signal stopped it (its
    checkpoint is kept: rerunning resumes it); whatever `nodekit.train` raises.
    """
    from .._loop import _train
    from .._signals import Stopped

    done: dict[str, str] = {}
    n = len(runs.names)
    for i, name in enumerate(runs.names, 1):
        spec = runs.specs[name]
        config = runs.config(name)
        run_dir = runs.dir(name)
        tag = f"run {i}/{n} {name}"
        if _finished(run_dir, config):
            console.say(f"{tag}: finished earlier ({config.train.steps} steps), kept")
            done[name] = "kept"
            continue
        _check_same_config(run_dir, config, tag)
        resuming = (run_dir / "checkpoints" / "latest.nkc").exists() or (
            run_dir / "checkpoints" / "previous.nkc").exists()
        init_from = None
        if spec.init_from is not None and not resuming:
            init_from = runs.dir(spec.init_from)
        how = ("resuming" if resuming else "training") + f" {config.train.steps} steps"
        if init_from is not None:
            how += f" from {spec.init_from}'s weights"
        console.say(f"{tag}: {how} ({config_name(runs.experiment, name)} -> {run_dir})")
        t0 = time.perf_counter()
        try:
            summary = _train(config, run_dir, init_from=init_from, console=console.mode,
                             cli=cli)
        except Stopped as e:
            where = (f"in {tag} at step {e.step}" if e.step is not None else
                     f"before {tag} started training")
            raise Stopped(f"stopped {where} ({e.signal})", signal_name=e.signal, step=e.step,
                          summary=e.summary) from None
        loss = summary.get("final_loss")
        console.say(f"{tag}: done in {time.perf_counter() - t0:.1f}s"
                    + (f", final loss {loss:.4g}" if isinstance(loss, (int, float)) else ""))
        done[name] = "resumed" if resuming else "trained"
    return done


def console_for(progress: bool | None, mode: str | None = None):
    """The console reproduce speaks through (train's own: a line per phase, a bar on a
    terminal, plain lines in a log): `mode` if given, else from `progress`."""
    from .._loop import _Console

    if mode is None:
        if progress is False:
            mode = "quiet"
        else:
            mode = "bar" if sys.stderr.isatty() else "lines"
    return _Console(mode)


def reproduce(experiment: str, specs: Sequence[RunSpec],
              report: Callable[[Runs, Path, bool], Path], workdir: Path, quick: bool, *,
              overrides: Sequence[str] = (), console=None, cli: bool = False) -> Path:
    """Train what is missing of `specs` under `workdir` (quick: `workdir/quick`), then
    call `report(runs, root, quick)`; returns the report's path."""
    console = console or console_for(None)
    root = Path(workdir) / QUICK_DIR if quick else Path(workdir)
    runs = Runs(experiment, specs, root, quick, overrides)
    mode = "quick" if quick else "full"
    console.say(f"reproduce {experiment} ({mode}): {len(runs.names)} run(s) in {root}")
    runs.status = train_missing(runs, console=console, cli=cli)
    console.say("computing the claims from the runs' files and drawing the figures")
    runs.report_started = time.perf_counter()
    path = report(runs, root, quick)
    from .._rundir import read_json

    claims = (read_json(root / "summary.json", "report summary") or {}).get("claims") or []
    console.say(f"report written in {time.perf_counter() - runs.report_started:.1f}s: {path} "
                f"({sum(bool(c.get('holds')) for c in claims)} of {len(claims)} claims hold)")
    return path


def timings(runs: Runs) -> dict[str, float]:
    """Wall times for the report: each run's training (from its summary: the last
    session when it was resumed; a run kept from earlier says so), and the time spent
    computing claims and figures."""
    out = {}
    for name in runs.names:
        s = runs.summary(name)
        how = runs.status.get(name, "")
        note = " (trained earlier)" if how == "kept" else (" (last session, resumed)"
                                                           if how == "resumed" else "")
        out[f"{name}: {s.get('steps')} steps, incl. compile and evals{note}"] = float(
            s.get("wall_time_s") or float("nan"))
    if runs.report_started is not None:
        out["claims and figures from the runs' files"] = time.perf_counter() - runs.report_started
    return out
