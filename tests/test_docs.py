"""Every example in the documentation runs, and every error message has an entry.

- Each ```python block in `docs/**/*.md`, in `README.md` and in the docstrings of the
  public API (`nodekit`, `nodekit.models`, `nodekit.data` and their public classes'
  methods) is executed. Blocks of one page or one docstring share a namespace, in
  order, as a reader would run them. A block whose first line is `# not run: <reason>`
  is skipped (the reason is shown on the page).
- All blocks run in ONE subprocess (one JAX start-up, no test-suite settings such as
  strict dtype promotion leaking into user-style code), each page in a fresh temporary
  working directory; the tests below report each page's result.
- The troubleshooting catalogue (`docs/_hooks/errors.yaml`) is checked against the
  raise sites in `nodekit/`: every message template that nodekit can raise must match
  the real message of a catalogue entry's example, or hold one of an entry's `covers`
  phrases (see "errors" below).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = "# not run:"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)


def blocks_in(text: str) -> list[str]:
    """The ```python blocks of a Markdown text or docstring, dedented."""
    return [textwrap.dedent(m.group("body")) for m in FENCE.finditer(text)]


def _doc_sources() -> dict[str, str]:
    out = {}
    for p in sorted(DOCS.rglob("*.md")):
        if "_hooks" in p.parts:
            continue
        out[str(p.relative_to(ROOT))] = p.read_text()
    out["README.md"] = (ROOT / "README.md").read_text()
    return out


def _docstring_sources() -> dict[str, str]:
    """`{qualified name: docstring}` of the public API and its public methods."""
    import importlib
    import inspect

    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        from nodekit_docs import public_names
    finally:
        sys.path.pop(0)
    out = {}
    for module_name in ("nodekit", "nodekit.models", "nodekit.data"):
        mod = importlib.import_module(module_name)
        for name in public_names(module_name):
            obj = getattr(mod, name)
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or callable(obj)) else None
            if doc and getattr(obj, "__module__", "").startswith("nodekit"):
                out[f"{module_name}.{name}"] = doc
            if inspect.isclass(obj) and obj.__module__.startswith("nodekit"):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    target = getattr(member, "fget", None) or getattr(member, "__func__", member)
                    mdoc = getattr(target, "__doc__", None)
                    if mdoc and callable(target):
                        out[f"{module_name}.{name}.{attr}"] = inspect.cleandoc(mdoc)
    return out


def collect() -> dict[str, list[str]]:
    """`{source: [code blocks]}` for every source with at least one block."""
    sources = {**_doc_sources(), **_docstring_sources()}
    return {k: b for k, v in sources.items() if (b := blocks_in(v))}


RUNNER = r'''
import contextlib, json, os, sys, tempfile, time, traceback
groups = json.loads(sys.stdin.read())
results = {}
for name, blocks in groups.items():
    t0 = time.perf_counter()
    ns = {"__name__": "__docs_example__"}
    status = "ok"
    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        os.chdir(tmp)
        try:
            for i, code in enumerate(blocks):
                if code.lstrip().startswith("# not run:"):
                    continue
                exec(compile(code, f"<{name} block {i + 1}>", "exec"), ns)
        except BaseException:
            status = traceback.format_exc(limit=6)
        finally:
            os.chdir(old)
    results[name] = {"status": status, "seconds": time.perf_counter() - t0}
print(json.dumps(results))
'''

_GROUPS = collect()


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    # the examples run as a reader runs them: without the suite's XLA setting (conftest)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_backend_optimization_level")]
    env["XLA_FLAGS"] = " ".join(flags)
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(_GROUPS),
                          capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.docs  # (`make docs`; the default suite leaves them out for its time budget)
@pytest.mark.parametrize("source", sorted(_GROUPS))
def test_example_runs(results, source):
    r = results[source]
    assert r["status"] == "ok", f"{source}:\n{r['status']}"


def test_every_public_name_has_an_example():
    """Every public function and class of `nodekit`, `nodekit.models` and `nodekit.data`
    shows an example in its docstring (methods may rely on their class's)."""
    docs = _docstring_sources()
    top = [n for n in docs if n.count(".") == (2 if n.split(".")[1] in ("models", "data") else 1)]
    missing = sorted(n for n in top if not blocks_in(docs[n]))
    assert not missing, "public names without an example: " + ", ".join(missing)


# --------------------------------------------------------------------------- errors
#
# The troubleshooting catalogue (`docs/_hooks/errors.yaml`) documents FAMILIES of
# messages: each entry's example is run and its real message must match the entry's
# pattern; the entry's `covers` phrases name the family's other messages. The raise sites
# are read from the source by the docs hook (`message_templates`, the one scanner the page
# uses too), and every template must be covered: matched by the real message of an
# entry's example, or holding one of an entry's `covers` phrases in its longest literal
# run (a phrase of 20+ characters, or that whole run). New wording at a new raise site
# therefore fails `test_every_raised_message_has_a_troubleshooting_entry`.


def _hooks():
    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        import nodekit_docs
    finally:
        sys.path.pop(0)
    return nodekit_docs


#: Raise sites that are not messages to a user (internal invariants and cache
#: bookkeeping that nodekit catches itself), as `(file, a phrase of the message)`. Keep
#: this short: a message a user can see belongs in the catalogue.
INTERNAL = [
    # the step cache's reader: CacheMismatch is caught, the entry is rebuilt silently
    ("nodekit/_io.py", "not a nodekit cache entry"),
    ("nodekit/_io.py", "stored under another key"),
    ("nodekit/_io.py", "its content does not match its hash"),
    ("nodekit/_io.py", "unreadable header"),
    # a sweep's grouping invariant (members of one group share data or take it as input)
    ("nodekit/_ensemble.py", "members with differing data in a group"),
    # a paper reproduction's claims spec: written by nodekit's own experiments, checked
    # when they are defined (tests/test_experiments.py), not input from a user
    ("nodekit/experiments/_common.py", "a claim needs at least one Check"),
    ("nodekit/experiments/_common.py", "unknown comparison"),
    # Python's own wording for a missing module attribute (nodekit's lazy imports)
    ("nodekit/__init__.py", "has no attribute"),
]


def _is_internal(t) -> bool:
    return any(t.file == f and phrase in t.shown for f, phrase in INTERNAL)


@pytest.fixture(scope="module")
def catalogue():
    """`(entries, {id: real message})`: each entry's example run once."""
    hooks = _hooks()
    entries = hooks.load_catalogue()
    return entries, {e["id"]: hooks.check_entry(e)[1] for e in entries}


@pytest.mark.docs  # runs the catalogue's examples (`make docs`)
def test_every_raised_message_has_a_troubleshooting_entry(catalogue):
    hooks = _hooks()
    entries, messages = catalogue
    templates = hooks.message_templates()
    assert len(templates) > 250  # the scan finds nodekit's raise sites and message builders
    missing = [f"{t.file}:{t.line}: {t.shown[:100]}" for t in templates
               if not _is_internal(t)
               and not any(hooks.covers_template(e, messages[e["id"]], t) for e in entries)]
    assert not missing, (f"{len(missing)} messages have no entry in docs/_hooks/errors.yaml "
                         "(add one whose example raises it, or a `covers` phrase to the "
                         "entry of its family):\n" + "\n".join(missing))


@pytest.mark.docs  # runs the catalogue's examples (`make docs`)
def test_catalogue_is_exact(catalogue):
    """Every `covers` phrase still names a message (no stale phrase), is no shorter than
    the rule allows, and belongs to one entry; every allow-listed internal site exists."""
    hooks = _hooks()
    entries, _ = catalogue
    templates = hooks.message_templates()
    problems, owner = [], {}
    for e in entries:
        for phrase in e.get("covers") or ():
            hits = [t for t in templates if hooks.phrase_covers(phrase, t)]
            if not hits:
                problems.append(f"{e['id']}: covers phrase {phrase!r} is in no message's "
                                "longest literal run (20+ characters, or that whole run)")
            if phrase in owner:
                problems.append(f"{e['id']}: covers phrase {phrase!r} is also {owner[phrase]}'s")
            owner[phrase] = e["id"]
    for f, phrase in INTERNAL:
        if not any(t.file == f and phrase in t.shown for t in templates):
            problems.append(f"INTERNAL ({f}, {phrase!r}) matches no raise site: remove it")
    assert not problems, "\n".join(problems)


@pytest.mark.docs  # runs the catalogue's examples (`make docs`)
def test_a_new_message_needs_an_entry(catalogue, tmp_path):
    """The coverage rule is strict: a raise site with new wording is not covered, and one
    worded like a catalogued message is."""
    hooks = _hooks()
    entries, messages = catalogue
    pkg = tmp_path / "nodekit"
    pkg.mkdir()
    (pkg / "fake.py").write_text(
        "def f(x, path):\n"
        "    raise InputError(f'{x} must be a polygon with an odd number of corners.')\n"
        "    raise InputError(f'the flux capacitor of {x} is out of alignment; realign it.')\n"
        "    raise InputError(f'{x} is corrupt: its checksum does not match.')\n"
        "    raise ConfigError(path, f'unknown key {x!r} under {path}{hint} Allowed keys: {a}.')\n")
    templates = hooks.message_templates(tmp_path)
    assert len(templates) == 4
    covered = [any(hooks.covers_template(e, messages[e["id"]], t) for e in entries)
               for t in templates]
    assert covered == [False, False, True, True]
