"""Sweeps and ensembles: a grid of configs and seeds trained as few compiled programs
(`nodekit.sweep`; the module is private because the public name is the function).

`nodekit.sweep(config, workdir, grid=..., seeds=...)` (and `nodekit sweep CONFIG --grid
key=v1,v2 --seeds N`) expands the grid into members, each a run of the config with its
values set, in its own sub-workdir with a single run's files (`config.yaml`,
`metrics.jsonl`, `summary.json`, `checkpoints/`, `plots/`), and trains the members whose
models agree as one program on an ensemble axis (see `nodekit._ensemble`). The sweep's
own files: `sweep.json` (members, values, groups, statuses, results), `sweep.md` (the
table) and the figures `sweep-loss.png` and `sweep-metrics.png`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path

import jax
import numpy as np

from . import _signals
from ._build import init_distributed, is_out_of_memory
from ._checkpoint import config_diff, hashed_config, read_header
from ._config import Config, validate
from ._config._load import _yaml_value
from ._errors import CheckpointError, ConfigError, TrainingFault
from ._ensemble import Ensemble, Member, NeedsSplit, plan_groups, split_group
from ._loop import _as_config, _Console, _console_mode, _Run
from ._rundir import WorkdirLock, atomic_write_bytes, read_json
from ._signals import Stopped

#: Statuses of a member that ended (not retrained when the sweep runs again).
_ENDED = ("ok", "nonfinite", "solver_failure")


def sweep(config: Config | dict | str | Path, workdir: str | Path, *,
          grid: dict[str, list] | None = None, seeds: int | None = None,
          restart: bool = False, progress: bool | None = None) -> dict:
    """Train every combination of `grid`'s values with `seeds` seeds, as few compiled
    programs as the members' shapes allow.

    Each member is a run of `config` with its values set, in `workdir/<member name>/`
    (e.g. `learning_rate=0.001,kinetic=0.01,seed=1`), with the files `nodekit.train`
    writes there, and its results equal that run's to float tolerance (its own seed,
    parameters, batches and noise). Members whose configs differ only in the seed, the
    learning rate, the regularisers' weights, the task's data drawn from the seed, or
    host-side train settings (steps, cadences, guards) train together as one `vmap`ped
    step; others (another width, tolerance, solver, batch size...) form their own groups.
    A member that faults (non-finite loss, solver failures) is frozen with its last good
    checkpoint and the others go on; calling again resumes the sweep bit for bit, and a
    member that ended is not retrained. With `train.devices` > 1 the members are
    spread over the devices (each device steps its own members).

    **Arguments:**

    - `config`: a `Config`, raw config data, a YAML file or a built-in config's name;
      its `sweep:` section (if any) gives the default `grid` and `seeds`.
    - `workdir`: the sweep's folder (locked while it runs).
    - `grid`: dotted config keys to lists of values, e.g.
      `{"optimizer.learning_rate": [1e-3, 3e-3]}`; it adds to (and overrides keys of)
      the config's `sweep.grid`.
    - `seeds`: seeds per grid point: the config's `seed`, `seed + 1`, ... (default the
      config's `sweep.seeds`, else 1).
    - `restart`: start every member afresh (each previous run is moved aside as
      `nodekit.train(restart=True)` does).
    - `progress`: say what the sweep does on stderr (default `train.progress`).

    **Returns:** the sweep's summary (also `sweep.json`): `status`, `members` (each
    with `name`, `workdir`, `values`, `group`, `status`, `steps`, `final_loss`,
    `eval_loss`, `best_eval_loss`, `message`), `groups` (their members and what rode
    the ensemble axis), `wall_time_s`, and the paths of the table and figures.

    **Raises:** `ConfigError`/`InputError`/`CheckpointError` for bad input (nothing
    trained); `TrainingFault` when no member ended well (every member's summary says
    why; `sweep.json` is written); `Stopped` after SIGINT/SIGTERM (checkpoints and
    summaries written; call again to resume).

    **Example:**

    ```python
    # not run: compiles the ensemble step (about 20 s on 2 CPU cores)
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=4", "train.plots=false"])
    result = nodekit.sweep(config, "/tmp/nodekit-example-sweep", restart=True,
                           grid={"optimizer.learning_rate": [1e-3, 1e-2]}, seeds=2,
                           progress=False)
    for m in result["members"]:
        print(m["name"], m["status"], m["final_loss"])
    ```
    """
    return _sweep(config, workdir, grid=grid, seeds=seeds, restart=restart, progress=progress)


def _sweep(config, workdir, *, grid=None, seeds=None, restart=False, progress=None,
           console: str | None = None, cli: bool = False) -> dict:
    t_start = time.perf_counter()
    with _signals.guard():
        base = _as_config(config)
        init_distributed(base)  # before anything computes
        members = plan_members(base, workdir, grid=grid, seeds=seeds, cli=cli)
        mode = console or _console_mode(base, progress)
        con = _Console(mode if jax.process_index() == 0 else "quiet")
        return _Sweep(base, members, Path(workdir), restart=restart, console=con, cli=cli,
                      t_start=t_start).execute()


# ----------------------------------------------------------------- members


def _format(value) -> str:
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part (`regularisation.kinetic.weight`: `kinetic`), or as many
    parts as make it unique among `keys`."""
    def parts_of(key):
        parts = key.split(".")
        return parts[:-1] if len(parts) > 1 and parts[-1] == "weight" else parts

    out = {}
    for key in keys:
        parts = parts_of(key)
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if sum(1 for k in keys if parts_of(k)[-n:] == parts[-n:]) == 1:
                break
        out[key] = short
    return out


