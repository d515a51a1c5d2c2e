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
  the real message of at least one catalogue entry's example.
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
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(_GROUPS),
                          capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("docs")
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


def _message_templates() -> list[tuple[str, int, str]]:
    """`(file, line, regex)` for each message nodekit raises: the literal text of the
    message argument with every interpolated part as a wildcard."""
    out = []
    for path in sorted((ROOT / "nodekit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            call = node.exc
            name = getattr(call.func, "id", getattr(call.func, "attr", ""))
            if not (name.endswith("Error") or name.endswith("Fault")) or not call.args:
                continue
            arg = call.args[-1] if name == "ConfigError" and len(call.args) > 1 else call.args[0]
            regex = _template(arg)
            if regex is not None and len(re.sub(r"[^a-z]", "", regex)) >= 12:
                out.append((str(path.relative_to(ROOT)), node.lineno, regex))
    return out


def _template(node) -> str | None:
    """A regex for the text an expression builds: literals kept, the rest `.*`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".*"
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _template(node.left), _template(node.right)
        return (a or ".*") + (b or ".*")
    return None


def _catalogue_messages() -> list[str]:
    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        import nodekit_docs
    finally:
        sys.path.pop(0)
    return [nodekit_docs.check_entry(e)[1] for e in nodekit_docs.load_catalogue()]


@pytest.fixture(scope="module")
def catalogue_messages():
    return _catalogue_messages()


def test_every_raised_message_has_a_troubleshooting_entry(catalogue_messages):
    templates = _message_templates()
    assert len(templates) > 50  # the scan finds nodekit's raise sites
    missing = []
    for path, line, regex in templates:
        # a template's longest literal run must appear in a real message of the catalogue
        core = max(re.split(r"\.\*", regex), key=len)
        if not any(re.search(regex, m, re.S) or (len(core) >= 20 and re.search(core, m))
                   for m in catalogue_messages):
            missing.append(f"{path}:{line}: {regex[:90]}")
    assert not missing, (f"{len(missing)} messages have no entry in docs/_hooks/errors.yaml "
                         "(add one whose example raises it):\n" + "\n".join(missing))
