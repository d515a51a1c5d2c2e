"""The one gate: YAML loading (safe, bounded), dotted `--set` overrides, and `validate`,
which turns raw data into a `Config` or one `ConfigError` naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import yaml

from .._errors import ConfigError, InputError
from ._schema import _TASK_DATA, Config, _check_lbfgs_loss
from ._wording import _data_model, _format_error, _sub_model

def _allows_bool(annotation) -> bool:
    if annotation is bool:
        return True
    return any(_allows_bool(a) for a in getattr(annotation, "__args__", ()) or ())


def _refuse_booleans(raw, cls, path) -> None:
    """pydantic's lax mode reads YAML `true` as 1 for a number field; refuse it (a
    boolean where a number or name belongs is a typo), naming the key."""
    if not isinstance(raw, dict):
        return
    for key, value in raw.items():
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        ann = field.annotation
        if isinstance(value, bool) and not _allows_bool(ann):
            raise ConfigError(".".join(path + [key]), f"got {value!r}: expected a number or "
                                                      "name, not a boolean.")
        if key == "data" and cls is Config:
            sub = _data_model({"data": value})
        else:
            sub = _sub_model(ann)
        if sub is not None:
            _refuse_booleans(value, sub, path + [key])


def validate(raw: Any) -> Config:
    """Validate raw config data (a mapping) into a `Config`.

    **Raises:** `ConfigError` naming the first bad key path, the value and what is allowed.

    **Example:**

    ```python
    cfg = nodekit.validate_config({"solver": {"name": "dopri5"}, "train": {"steps": 10}})
    ```
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config must be a mapping of sections, got {type(raw).__name__}.")
    task = raw.get("task", "trajectory")
    want = _TASK_DATA.get(task) if isinstance(task, str) else None
    if want is not None and isinstance(raw.get("data", {}), dict) and "name" not in raw.get("data", {}):
        raw = {**raw, "data": {"name": want, **raw.get("data", {})}}  # the task's default data
    _refuse_booleans(raw, Config, [])
    try:
        cfg = Config.model_validate(raw)
    except pydantic.ValidationError as e:
        errors = e.errors()
        # a wrong value is news to the user; a missing key often follows from it
        first = next((x for x in errors if x["type"] != "missing"), errors[0])
        raise _format_error(first, raw) from None
    if cfg.data.name != _TASK_DATA[cfg.task]:
        raise ConfigError("data.name", f"got {cfg.data.name!r}: task {cfg.task!r} reads "
                                       f"{_TASK_DATA[cfg.task]!r} data.")
    _check_lbfgs_loss(cfg)
    _check_engine(cfg)
    return cfg


def _check_engine(cfg: "Config") -> None:
    """`solver.engine: nodekit` with settings the engine cannot run is a config error
    (the state-size budget is checked when the model is solved)."""
    s, reg = cfg.solver, cfg.regularisation
    if s.engine != "nodekit":
        return
    from .._odeint import engine_for

    regularised = any(x is not None for x in (reg.kinetic, reg.jacobian, reg.taylor))
    try:
        engine_for(s.engine, solver=s.name, adjoint=s.adjoint, dt0=s.dt0,
                   integrals="trapezoid" if regularised else None, checkpoints=s.checkpoints,
                   max_steps=s.max_steps, y0=np.zeros((1,), np.float32))
    except InputError as e:
        raise ConfigError("solver.engine", str(e)) from None


