"""MkDocs hooks that generate the reference pages from the code, so they cannot drift:

- `<!-- nodekit:config-reference -->`: every config key (type, default, allowed values,
  description) read from the pydantic schema; a key without a description fails the
  build.
- `<!-- nodekit:cli-reference -->`: the `nodekit` command line, from its argparse parser.
- `<!-- nodekit:error-catalogue -->`: the troubleshooting entries of
  `docs/_hooks/errors.yaml`; each entry's example is run at build time and the message
  nodekit really gives is shown (an example that raises nothing, or a message that no
  longer matches the entry's pattern, fails the build).

Wired in `mkdocs.yml` (`hooks:`); `make docs` builds with `--strict`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import tempfile
import types
import typing
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CATALOGUE = HERE / "errors.yaml"


from mkdocs.exceptions import PluginError


class DocsBuildError(PluginError):
    """Raised from a hook: MkDocs reports its message and the build fails."""


# --------------------------------------------------------------------------- config


def _type_text(annotation) -> tuple[str, str]:
    """`(type, allowed values)` of a field annotation, in the words of a YAML user."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is typing.Literal:
        kinds = {type(a).__name__ for a in args}
        kind = "name" if kinds == {"str"} else " or ".join(sorted(kinds))
        return kind, ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        kind = " or ".join(dict.fromkeys(p[0] for p in parts))
        allowed = "; ".join(p[1] for p in parts if p[1])
        if type(None) in args:
            kind += " or null"
        return kind, allowed
    if origin in (list, tuple):
        inner = _type_text(args[0])[0] if args else "value"
        return f"list of {inner}", ""
    if origin is dict:
        return "mapping", ""
    if isinstance(annotation, type):
        if _is_section(annotation):
            return "section", ""
        return {"int": "integer", "float": "number", "bool": "boolean", "str": "text"}.get(
            annotation.__name__, annotation.__name__), ""
    return str(annotation).replace("typing.", ""), ""


def _is_section(annotation) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sections(annotation) -> list:
    """The pydantic models an annotation holds (a section, an optional section, or a
    union of sections such as the data kinds)."""
    if _is_section(annotation):
        return [annotation]
    out = []
    for a in typing.get_args(annotation):
        out += _sections(a)
    return out


