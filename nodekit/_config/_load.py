"""The one gate: YAML loading (safe, bounded), dotted `--set` overrides, and `validate`,
which turns raw data into a `Config` or one `ConfigError` naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .._errors import ConfigError
from ._schema import TASK_DATA, Config
from ._wording import _format_error


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-5` and `1E+3` are
    floats (YAML 1.1, PyYAML's default, wants a dot and reads them as strings)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)

#: Python refuses to read integers longer than this (a guard against slow parsing).
MAX_INT_DIGITS = 4300


def _too_long_int(text: str) -> bool:
    digits = text.lstrip("+-").replace("_", "")
    return digits.isdigit() and len(digits) > MAX_INT_DIGITS


def _int_message(text: str) -> str:
    n = len(text.lstrip("+-").replace("_", ""))
    return (f"got an integer of {n} digits: no config value needs more than "
            f"{MAX_INT_DIGITS} digits.")


def _yaml_value(text: str):
    """One `--set` value parsed as a YAML scalar (with `ConfigLoader`)."""
    return yaml.load(text, Loader=ConfigLoader)


def validate(raw: Any, *, base_dir: str | Path | None = None) -> Config:
    """Validate raw config data (a mapping) into a `Config`: the one gate that both
    `nodekit validate` and `nodekit train` pass through (the checks that need the data
    run when the task is built, `nodekit.tasks.make_task`).

    **Arguments:**

    - `raw`: the config as plain data (sections as mappings).
    - `base_dir`: the folder that relative paths in the config (`data.path`,
      `model.field.path`, ...) are resolved against; default the current directory.

    **Returns:** a validated `Config` (paths absolute; `config.base_dir` is the folder).

    **Raises:** `ConfigError` naming the first bad key path, the value and what is allowed.

    **Example:**

    ```python
    import nodekit

    cfg = nodekit.validate_config({"solver": {"name": "dopri5"}, "train": {"steps": 10}})
    print(cfg.solver.name)
    ```
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config must be a mapping of sections, got {type(raw).__name__}.")
    task = raw.get("task", "trajectory")
    want = TASK_DATA.get(task) if isinstance(task, str) else None
    if want is not None and isinstance(raw.get("data", {}), dict) and "name" not in raw.get("data", {}):
        raw = {**raw, "data": {"name": want[0], **raw.get("data", {})}}  # the task's default data
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    sweep = None
    if "sweep" in raw:  # for nodekit sweep: checked here, kept beside the run's config
        raw = dict(raw)
        sweep = _validate_sweep(raw.pop("sweep"), raw)
    try:
        cfg = Config.model_validate(raw, context={"base_dir": base})
    except pydantic.ValidationError as e:
        errors = e.errors()
        # a wrong value is news to the user; a missing key often follows from it
        first = next((x for x in errors if x["type"] != "missing"), errors[0])
        raise _format_error(first, raw) from None
    cfg._base_dir = base
    cfg._sweep = sweep
    return cfg


def _validate_sweep(data: Any, raw: dict):
    """The `sweep:` section as a `SweepConfig` (its members are checked by
    `nodekit.sweep`, which validates each member's config like this one)."""
    from ._schema import SweepConfig

    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("sweep", f"must be a mapping (grid, seeds), got {type(data).__name__}.")
    try:
        sweep = SweepConfig.model_validate(data)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            raise ConfigError(".".join(p for p in ("sweep", loc, inner.path) if p),
                              inner.message) from None
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"sweep.{loc}", f"unknown key {loc!r} under sweep. Allowed keys: "
                                              f"{', '.join(SweepConfig.model_fields)}.") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"sweep.{loc}".rstrip("."),
                          f"got {err.get('input')!r}: {msg}.".replace("..", ".")) from None
    sweep._raw = json.loads(json.dumps(raw))
    return sweep


#: Where the built-in configs live (shipped inside the package).
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs"


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with nodekit, by name: `spiral`, `tiny`, `density`, the
    worked examples as `examples/<name>`, and each paper reproduction's runs as
    `papers/<experiment>/<run>`.

    **Example:**

    ```python
    import nodekit

    print(sorted(nodekit.builtin_configs())[:2])   # ['density', 'examples/irregular']
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
        _check_nodes(yaml.compose(text, Loader=ConfigLoader), str(p))
        data = yaml.load(text, Loader=ConfigLoader)
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


def _check_nodes(node, where: str) -> None:
    """Refuse a mapping that repeats a key (PyYAML would keep the last one silently) and
    an integer too long for Python to read, naming the key path."""
    stack, seen = [(node, [])], set()
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in keys:
                        line = k.start_mark.line + 1
                        raise ConfigError(".".join(path + [k.value]),
                                          f"duplicate key {k.value!r} at line {line} of "
                                          f"{where!r}; keep one.")
                    keys.add(k.value)
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack += [(k, path), (v, path + [str(name)])]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(v, path + [str(i)]) for i, v in enumerate(node.value)]
        elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int" \
                and _too_long_int(node.value):
            raise ConfigError(".".join(path), _int_message(node.value)
                              + f" (line {node.start_mark.line + 1} of {where!r})")


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
        if _too_long_int(text.strip()):
            raise ConfigError(key.strip(), _int_message(text.strip()))
        try:
            value = _yaml_value(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError, ValueError):
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

    Relative paths in the config (`data.path`, `model.field.path`, ...), including
    ones given by `overrides`, are resolved against the config file's folder (the
    current directory when `path` is `None`); `config.base_dir` records that folder.

    **Arguments:**

    - `path`: a YAML file, a built-in config's name (`"spiral"`; see
      `builtin_configs`), or `None` for all defaults.
    - `overrides`: `["solver.rtol=1e-5", ...]`.

    **Returns:** a validated `Config`.

    **Raises:** `ConfigError` naming the key path (for an unknown key given by an
    override, the whole dotted key as given).

    **Example:**

    ```python
    import nodekit

    cfg = nodekit.load_config("spiral", ["train.steps=100"])
    print(cfg.train.steps)
    ```
    """
    base = None
    if path is not None:
        path = resolve_config(path)
        base = Path(path).resolve().parent
    raw = load_yaml(path) if path is not None else {}
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return validate(raw, base_dir=base)
    except ConfigError as e:
        raise _name_the_override(e, overrides or []) from None


def _name_the_override(e: ConfigError, overrides: list[str]) -> ConfigError:
    """An unknown key that an override introduced is named by the whole dotted key the
    user typed (`--set no.such.key=3` names `no.such.key`, not just `no`)."""
    if not e.path or not e.message.startswith("unknown key"):
        return e
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(e.path + "."):
            return ConfigError(key, f"{e.message} (from --set {key}=...)")
    return e


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