#: Where the built-in configs live (shipped inside the package).
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs"


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with nodekit, by name: `spiral`, `tiny`, `density`, and each
    paper reproduction's runs as `papers/<experiment>/<run>`.

    **Example:**

    ```python
    sorted(nodekit.builtin_configs())[:3]   # ['density', 'papers/...', ...]
    ```
    """
    return {p.relative_to(BUILTIN_DIR).with_suffix("").as_posix(): p
            for p in sorted(BUILTIN_DIR.rglob("*.yaml"))}


def resolve_config(path: str | Path) -> Path:
    """The file a config argument names: an existing path as given, else a built-in
    config's name (`spiral`, or `spiral.yaml`; see `builtin_configs`).

    **Raises:** `ConfigError` when it is neither, listing the built-in names.
    """
    p = Path(path)
    try:
        if p.exists() or p.is_symlink():
            return p
    except OSError:  # e.g. a name too long for the file system: reported when read
        return p
    name = p.as_posix()[:-len(".yaml")] if p.suffix == ".yaml" else p.as_posix()
    builtin = builtin_configs()
    if name in builtin and len(p.parts) <= 3:
        return builtin[name]
    from .._errors import closest

    hint = closest(name, list(builtin))
    did = f"; did you mean the built-in config {hint!r}?" if hint else "."
    tops = ", ".join(n for n in builtin if not n.startswith("papers/"))
    raise ConfigError("", f"config file {str(p)!r} does not exist{did} Give a YAML file's "
                          f"path or a built-in config's name ({tops}, or "
                          "papers/<experiment>/<run>).")


def _ConfigFileError(message: str) -> ConfigError:
    return ConfigError("", message)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file with `yaml.safe_load` (no Python object tags); `path` may
    also name a built-in config (see `resolve_config`).

    **Raises:** `ConfigError` for a missing/unreadable file, bad UTF-8 or bad YAML.
    """
    p = resolve_config(path)
    from .._io import read_bytes_bounded

    blob = read_bytes_bounded(p, kind="config", what=f"config file {str(p)!r}", error=_ConfigFileError)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"config file {str(p)!r} is not UTF-8 text (byte {e.start}).") from None
    try:
        _check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(p))
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("", f"{str(p)!r} is not valid YAML{where}: {problem}.") from None
    except RecursionError:
        raise ConfigError("", f"{str(p)!r} is nested too deeply to be a config.") from None
    if data is None:
        raise ConfigError("", f"config file {str(p)!r} is empty; start from configs/spiral.yaml "
                              "(every key has a default, but an empty file is taken as a mistake).")
    if not isinstance(data, dict):
        raise ConfigError("", f"{str(p)!r} must hold a mapping of sections, got a {type(data).__name__}.")
    _check_plain(data)
    return data


def _check_duplicate_keys(node, where: str) -> None:
    """Refuse a mapping that repeats a key (PyYAML would keep the last one silently)."""
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in keys:
                        line = k.start_mark.line + 1
                        raise ConfigError(k.value, f"duplicate key {k.value!r} at line {line} "
                                                   f"of {where!r}; keep one.")
                    keys.add(k.value)
                stack += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


#: Limits on config data (a config is small: these only stop YAML alias bombs and
#: self-referencing values, which would otherwise hang or crash validation).
MAX_DEPTH, MAX_ITEMS = 32, 10_000


def _check_plain(data) -> None:
    """Refuse values nested deeper than `MAX_DEPTH`, larger than `MAX_ITEMS` (after
    expanding YAML aliases) or referring to themselves, naming the top-level key."""
    count = 0

    def walk(x, path, depth, parents):
        nonlocal count
        count += 1
        where = ".".join(path[:2]) or "the config"
        if count > MAX_ITEMS:
            raise ConfigError(where, f"the config holds more than {MAX_ITEMS} values "
                                     "(a YAML alias expanding without bound?).")
        if depth > MAX_DEPTH:
            raise ConfigError(where, f"a value nested more than {MAX_DEPTH} levels deep.")
        if isinstance(x, (dict, list)):
            if id(x) in parents:
                raise ConfigError(where, "a value that contains itself (a recursive YAML alias).")
            parents = parents | {id(x)}
            items = x.items() if isinstance(x, dict) else enumerate(x)
            for k, v in items:
                walk(v, path + [str(k)], depth + 1, parents)

    walk(data, [], 0, frozenset())


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to raw config
    data. Types and key names are checked when the result is validated.

    **Raises:** `ConfigError` for a malformed override.
    """
    _check_plain(raw)
    raw = json.loads(json.dumps(raw))  # deep copy of plain (checked acyclic) data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                "", f"override {item!r} must look like key.path=value (e.g. solver.rtol=1e-5)."
            )
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(key, f"override {item!r} has an empty key segment.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = text
        _check_plain({key: value})
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    ".".join(parts[: i + 1]),
                    f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section.",
                )
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config.

    **Arguments:**

    - `path`: a YAML file, a built-in config's name (`"spiral"`; see
      `builtin_configs`), or `None` for all defaults.
    - `overrides`: `["solver.rtol=1e-5", ...]`.

    **Returns:** a validated `Config`.

    **Raises:** `ConfigError`.

    **Example:**

    ```python
    cfg = nodekit.load_config("configs/spiral.yaml", ["train.steps=100"])
    ```
    """
    raw = load_yaml(path) if path is not None else {}
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