def _default_text(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        if _is_section(type(value)):
            return "(section defaults)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if _is_section(type(value)):
        return "(section defaults)"
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def _bounds(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} {v}")
    return ", ".join(out)


def _describe(model, prefix: str, rows: list, missing: list, seen: set) -> list:
    """Rows `(key, type, default, allowed, description)` for `model` under `prefix`;
    returns the sub-sections to document after it."""
    subs = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        kind, allowed = _type_text(field.annotation)
        bounds = _bounds(field)
        if bounds:
            allowed = f"{allowed}; {bounds}" if allowed else bounds
        desc = (field.description or "").strip()
        if not desc:
            missing.append(key)
        rows.append((key, kind, _default_text(field), allowed, desc))
        for sub in _sections(field.annotation):
            if sub not in seen:
                seen.add(sub)
                subs.append((key, sub))
    return subs


def config_reference() -> str:
    """Markdown for every config key, section by section."""
    from nodekit import Config

    out, missing, seen = [], [], {Config}
    queue = [("", Config)]
    while queue:
        key, model = queue.pop(0)
        rows: list = []
        subs = _describe(model, f"{key}." if key else "", rows, missing, seen)
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        tag = model.model_fields.get("name")
        title = f"`{key}`" if key else "Top level"
        if key == "data" or (tag is not None and key.startswith("data")):
            title = f"`{key}` with `name: {tag.default}`" if tag is not None else title
        out += [f"### {title}", "", doc, "",
                "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for row in rows:
            out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |")
        out.append("")
        queue += subs
    if missing:
        raise DocsBuildError("config keys without a description (add `description=` to the "
                             "pydantic Field): " + ", ".join(missing))
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


def _help(argv: list[str]) -> str:
    from nodekit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """Markdown for `nodekit --help` and each command's `--help`."""
    from nodekit.cli import COMMANDS

    out = ["```text", _help(["--help"]), "```", ""]
    for name in COMMANDS:
        out += [f"### `nodekit {name}`", "", "```text", _help([name, "--help"]), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- errors


def load_catalogue() -> list[dict]:
    entries = yaml.safe_load(CATALOGUE.read_text())
    ids = [e["id"] for e in entries]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise DocsBuildError(f"{CATALOGUE.name}: duplicate ids {sorted(dupes)}")
    for e in entries:
        for key in ("id", "kind", "title", "pattern", "cause", "fix", "example"):
            if key not in e:
                raise DocsBuildError(f"{CATALOGUE.name}: entry {e.get('id')!r} has no {key!r}")
    return entries


def run_example(entry: dict) -> tuple[str, str]:
    """Run an entry's example; returns `(error type, message)` of what it raised (for a
    `shell` example: the exit code and the last line nodekit printed)."""
    code = entry["example"]
    with tempfile.TemporaryDirectory() as tmp, _chdir(tmp):
        for name, text in (entry.get("files") or {}).items():
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_text(text)
        if entry.get("shell"):
            from nodekit.cli import main

            err = io.StringIO()
            line = code.strip().splitlines()[-1]
            argv = shlex.split(line)
            assert argv[0] == "nodekit", line
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv[1:])
            printed = [ln for ln in err.getvalue().splitlines() if ln.startswith("nodekit:")]
            return f"exit {rc}", printed[-1] if printed else ""
        try:
            exec(compile(code, f"<{entry['id']}>", "exec"), {"__name__": "__example__"})
        except Exception as e:  # noqa: BLE001 - the point is to catch what it raises
            return type(e).__name__, str(e)
    return "", ""


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def check_entry(entry: dict) -> tuple[str, str]:
    kind, message = run_example(entry)
    if not kind:
        raise DocsBuildError(f"error catalogue entry {entry['id']!r}: its example raised nothing")
    if not re.search(entry["pattern"], message, flags=re.S):
        raise DocsBuildError(f"error catalogue entry {entry['id']!r}: the message no longer "
                             f"matches its pattern {entry['pattern']!r}:\n{message}")
    return kind, message


def error_catalogue() -> str:
    entries = load_catalogue()
    kinds = list(dict.fromkeys(e["kind"] for e in entries))
    out = []
    for kind in kinds:
        out += [f"## {kind}", ""]
        for e in (x for x in entries if x["kind"] == kind):
            err, message = check_entry(e)
            lang = "bash" if e.get("shell") else "python"
            out += [f"### {e['title']} {{#{e['id']}}}", "",
                    "```text", f"{err}: {message}" if not e.get("shell") else message, "```", "",
                    f"**Cause.** {e['cause'].strip()}", "",
                    "**Example that triggers it:**", ""]
            for name, text in (e.get("files") or {}).items():
                out += [f"`{name}`:", "", "```yaml" if name.endswith((".yaml", ".yml")) else "```text",
                        text.rstrip(), "```", ""]
            out += [f"```{lang}", e["example"].rstrip(), "```", "",
                    f"**Fix.** {e['fix'].strip()}", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- API


def public_names(module_name: str) -> list[str]:
    """The public names of a nodekit module: its `__all__`, or else every name it
    imports that does not start with an underscore (modules excluded)."""
    import importlib
    import inspect

    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n in vars(mod) if not n.startswith("_")
                 and not inspect.ismodule(getattr(mod, n))]
    return [n for n in names if not n.startswith("_")]


#: Headings of the API page, by the implementation module a name comes from.
_API_GROUPS = {
    "_odeint": "Solving an ODE", "_settings": "Solving an ODE", "_diffrax_solve": "Solving an ODE",
    "_neural_ode": "Neural ODEs", "_fields": "Vector fields",
    "_regularisers": "Regularisers", "_loop": "Training", "_step": "Training",
    "_optim": "Training", "_load_run": "Training", "_config": "Configs", "_errors": "Errors",
}


def api_reference(module_name: str) -> str:
    """`::: module.name` for every public name, grouped by where it is implemented."""
    import importlib

    mod = importlib.import_module(module_name)
    groups: dict[str, list[str]] = {}
    for name in public_names(module_name):
        obj = getattr(mod, name)
        lazy = getattr(mod, "_LAZY", {})  # nodekit's table: public name -> (module, attr)
        origin = (lazy[name][0] if name in lazy else getattr(obj, "__module__", "")) or ""
        part = origin.lstrip(".").split(".")[-1]
        if module_name == "nodekit" and origin.startswith("nodekit."):
            part = origin.split(".")[1]
        heading = _API_GROUPS.get(part, "Other" if module_name == "nodekit" else
                                  part.strip("_").replace("_", " ").capitalize() or "Other")
        groups.setdefault(heading, []).append(name)
    order = list(dict.fromkeys(_API_GROUPS.values()))
    out = []
    for heading in sorted(groups, key=lambda h: (order.index(h) if h in order else len(order), h)):
        out += [f"## {heading}", ""]
        for name in groups[heading]:
            out += [f"::: {module_name}.{name}", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- hooks

_MARKERS = {
    "<!-- nodekit:config-reference -->": config_reference,
    "<!-- nodekit:cli-reference -->": cli_reference,
    "<!-- nodekit:error-catalogue -->": error_catalogue,
}


_API_MARKER = re.compile(r"<!-- nodekit:api ([\w.]+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for marker, make in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return _API_MARKER.sub(lambda m: api_reference(m.group(1)), markdown)
