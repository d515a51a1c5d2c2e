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

import ast
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

try:  # the test suite imports these helpers without the docs extra installed
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover - only outside a docs build
    PluginError = Exception


class DocsBuildError(PluginError):
    """Raised from a hook: MkDocs reports its message and the build fails."""


# --------------------------------------------------------------------------- config
#
# The config reference: one table per section (pydantic model), walked depth first
# from `Config` (then the `sweep:` section, which `nodekit sweep` reads beside it).
# Each row: the key path, its type, default, allowed values (names, bounds) and the
# field's `description=`; a field without one fails the build.


def _plain_number(v) -> str:
    """A bound as a reader writes it: `1,000,000`, `0.001`, `1e6`."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e5:
        v = int(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def _bounds_text(metadata) -> str:
    """The tightest lower and upper bounds among pydantic/annotated-types constraints,
    e.g. `≥ 20, ≤ 1,000,000` (a `gt=0` under a `ge=20` says nothing more)."""
    lower = upper = None  # (value, inclusive)
    for m in metadata:
        for attr, inclusive, is_lower in (("gt", False, True), ("ge", True, True),
                                          ("lt", False, False), ("le", True, False)):
            v = getattr(m, attr, None)
            if v is None:
                continue
            if is_lower:
                if lower is None or v > lower[0] or (v == lower[0] and not inclusive):
                    lower = (v, inclusive)
            elif upper is None or v < upper[0] or (v == upper[0] and not inclusive):
                upper = (v, inclusive)
    out = []
    if lower is not None:
        out.append(f"{'≥' if lower[1] else '>'} {_plain_number(lower[0])}")
    if upper is not None:
        out.append(f"{'≤' if upper[1] else '<'} {_plain_number(upper[0])}")
    return ", ".join(out)


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


def _section_anchor(key: str, model) -> str:
    """The id of a section's heading: `model-field`, or `data-spiral` for a data kind."""
    tag = model.model_fields.get("name")
    if key == "data" and tag is not None:
        key = f"data-{tag.default}"
    return key.replace(".", "-").replace("_", "-") or "top-level"