def _set(raw: dict, key: str, value, where: str) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            if parts[i + 1] == "weight" and isinstance(child, (int, float)):
                child = node[part] = {"weight": child}  # `kinetic: 0.01` shorthand
            else:
                raise ConfigError(where, f"cannot set {key!r}: {'.'.join(parts[:i + 1])!r} is "
                                         "a value, not a section.")
        node = child
    node[parts[-1]] = value


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid key=v1,v2` options as a grid (values read as YAML scalars, as `--set`).

    **Raises:** `ConfigError` naming the option that is malformed."""
    grid: dict[str, list] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise ConfigError("", f"--grid {item!r} must look like key.path=v1,v2 (e.g. "
                                  "optimizer.learning_rate=1e-3,3e-3).")
        if key in grid:
            raise ConfigError(key, f"--grid {key} is given twice; list all its values in one "
                                   f"option (--grid {key}=v1,v2).")
        values = []
        for part in text.split(","):
            part = part.strip()
            try:
                values.append(_yaml_value(part) if part else None)
            except Exception:  # noqa: BLE001 - anything YAML cannot read stays a string
                values.append(part)
        grid[key] = values
    return grid


def plan_members(base: Config, workdir, *, grid: dict | None = None, seeds: int | None = None,
                 cli: bool = False) -> list[Member]:
    """The sweep's members: every combination of the grid's values (in the grid's
    order) with every seed, each config validated as `nodekit train` validates one.

    **Raises:** `ConfigError` naming the grid key or the member whose config is bad."""
    from ._config._load import _validate_sweep

    section = base.sweep
    raw_base = section._raw if section is not None and section._raw is not None \
        else base.to_dict()
    merged = dict(section.grid) if section is not None else {}
    merged.update(grid or {})
    n_seeds = seeds if seeds is not None else (section.seeds if section is not None else 1)

    def said(key: str) -> str:
        """A grid key in the caller's words: the option, the argument or the section."""
        if key not in (grid or {}):
            return f"sweep.grid.{key}"
        return f"--grid {key}" if cli else f"grid[{key!r}]"

    # the arguments pass the same checks as a sweep section
    try:
        checked = _validate_sweep({"grid": merged, "seeds": n_seeds}, raw_base)
    except ConfigError as e:
        path = e.path
        if path.startswith("sweep.grid.") and path[len("sweep.grid."):] in (grid or {}):
            path = said(path[len("sweep.grid."):])
        elif path == "sweep.seeds" and seeds is not None:
            path = "--seeds" if cli else "seeds"
        raise ConfigError(path, e.message) from None
    grid_ = checked.grid
    if "seed" in grid_:
        seed_values = [None]
    else:
        seed_values = [base.seed + i for i in range(checked.seeds)]
    keys = list(grid_)
    short = _short_names(keys + ["seed"])
    name_seed = "seed" in grid_ or checked.seeds > 1
    members, used = [], set()
    for combo in itertools.product(*(grid_[k] for k in keys)):
        for seed in seed_values:
            values = dict(zip(keys, combo))
            raw = json.loads(json.dumps(raw_base))
            for k, v in values.items():
                _set(raw, k, v, said(k))
            if seed is not None:
                raw["seed"] = seed
                values["seed"] = seed
            parts = [f"{short[k]}={_format(v)}" for k, v in values.items()
                     if k != "seed" or name_seed]
            name = ",".join(parts) or "base"
            if name in used:
                name = f"{name},{len(members)}"
            used.add(name)
            try:
                cfg = validate(raw, base_dir=base.base_dir)
            except ConfigError as e:
                swept = next((k for k in values if e.path == k or e.path.startswith(k + ".")),
                             None)
                if swept is not None:
                    raise ConfigError(e.path, f"{e.message} (the value {values[swept]!r} of "
                                              f"{said(swept)})") from None
                raise ConfigError(e.path, f"{e.message} (sweep member {name})") from None
            members.append(Member(len(members), name, values, cfg, Path(workdir) / name))
    return members


# ----------------------------------------------------------------- the sweep


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return x


class _Sweep:
    def __init__(self, base: Config, members: list[Member], workdir: Path, *, restart: bool,
                 console: _Console, cli: bool, t_start: float):
        self.base = base
        self.members = members
        self.wd = workdir
        self.restart = restart
        self.console = console
        self.cli = cli
        self.t_start = t_start
        self.groups: list[dict] = []
        self.t_first: float | None = None
        self.writer = True
        self.first_key: dict = {}
        self.before: dict = {}
        self.earlier_groups: list = []

    def say(self, text: str) -> None:
        self.console.say(text)

    # -- phase 1: accept (nothing written)

    def accept(self) -> list[Member]:
        self.writer = jax.process_index() == 0
        earlier = None if self.restart else read_json(self.wd / "sweep.json", "sweep.json")
        earlier = earlier if isinstance(earlier, dict) else {}
        self.before = {m.get("name"): m for m in earlier.get("members", [])
                       if isinstance(m, dict)}
        # the programs of earlier calls whose members ended then (kept in sweep.json)
        self.earlier_groups = [g for g in earlier.get("groups", []) + earlier.get(
            "earlier_groups", []) if isinstance(g, dict)]
        todo = []
        for m in self.members:
            if not self.restart and self._ended_before(m):
                continue
            m.run = _Run(m.config, m.workdir, restart=self.restart, init_from=None,
                         cli=self.cli, console=_Console("quiet"), t_start=self.t_start)
            with jax.enable_x64(m.config.precision == "float64"):
                m.run.accept_task()  # loads and checks the data: raises on bad input
            if not self.restart:
                self._check_checkpoint(m)
            todo.append(m)
        self.mesh = self._mesh()
        return todo

    def _ended_before(self, m: Member) -> bool:
        s = read_json(m.workdir / "summary.json", f"summary of {m.name}")
        if not s or s.get("config_hash") != m.config.hash() or s.get("status") not in _ENDED:
            return False
        if s["status"] == "ok" and s.get("steps") != m.config.train.steps:
            return False  # (train.steps grew: the run continues)
        m.skipped, m.summary, m.status = True, s, s["status"]
        m.message = s.get("message")
        m.group = self.before.get(m.name, {}).get("group")
        return True

    def _check_checkpoint(self, m: Member) -> None:
        """A member's workdir holding another config's run is refused now, before any
        member trains (the run's own resume says the same later, mid-sweep)."""
        for path in (m.workdir / "checkpoints" / "latest.nkc",
                     m.workdir / "checkpoints" / "previous.nkc"):
            if not path.exists():
                continue
            try:
                header, _ = read_header(path)
            except CheckpointError:
                continue  # the run's resume falls back or says what is wrong
            if header.get("config_hash") == m.config.hash():
                return
            old = header["meta"].get("config")
            diff = config_diff(hashed_config(old), hashed_config(m.config.to_dict())) \
                if isinstance(old, dict) else ""
            how = "--restart" if self.cli else "restart=True"
            raise CheckpointError(
                f"member {m.name}: {str(m.workdir)!r} holds a run of another config"
                f"{' (' + diff + ')' if diff else ''}. Start the sweep afresh with {how} (each "
                "old run is moved aside), or give the sweep another workdir.")

    def _mesh(self):
        n = self.base.train.devices
        available = jax.devices()
        n = len(available) if n == "all" else n
        if n > len(available):
            raise ConfigError("train.devices", f"got {n}, but only {len(available)} "
                                               f"{available[0].platform} device(s) are visible. "
                                               "Use 'all' or a smaller count (on CPU, "
                                               "XLA_FLAGS=--xla_force_host_platform_device_count"
                                               "=N makes N host devices).")
        if n == 1:
            return None
        from jax.sharding import Mesh

        return Mesh(np.array(available[:n]), ("members",))

    # -- the run

    def execute(self) -> dict:
        console = self.console
        console.hold()
        try:
            todo = self.accept()
        except BaseException:
            console.drop()
            raise
        console.release()
        _signals.raise_if_stopped("before the sweep started; nothing was written")
        groups = plan_groups(todo)
        lock = WorkdirLock(self.wd, f"sweep workdir {str(self.wd)!r}") if self.writer else None
        if lock is not None:
            lock.__enter__()
        try:
            return self._train(todo, groups)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)

    def _train(self, todo: list[Member], groups) -> dict:
        n = len(self.members)
        skipped = [m for m in self.members if m.skipped]
        self.say(f"sweep of {n} member{'s' * (n != 1)} in {self.wd}"
                 + (f"; {len(skipped)} ended before (not retrained)" if skipped else ""))
        queue = list(groups)
        # group ids go on from the earlier calls' (a member's group names one program)
        gid = max([g.get("id", 0) for g in self.earlier_groups
                   if isinstance(g.get("id"), int)] + [0])
        self._describe(queue, gid)
        self.write()
        stop = None
        while queue:
            g = queue.pop(0)
            gid += 1
            g.id = gid
            for m in g.members:
                m.group = gid
            with jax.enable_x64(g.rep.config.precision == "float64"):
                stop = self._run_group(g, queue, gid)
            if stop == "split":
                gid -= 1
                stop = None
                continue
            self.write()
            if stop:
                break
        summary = self.write(final=True)
        if stop is not None:
            done = sum(m.status in _ENDED for m in self.members)
            resume = "rerun the same command" if self.cli else "call nodekit.sweep again"
            raise Stopped(f"sweep stopped ({stop}); {done} of {n} members ended, the rest "
                          f"have their checkpoints: {resume} to resume", signal_name=stop,
                          summary=summary)
        if not any(m.status == "ok" for m in self.members):
            raise TrainingFault(f"no member of the sweep ended well; {self.wd / 'sweep.md'} "
                                "and each member's summary.json say why.", status="failed")
        return summary

    def _describe(self, groups, before: int) -> None:
        if not groups:
            return
        first = self.first_key = groups[0].key
        for i, g in enumerate(groups, before + 1):
            traced = ", ".join(g.traced) or "nothing (one member)"
            diff = config_diff(first, g.key, limit=4) if i > before + 1 else ""
            self.say(f"group {i}: {len(g.members)} member(s) in one program; on the ensemble "
                     f"axis: {traced}"
                     + (f"; differs from group {before + 1} in {diff}" if diff else ""))

    def _run_group(self, g, queue, gid):
        ens = Ensemble(g, self.mesh, self.say, self.restart)
        self.say(f"group {gid}: building {len(g.members)} member(s)")
        try:
            ens.build()
        except NeedsSplit as e:
            parts = split_group(g)
            self.say(f"group {gid}: the task's code reads its data arrays as constants "
                     f"({str(e).splitlines()[0][:120]}); its members train in {len(parts)} "
                     "groups instead")
            queue[:0] = parts
            return "split"
        self.say(f"group {gid}: ensemble step ready ({ens.compile_s:.1f}s)")
        if _signals.requested() is not None:
            return _signals.requested()
        try:
            ens.open()
            stop = _signals.requested()
            if stop is None:
                stop = ens.train(self.console)
            else:
                ens.stop_name = stop
            if self.t_first is None and ens.step_times:
                self.t_first = ens.members[0].run.t_first
            ens.finish()
        except jax.errors.JaxRuntimeError as e:
            ens.close()
            if not is_out_of_memory(e):
                raise
            first = str(e).strip().splitlines()[0][:300]
            fault = TrainingFault(
                f"out of memory in group {gid} ({len(g.members)} members in one program: "
                f"{first}). Sweep fewer values at once (members share the device's memory), "
                "use a smaller train.batch_size or model, or spread the members over more "
                "devices (train.devices). Each member keeps its last checkpoint; rerun to "
                "resume.", status="out_of_memory")
            for m in g.members:
                if m.status == "running":
                    m.status, m.message = "out_of_memory", str(fault)
            self.write(final=True)
            raise fault from None
        except BaseException:
            ens.close()
            raise
        self.groups.append(self._group_info(g, ens))
        ok = sum(m.status == "ok" for m in g.members)
        self.say(f"group {gid}: {ok} of {len(g.members)} member(s) ok"
                 + (f", stopped ({stop})" if stop else ""))
        return stop

    def _group_info(self, g, ens) -> dict:
        times = ens.step_times[1:] or ens.step_times
        return {"id": g.id, "members": [m.name for m in g.members], "size": len(g.members),
                "padded_size": ens.k_pad, "traced": g.traced,
                "devices": 1 if self.mesh is None else int(self.mesh.devices.size),
                "partition": ens.partition, "compile_s": ens.compile_s,
                "step_time_median_s": float(np.median(times)) if times else None,
                "step_source": getattr(ens.compiled, "source", None),
                "differs_from_first_group": config_diff(self.first_key, g.key, limit=8)}

    # -- files

    def write(self, final: bool = False) -> dict:
        members = []
        for m in self.members:
            s = m.summary or {}
            members.append({
                "name": m.name, "workdir": str(m.workdir), "values": m.values, "group": m.group,
                "status": m.status, "skipped": m.skipped, "steps": s.get("steps"),
                "final_loss": s.get("final_loss"), "eval_loss": s.get("eval_loss"),
                "best_eval_loss": s.get("best_eval_loss"),
                "nfe_forward_mean": s.get("nfe_forward_mean"),
                "wall_time_s": s.get("wall_time_s"), "message": m.message,
            })
        statuses = [m.status for m in self.members]
        if not final:
            status = "running"
        elif any(s.startswith("stopped") for s in statuses) or "pending" in statuses:
            status = "stopped"
        elif all(s == "ok" for s in statuses):
            status = "ok"
        elif any(s == "ok" for s in statuses):
            status = "partial"
        else:
            status = "failed"
        skipped = {m.name for m in self.members if m.skipped}
        grid = {}
        for m in self.members:
            for k, v in m.values.items():
                grid.setdefault(k, [])
                if v not in grid[k]:
                    grid[k].append(v)
        summary = {
            "status": status,
            "members": members,
            "grid": grid,
            "groups": self.groups,
            "earlier_groups": [g for g in self.earlier_groups
                               if any(n in skipped for n in g.get("members", []))],
            "devices": 1 if getattr(self, "mesh", None) is None else int(self.mesh.devices.size),
            "config_hash": self.base.hash(),
            "wall_time_s": time.perf_counter() - self.t_start,
            "time_to_first_step_s": self.t_first,
        }
        if final and self.writer:
            summary.update(self._tables_and_figures(members, list(grid)))
        if self.writer:
            atomic_write_bytes(self.wd / "sweep.json",
                               (json.dumps(_json_safe(summary), indent=2) + "\n").encode())
        return _json_safe(summary)

    def _tables_and_figures(self, members: list[dict], keys: list[str]) -> dict:
        table = sweep_table(members, keys)
        atomic_write_bytes(self.wd / "sweep.md", (
            f"# Sweep in {self.wd}\n\n{table}\n").encode())
        if not self.cli:
            for line in table.splitlines():
                self.say(line)
        out = {"table": str(self.wd / "sweep.md")}
        try:
            out["plots"] = [str(p) for p in plot_sweep(members, keys, self.wd) if p]
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - a figure never loses a sweep
            out["plot_error"] = f"{type(e).__name__}: {e}"
        return out


# ----------------------------------------------------------------- table and figures


def _num(x, spec=".4g") -> str:
    return "-" if x is None else f"{x:{spec}}"


def sweep_table(members: list[dict], keys: list[str]) -> str:
    """The members as a Markdown table: their values, group, status, steps and losses."""
    short = _short_names(keys)
    head = ["member"] + [short[k] for k in keys] + ["group", "status", "steps", "final loss",
                                                     "eval loss", "best eval loss"]
    rows = []
    for m in members:
        status = m["status"] + (" (earlier)" if m.get("skipped") else "")
        rows.append([m["name"]] + [_format(m["values"].get(k)) for k in keys]
                    + [str(m["group"] or "-"), status, str(m["steps"] if m["steps"] is not None
                                                           else "-"),
                       _num(m["final_loss"]), _num(m["eval_loss"]), _num(m["best_eval_loss"])])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_sweep(members: list[dict], keys: list[str], folder: Path) -> list[Path]:
    """`sweep-loss.png` (every member's training loss against the step) and
    `sweep-metrics.png` (final and evaluation loss against each swept value)."""
    with np.errstate(over="ignore", invalid="ignore"):  # (log axes over huge values)
        return _plot_sweep(members, keys, folder)


def _plot_sweep(members: list[dict], keys: list[str], folder: Path) -> list[Path]:
    from ._rundir import read_metrics
    from .plots import new_figure, save_figure, smooth

    folder = Path(folder)
    out = []
    fig, axes = new_figure(1, size=(6.4, 4.2))
    ax = axes[0, 0]
    drawn = 0
    positive = True
    for i, m in enumerate(members):
        rows, _ = read_metrics(Path(m["workdir"]) / "metrics.jsonl")
        pts = [(r["step"], r["loss"]) for r in rows
               if not r.get("eval") and isinstance(r.get("loss"), (int, float))]
        if not pts:
            continue
        s, loss = (np.asarray(v, float) for v in zip(*pts))
        positive &= bool(loss.min() > 0)
        window = max(1, len(loss) // 50)
        ax.plot(s, smooth(loss, window), lw=1.0, color=f"C{i % 10}",
                label=m["name"] if len(members) <= 12 else None,
                ls="-" if m["status"] == "ok" else ":")
        if m["status"] not in ("ok",) and not m["status"].startswith("stopped"):
            ax.plot(s[-1:], smooth(loss, window)[-1:], "x", color=f"C{i % 10}", ms=8)
        drawn += 1
    if drawn:
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (moving average)")
        ax.set_title(f"training loss of {drawn} member(s); x: ended on a fault", fontsize=10)
        ax.grid(alpha=0.3)
        if len(members) <= 12:
            ax.legend(fontsize=7)
        out.append(save_figure(fig, folder / "sweep-loss.png"))
    if keys:
        fig, axes = new_figure(len(keys), size=(4.2, 3.6))
        for j, k in enumerate(keys):
            ax = axes[0, j]
            values = [m["values"].get(k) for m in members]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            order = sorted(set(map(repr, values)))
            xs = values if numeric else [order.index(repr(v)) for v in values]
            for what, marker, color in (("final_loss", "o", "C0"), ("eval_loss", "s", "C1")):
                pts = [(x, m[what]) for x, m in zip(xs, members) if m[what] is not None]
                if pts:
                    px, py = zip(*pts)
                    ax.plot(px, py, marker, color=color, alpha=0.7, ms=5,
                            label=what.replace("_", " "), ls="none")
            bad = [(x, 0) for x, m in zip(xs, members)
                   if m["status"] not in ("ok",) and not m["status"].startswith("stopped")]
            if numeric:
                pos = [v for v in values if v > 0]
                if len(pos) == len(values) and max(pos) / min(pos) >= 10:
                    ax.set_xscale("log")
            else:
                ax.set_xticks(range(len(order)))
                ax.set_xticklabels(order, rotation=30, fontsize=7)
            ys = [m[w] for m in members for w in ("final_loss", "eval_loss") if m[w] is not None]
            if ys and min(ys) > 0:
                ax.set_yscale("log")
            if bad:
                ax.set_title(f"{k} ({len(bad)} ended on a fault)", fontsize=9)
            else:
                ax.set_title(k, fontsize=9)
            ax.set_xlabel(k)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("loss at the end")
                ax.legend(fontsize=7)
        out.append(save_figure(fig, folder / "sweep-metrics.png"))
    return out
