"""The `nodekit` command line: thin argument parsing over the library.

Exit codes: 0 success; 2 bad input (config, arguments, files, a workdir in use) with
one message and no traceback; 3 a training fault (non-finite loss, solver failure, out
of memory, a full disk or an unwritable file) with what to try; 130 / 143 stopped by
SIGINT (Ctrl-C) / SIGTERM after a checkpoint and the summary (rerun to resume).

`run()` is the console script: it installs the signal handlers before anything else
(no Ctrl-C is lost during start-up), then calls `main()`. The process-wide settings a
command wants are made here, never by the library:

- JAX's persistent compilation cache for `train` (`train.compile_cache`).
- Equinox's documented switch `EQX_ON_ERROR=nan`, set by `main()` before JAX and
  Equinox are imported (unless you set it yourself: yours wins). Runtime checks inside
  compiled code (`eqx.error_if`, e.g. Diffrax's check of the output times) then give NaN
  instead of a host callback, which the training step's non-finite guard reports; a
  step without host callbacks can be exported to nodekit's step cache, so a second run
  of a config starts in about a second. Library callers of `nodekit.train()` keep
  Equinox's default (`raise`): their runs work the same, and their step is cached when
  it has no callbacks (see `summary.json`'s `step_source`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _version() -> str:
    from ._version import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodekit", description="Neural ODEs on JAX.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    p.add_argument("--version", action="version", version=f"nodekit {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train from a YAML config (resumes a run in its workdir)")
    t.add_argument("config", help="YAML config file, or a built-in config's name (spiral, tiny, density)")
    t.add_argument("--workdir", help="run folder (default: runs/<config name>)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set solver.rtol=1e-5 (repeatable)")
    t.add_argument("--restart", action="store_true",
                   help="start afresh; the previous run is moved to WORKDIR/previous-run "
                        "until the new run's first checkpoint")
    t.add_argument("--init-from", metavar="OLD_WORKDIR",
                   help="start from an earlier run's parameters (and optimiser state when "
                        "it fits), e.g. with a smaller learning rate after a divergence")
    t.add_argument("--no-progress", action="store_true", help="no live progress bar")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    w = sub.add_parser("sweep", help="train a grid of configs and seeds, many members per "
                                     "compiled program")
    w.add_argument("config", help="YAML config file or a built-in config's name (its sweep: "
                                  "section, if any, gives the default grid and seeds)")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of a config key to sweep, e.g. --grid "
                        "optimizer.learning_rate=1e-3,3e-3 (repeatable: every combination)")
    w.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per grid point: the config's seed, seed+1, ... (default 1)")
    w.add_argument("--workdir", help="sweep folder, one sub-folder per member (default: "
                                     "runs/<config name>-sweep)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every member (repeatable)")
    w.add_argument("--restart", action="store_true",
                   help="start every member afresh (previous runs moved aside)")
    w.add_argument("--no-progress", action="store_true", help="no live progress bar")
    w.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="check a config and print the resolved one")
    v.add_argument("config", help="YAML config file or a built-in config's name")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    r = sub.add_parser("reproduce", help="train a paper experiment's runs (what is missing) "
                                         "and write report.md")
    r.add_argument("name", nargs="?", help="experiment name (see --list)")
    r.add_argument("--list", action="store_true", help="list the experiments")
    r.add_argument("--quick", action="store_true",
                   help="a small version (a minute or two), kept in WORKDIR/quick")
    r.add_argument("--workdir", help="output folder (default: runs/reproduce/<name>)")
    r.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    i = sub.add_parser("info", help="print versions and devices")
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _cmd_train(args) -> int:
    from . import _signals
    from ._config import load_config

    config = load_config(args.config, args.overrides)
    _signals.raise_if_stopped("before training started; nothing was written")
    from ._build import enable_compile_cache
    from ._loop import _train

    if config.train.compile_cache:
        enable_compile_cache()  # process-wide: the command owns the process
    workdir = Path(args.workdir) if args.workdir else Path("runs") / Path(args.config).stem
    bar = config.train.progress and not args.no_progress and sys.stderr.isatty()
    summary = _train(config, workdir, restart=args.restart, init_from=args.init_from,
                     console="bar" if bar else "lines", cli=True)

    def fmt(key, text, spec=".5g"):
        value = summary.get(key)
        return f", {text} {value:{spec}}" if value is not None else ""

    print(f"done: {summary['steps']} steps" + fmt("final_loss", "final loss")
          + fmt("eval_loss", "eval loss") + fmt("wall_time_s", "wall time (s)", ".1f")
          + fmt("time_to_first_step_s", "first step after (s)", ".2f"))
    print(f"summary: {workdir / 'summary.json'}")
    for p in summary.get("plots", []):
        print(f"plot:    {p}")
    return 0


def _cmd_sweep(args) -> int:
    from . import _signals
    from ._config import load_config
    from ._sweep import _sweep, parse_grid

    config = load_config(args.config, args.overrides)
    grid = parse_grid(args.grid)
    _signals.raise_if_stopped("before the sweep started; nothing was written")
    from ._build import enable_compile_cache

    if config.train.compile_cache:
        enable_compile_cache()  # process-wide: the command owns the process
    workdir = Path(args.workdir) if args.workdir else Path("runs") / f"{Path(args.config).stem}-sweep"
    bar = config.train.progress and not args.no_progress and sys.stderr.isatty()
    summary = _sweep(config, workdir, grid=grid or None, seeds=args.seeds, restart=args.restart,
                     console="bar" if bar else "lines", cli=True)
    members = summary["members"]
    ok = sum(m["status"] == "ok" for m in members)
    print(f"done: {ok} of {len(members)} members ok in {len(summary['groups'])} program(s), "
          f"wall time {summary['wall_time_s']:.1f} s")
    from ._sweep import sweep_table

    print(sweep_table(members, list(summary["grid"])))
    print(f"sweep:   {workdir / 'sweep.json'}")
    for p in [summary.get("table")] + summary.get("plots", []):
        if p:
            print(f"table:   {p}" if p.endswith(".md") else f"plot:    {p}")
    return 0


def _cmd_validate(args) -> int:
    from ._config import dump_yaml, load_config

    config = load_config(args.config, args.overrides)
    from .tasks import make_task

    if config.sweep is not None:  # every member's config and data, as nodekit sweep checks them
        import yaml

        from ._sweep import plan_members

        members = plan_members(config, Path("."))
        for m in members:
            make_task(m.config)
        sys.stdout.write(dump_yaml(config))
        sys.stdout.write(yaml.safe_dump({"sweep": config.sweep.model_dump(mode="json")},
                                        sort_keys=False))
        print(f"# ok: {args.config} is a valid sweep of {len(members)} member(s): "
              f"{', '.join(m.name for m in members[:8])}{' ...' if len(members) > 8 else ''}",
              file=sys.stderr)
        return 0
    make_task(config)  # the data and the user's code: checked as train checks them
    sys.stdout.write(dump_yaml(config))
    print(f"# ok: {args.config} is valid (config hash {config.hash()})", file=sys.stderr)
    return 0


def _cmd_reproduce(args) -> int:
    from ._errors import InputError, unknown_name_message
    from .experiments import EXPERIMENTS, _run

    if args.list or not args.name:
        if not args.list:
            raise InputError("give an experiment name, or --list to see them.")
        for name, exp in EXPERIMENTS.items():
            print(f"{name:28s} {exp.claim}")
        return 0
    if args.name not in EXPERIMENTS:
        raise InputError(unknown_name_message("experiment", args.name, list(EXPERIMENTS)))
    workdir = Path(args.workdir) if args.workdir else Path("runs") / "reproduce" / args.name
    from ._build import enable_compile_cache
    from .experiments._runs import console_for

    enable_compile_cache()  # process-wide, as for train: the command owns the process
    # each run's progress and train's own phase lines (a bar on a terminal), on stderr
    report = _run(args.name, workdir, args.quick, console=console_for(None), cli=True)
    print(f"report: {report}")
    return 0


def _cmd_info(args) -> int:
    import diffrax
    import equinox
    import jax
    import optax

    from . import __version__

    print(f"nodekit  {__version__}")
    print(f"python   {sys.version.split()[0]}")
    for mod in (jax, equinox, diffrax, optax):
        print(f"{mod.__name__:8s} {mod.__version__}")
    print(f"backend  {jax.default_backend()}")
    for d in jax.devices():
        print(f"device   {d.platform}:{d.id} {getattr(d, 'device_kind', '')}")
    return 0


#: The commands, by name (each has its own `--help`).
COMMANDS = {"train": _cmd_train, "sweep": _cmd_sweep, "validate": _cmd_validate,
            "reproduce": _cmd_reproduce, "info": _cmd_info}


def main(argv: list[str] | None = None) -> int:
    """Run one `nodekit` command; returns the exit code. (In-process callers, e.g.
    tests, keep their own signal handling; the console script is `run`.)"""
    # Before anything imports Equinox (it reads the variable once, on import); see the
    # module docstring. A user's own setting wins, and when main() is called in a process
    # that already imported Equinox (a test, a notebook) it would change nothing there.
    if "equinox" not in sys.modules:
        os.environ.setdefault("EQX_ON_ERROR", "nan")
    args = _parser().parse_args(argv)
    from ._errors import NodekitError
    from ._signals import Stopped

    try:
        return COMMANDS[args.command](args)
    except Stopped as e:
        print(f"nodekit: {e}", file=sys.stderr)
        return e.exit_code
    except NodekitError as e:
        if args.debug:
            raise
        kind = "training stopped" if e.exit_code == 3 else "error"
        print(f"nodekit: {kind}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("nodekit: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console script (`nodekit`, `python -m nodekit`): SIGINT and SIGTERM become
    stop requests from the first instruction on, then `main()` runs the command."""
    from . import _signals

    _signals.install_cli()
    sys.exit(main())


if __name__ == "__main__":
    run()