def _members(annotation, metadata=()) -> list[tuple[str, str]]:
    """`(type, allowed)` of each alternative of an annotation, in a YAML user's words:
    `("integer", "> 0")`, `("name", "`vmap`, `joint`")`, `("null", "")`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = [m for a in args[1:] for m in getattr(a, "metadata", [a])]
        return _members(args[0], [*metadata, *inner])
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _members(a)]
    if annotation is type(None):
        return [("null", "")]
    if origin is typing.Literal:
        kinds = {type(a).__name__ for a in args}
        kind = "name" if kinds == {"str"} else " or ".join(sorted(kinds))
        return [(kind, ", ".join(f"`{a}`" for a in args))]
    if origin in (list, tuple):
        inner = _members(args[0]) if args else [("value", "")]
        kind = " or ".join(dict.fromkeys(k for k, _ in inner))
        allowed = "; ".join(f"any of {a}" if k == "name" else f"each {a}"
                            for k, a in inner if a)
        return [(f"list of {kind}", allowed)]
    if origin is dict or annotation is dict:
        return [("mapping", "")]
    if _is_section(annotation):
        return [("section", "")]
    if isinstance(annotation, type):
        kind = {"int": "integer", "float": "number", "bool": "boolean", "str": "text"}.get(
            annotation.__name__, annotation.__name__)
        return [(kind, _bounds_text(metadata))]
    return [(str(annotation).replace("typing.", ""), "")]


def _type_and_allowed(key: str, field) -> tuple[str, str]:
    """The type and allowed-values cells of a field (a section's type links to its
    table; a union of sections lists its kinds, each linked)."""
    subs = _sections(field.annotation)
    if len(subs) > 1:  # the data kinds, chosen by `name`
        kinds = [f"[`{m.model_fields['name'].default}`](#{_section_anchor(key, m)})"
                 for m in subs]
        return "section", f"by `{key}.name`: " + ", ".join(kinds)
    members = _members(field.annotation, field.metadata)
    kinds = []
    for kind, _ in members:
        if kind == "section":
            kind = f"[section](#{_section_anchor(key, subs[0])})"
        if kind not in kinds:
            kinds.append(kind)
    if "null" in kinds:  # "or null" last
        kinds.remove("null")
        kinds.append("null")
    allowed = [a for _, a in members if a]
    if len(allowed) > 1 or (allowed and len([k for k, _ in members if k != "null"]) > 1):
        # several alternatives: say which each allowed text belongs to
        allowed = [a if k in ("name", "section") else f"{k} {a}" for k, a in members if a]
    return " or ".join(kinds), "; ".join(allowed)


def _default_text(key: str, field) -> str:
    from pydantic_core import PydanticUndefined

    if len(_sections(field.annotation)) > 1:  # the data kinds: each task has its own
        from nodekit._config._schema import TASK_DATA

        return "by task: " + ", ".join(f"`{kinds[0]}` ({task})" for task, kinds in TASK_DATA.items())
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if _is_section(type(value)):
        return "its defaults"
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    """Table-cell text: one line, `|` escaped outside code spans (inside them Python-
    Markdown's tables already keep it, and a backslash would show)."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] if text[:1].isalpha() else text


def _intro(model) -> str:
    """A section's docstring up to its example, as Markdown."""
    import inspect

    doc = inspect.cleandoc(model.__doc__ or "")
    return doc.split("**Example:**")[0].strip()


def _section_table(key: str, model, missing: list) -> list[str]:
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    prefix = f"{key}." if key else ""
    for name, field in model.model_fields.items():
        desc = (field.description or "").strip()
        if not desc:
            missing.append(f"{prefix}{name} ({model.__name__})")
        kind, allowed = _type_and_allowed(f"{prefix}{name}", field)
        # the key as written inside its section (the heading names the section)
        cells = [f"`{name}`", kind, _default_text(f"{prefix}{name}", field), allowed,
                 _sentence(desc)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _walk(key: str, model, missing: list, seen: set) -> list[str]:
    """The tables of `model` (at `key`) and of its sub-sections, depth first."""
    if key == "":
        title = "Top level"
        intro = ("The keys outside any section, and the sections themselves; each section "
                 "has its own table below.")
    elif key == "data":
        title = f"`data` with `name: {model.model_fields['name'].default}`"
        intro = _intro(model)
    else:
        title, intro = f"`{key}`", _intro(model)
    out = [f"## {title} {{#{_section_anchor(key, model)}}}", "", intro, ""]
    out += _section_table(key, model, missing) + [""]
    for name, field in model.model_fields.items():
        for sub in _sections(field.annotation):
            if sub not in seen:
                seen.add(sub)
                out += _walk(f"{key}.{name}" if key else name, sub, missing, seen)
    return out


def config_reference() -> str:
    """Markdown for every config key, section by section: the run's config (from
    `nodekit.Config`), then the `sweep:` section of `nodekit sweep`.

    **Raises:** `DocsBuildError` naming every key without a `description=`."""
    from nodekit import Config
    from nodekit._config._schema import SweepConfig

    missing: list[str] = []
    out = _walk("", Config, missing, {Config})
    sweep = _walk("sweep", SweepConfig, missing, {SweepConfig})
    sweep[0] = sweep[0].replace("`sweep`", "`sweep` (for `nodekit sweep`)", 1)
    out += sweep
    if missing:
        raise DocsBuildError("config keys without a description (add `description=` to the "
                             "pydantic Field in nodekit/_config/_schema.py): "
                             + ", ".join(missing))
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
#
# The troubleshooting page. `docs/_hooks/errors.yaml` holds one entry per FAMILY of
# messages: a runnable example (Python, or `nodekit ...` command lines with the files
# they read) whose real message is shown on the page and must match the entry's
# `pattern`, and `covers`: the distinctive phrases of the family's other messages. The
# raise sites are read from nodekit's source (`message_templates`); `tests/test_docs.py`
# requires every one of them to be covered by an entry, and the page lists, under each
# entry, the messages it covers.


#: The page's sections, in order: `kind` key -> (heading, anchor, what they have in common).
KINDS = {
    "config": ("Config errors (exit 2)", "config",
               "The config (a YAML file, `--set` overrides, or the dict given to "
               "`nodekit.train`) is checked as a whole before anything runs. The message "
               "starts with the key path; `nodekit validate CONFIG` shows the same message "
               "without training."),
    "data": ("Data files (exit 2)", "data-files",
             "Your own CSV or NPZ file (`data: {name: file, ...}`) is read and checked before "
             "training starts; the message names the file, the line or array index, and the "
             "column."),
    "code": ("Your own code in a config (exit 2)", "your-code",
             "A vector field from your own module (`model.field: {type: python, target: "
             "\"module:Name\"}`) is imported and called once on a state before compiling."),
    "python": ("Python API input errors (InputError)", "python-api",
               "Arguments of `nodekit.odeint`, `nodekit.NeuralODE`, the models, regularisers "
               "and data generators are checked when called, before any compilation. The "
               "exception is `nodekit.InputError` (a `ValueError`); the message names the "
               "argument as you typed it."),
    "solver": ("Solver failures (SolverError)", "solver",
               "A solve that cannot reach the end time raises `nodekit.SolverError` (a "
               "`TrainingFault`) from `odeint` and the models; in a training run the same "
               "failure ends the run with exit code 3 (next section)."),
    "training": ("Training faults (exit 3)", "training",
                 "Training stopped on a fault: the update of the failing step is not applied, "
                 "the last good checkpoint is kept, and `summary.json` records the status. "
                 "`nodekit.train` raises `nodekit.TrainingFault`."),
    "rundir": ("Checkpoints and run folders (exit 2)", "run-folders",
               "A workdir that cannot be used as asked: another config's run, a damaged "
               "checkpoint, a folder in use or not writable. `nodekit.train` raises "
               "`nodekit.CheckpointError` or `nodekit.InputError`; nothing is overwritten."),
    "stop": ("Stop signals (exit 130 / 143)", "stop-signals",
             "Not an error: the run was asked to stop (Ctrl-C is SIGINT, a scheduler's "
             "SIGTERM). It finishes the step in progress, writes a checkpoint and the "
             "summary, and exits with 128 + the signal number. Rerun the same command to "
             "resume."),
}


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
        if e["kind"] not in KINDS:
            raise DocsBuildError(f"{CATALOGUE.name}: entry {e['id']!r} has kind {e['kind']!r}; "
                                 f"kinds: {', '.join(KINDS)}")
        unknown = set(e) - {"id", "kind", "title", "pattern", "cause", "fix", "example",
                            "shell", "files", "covers"}
        if unknown:
            raise DocsBuildError(f"{CATALOGUE.name}: entry {e['id']!r} has unknown keys "
                                 f"{sorted(unknown)}")
    return entries


def _shell_lines(code: str) -> list[str]:
    """The `nodekit ...` command lines of a shell example (comments and blank lines
    skipped), each run in order."""
    return [ln.strip() for ln in code.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def run_example(entry: dict) -> tuple[str, str]:
    """Run an entry's example; returns `(error type, message)` of what it raised (for a
    `shell` example: the exit code of its last command and the message nodekit printed
    last, from its `nodekit:` line on)."""
    code = entry["example"]
    with tempfile.TemporaryDirectory() as tmp, _chdir(tmp):
        for name, text in (entry.get("files") or {}).items():
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_text(text)
        if entry.get("shell"):
            from nodekit.cli import main

            rc, text = None, ""
            for line in _shell_lines(code):
                argv = shlex.split(line)
                if argv[0] != "nodekit":
                    raise DocsBuildError(f"error catalogue entry {entry['id']!r}: a shell "
                                         f"example runs `nodekit ...` lines only: {line}")
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(argv[1:])
                text = err.getvalue()
            lines = text.rstrip("\n").splitlines()
            starts = [i for i, ln in enumerate(lines) if ln.startswith("nodekit:")]
            message = "\n".join(lines[starts[-1]:]) if starts else ""
            return (f"exit {rc}", message) if rc else ("", message)
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


# ---- the raise sites


class Template(typing.NamedTuple):
    """A message nodekit can raise, read from its source: `parts` are the literal pieces
    of the message with `None` for each interpolated value."""

    file: str
    line: int
    parts: tuple

    @property
    def regex(self) -> str:
        return "".join(".*" if p is None else re.escape(p) for p in self.parts)

    @property
    def literal(self) -> str:
        """The longest literal run: what a `covers` phrase of an entry must appear in."""
        return max((p for p in self.parts if p is not None), key=len, default="")

    @property
    def shown(self) -> str:
        """The message as the page shows it, `…` for each interpolated value."""
        return "".join("…" if p is None else p for p in self.parts)


#: Calls whose first string argument is a message, raised or not (and any class raised
#: with a string): the exception types and the helpers that make one (`_error(message, reason)` of the checkpoint reader,
#: `error(...)` of the file reader). Helpers that build the whole exception
#: (`unexpected_keywords`, `_format_error`) are read through the calls inside them.
_MESSAGE_CALL = re.compile(r"(Error|Fault|Stopped|_error|^error)$")
#: Functions that build messages as strings (`unknown_name_message`,
#: `solver_failure_message`, `_call_failure`, ...): every string they return is a message.
_MESSAGE_BUILDER = re.compile(r"(_message|_failure)$")


def _parts(node) -> list | None:
    """The literal pieces of the text an expression builds (`None` for each computed
    piece), or `None` when it builds no literal text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value if isinstance(v, ast.Constant) else None for v in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _parts(node.left), _parts(node.right)
        if a is None and b is None:
            return None
        return (a or [None]) + (b or [None])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("replace", "strip", "rstrip") and node.func.value is not None:
        return _parts(node.func.value)  # f"...".replace("..", ".")
    return None


def _message_arg(call: ast.Call):
    name = getattr(call.func, "id", getattr(call.func, "attr", ""))
    if not call.args:
        return None
    if name == "ConfigError" and len(call.args) > 1:
        return call.args[-1]  # ConfigError(path, message)
    return call.args[0]


def _merge(parts: list) -> tuple:
    out: list = []
    for p in parts:
        if p is None and out and out[-1] is None:
            continue
        if p is not None and out and out[-1] is not None:
            out[-1] += p
            continue
        out.append(p)
    return tuple(out)


def _source_root() -> Path:
    """The folder that holds the `nodekit` package being documented."""
    import nodekit

    return Path(nodekit.__file__).resolve().parents[1]


def message_templates(root: Path | None = None) -> list[Template]:
    """Every message template in `root/nodekit`: the message of each exception made,
    raised or returned (`return ConfigError(...)`), and each string returned by a
    message builder. Templates with fewer than 12 letters of literal text (a bare
    `str(e)`) are left out: there is nothing to document in them."""
    root = _source_root() if root is None else root
    out, seen = [], set()
    for path in sorted((root / "nodekit").rglob("*.py")):
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text())
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
                if name[:1].isupper():  # any exception class raised with a message
                    found.append((node.lineno, _message_arg(node.exc)))
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if _MESSAGE_CALL.search(name):
                    found.append((node.lineno, _message_arg(node)))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and _MESSAGE_BUILDER.search(node.name):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Return) and sub.value is not None:
                        found.append((sub.lineno, sub.value))
                    elif isinstance(sub, ast.Assign) and any(
                            getattr(t, "id", "") == "msg" for t in sub.targets):
                        found.append((sub.lineno, sub.value))
        while any(isinstance(arg, ast.IfExp) for _, arg in found):
            found = [alt for line, arg in found for alt in (
                [(line, arg.body), (line, arg.orelse)] if isinstance(arg, ast.IfExp)
                else [(line, arg)])]  # `A if c else B`: two messages
        for line, arg in found:
            parts = _parts(arg) if arg is not None else None
            if parts is None:
                continue
            t = Template(rel, line, _merge(parts))
            if (rel, line, t.parts) in seen or \
                    len(re.sub(r"[^a-z]", "", "".join(p or "" for p in t.parts).lower())) < 12:
                continue
            seen.add((rel, line, t.parts))
            out.append(t)
    return out


def covers_template(entry: dict, message: str, template: Template) -> bool:
    """Whether `entry` (whose example gave `message`) documents `template`: the
    template's regex matches the real message, or one of the entry's `covers` phrases
    lies in the template's longest literal run. A phrase is at least 20 characters, or
    the whole of that run (so a short generic phrase cannot cover new wording)."""
    if re.search(template.regex, message, re.S):
        return True
    return any(phrase_covers(p, template) for p in entry.get("covers") or ())


def phrase_covers(phrase: str, template: Template) -> bool:
    """Whether a `covers` phrase names `template`: it lies in the template's longest
    literal run and is 20+ characters long or that whole run (spaces aside)."""
    run = template.literal
    return phrase in run and (len(phrase) >= 20 or phrase.strip() == run.strip())


def _templates_by_entry(entries, messages, templates) -> dict[str, list[Template]]:
    out: dict[str, list[Template]] = {e["id"]: [] for e in entries}
    for t in templates:
        for e in entries:
            if covers_template(e, messages[e["id"]], t):
                out[e["id"]].append(t)
                break
    return out


# ---- the page


def _fence(lang: str, text: str) -> list[str]:
    return [f"```{lang}", text.rstrip(), "```", ""]


def error_catalogue() -> str:
    entries = load_catalogue()
    results = {e["id"]: check_entry(e) for e in entries}
    messages = {k: v[1] for k, v in results.items()}
    templates = message_templates()
    if not templates:
        raise DocsBuildError("error catalogue: no raise sites found in nodekit's source")
    related = _templates_by_entry(entries, messages, templates)
    out = []
    for kind, (heading, anchor, intro) in KINDS.items():
        mine = [e for e in entries if e["kind"] == kind]
        if not mine:
            continue
        out += [f"## {heading} {{#{anchor}}}", "", intro, ""]
        for e in mine:
            err, message = results[e["id"]]
            out += [f"### {e['title']} {{#{e['id']}}}", ""]
            out += _fence("text", message if e.get("shell") else f"{err}: {message}")
            if e.get("shell"):
                out += [f"Exit code {err.removeprefix('exit ')}.", ""]
            out += [f"**Cause.** {e['cause'].strip()}", "", f"**Fix.** {e['fix'].strip()}", "",
                    "**Example that gives it:**", ""]
            for name, text in (e.get("files") or {}).items():
                lang = ("yaml" if name.endswith((".yaml", ".yml")) else
                        "python" if name.endswith(".py") else "text")
                out += [f"`{name}`:", ""] + _fence(lang, text)
            out += _fence("bash" if e.get("shell") else "python", e["example"])
            others = sorted({t.shown.strip() for t in related[e["id"]]} - {""})
            if others:
                out += ["??? note \"Related messages (%d)\"" % len(others), ""]
                out += [f"    - `{_code_span(t)}`" for t in others]
                out.append("")
    return "\n".join(out)


def _code_span(text: str) -> str:
    return " ".join(text.split()).replace("`", "'")


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
    "_optim": "Training", "_load_run": "Training", "_build": "Training",
    "_signals": "Training", "_sweep": "Sweeps", "_config": "Configs", "_errors": "Errors",
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
