"""The config reference cannot rot: `docs/reference/config.md` is generated from the
config schema (`docs/_hooks/nodekit_docs.py`, `config_reference`), and this file checks
the schema and the README against each other without building the site:

- every field of every config section, walked from `nodekit.Config` (and the `sweep:`
  section of `nodekit sweep`), carries a `description=`, so a new key without one
  fails here as it fails the site's build;
- every key the README's config examples and its list of sections name exists in the
  schema (the names of a renamed or removed key would otherwise stay in the README).

No JAX computation: the schema is plain pydantic.
"""

from __future__ import annotations

import functools
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import nodekit

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@functools.cache
def _sweep_section() -> type[BaseModel]:
    """The model of the `sweep:` section, reached through the public API."""
    cfg = nodekit.validate_config({"sweep": {"grid": {"seed": [0, 1]}}})
    return type(cfg.sweep)


def _sections(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: a section, an optional section, or a
    union of sections (the data kinds)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _sections(a)]


def _walk(model, prefix: str = "", seen=None):
    """`(key path, model, field name, field)` of every field under `model`, depth first."""
    seen = set() if seen is None else seen
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", model, name, field
        for sub in _sections(field.annotation):
            if sub not in seen:
                seen.add(sub)
                yield from _walk(sub, f"{prefix}{name}.", seen)


def _all_fields():
    yield from _walk(nodekit.Config)
    yield from _walk(_sweep_section(), "sweep.")


def _literal_values(annotation) -> set[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return {str(a) for a in typing.get_args(annotation)}
    return {v for a in typing.get_args(annotation) for v in _literal_values(a)}


# ----------------------------------------------------------------- descriptions


def test_every_config_key_has_a_description():
    fields = list(_all_fields())
    keys = {key for key, *_ in fields}
    # the walk reaches every kind of section: nested, optional, the data kinds, sweep
    assert {"seed", "solver.rtol", "model.field.width", "model.cnf.trace",
            "model.physics.target", "data.path", "data.n_points", "data.distribution",
            "regularisation.jacobian.estimator", "regularisation.steer.width",
            "distributed.process_id", "sweep.grid", "sweep.seeds"} <= keys
    missing = [f"{key} ({model.__name__}.{name})" for key, model, name, field in fields
               if not (field.description or "").strip()]
    assert not missing, ("config keys without a description; add description=... to the "
                         "field in nodekit/_config/_schema.py: " + ", ".join(missing))


def test_descriptions_speak_config_keys():
    """A description names keys as a config user writes them (`train.steps`), never
    pydantic's Python names or the section classes."""
    class_names = {m.__name__ for _, m, _, _ in _all_fields()}
    bad = [(key, c) for key, _, _, field in _all_fields() for c in class_names
           if re.search(rf"\b{c}\b", field.description or "")]
    assert not bad, bad


# ----------------------------------------------------------------- the README


def _section_of(key: str) -> dict:
    """Where a dotted key path leads in the schema: `{"models": [...]}` when it names a
    section (several for the data kinds), `{"field": ...}` for a leaf key; raises
    `KeyError` naming the first part that does not exist."""
    models: list[type[BaseModel]] = [nodekit.Config]
    parts = key.split(".")
    if parts[0] == "sweep":
        models, parts = [_sweep_section()], parts[1:]
    for i, part in enumerate(parts):
        found = [m.model_fields[part] for m in models if part in m.model_fields]
        if not found:
            raise KeyError(f"{part!r} in {key}")
        subs = [s for f in found for s in _sections(f.annotation)]
        if i == len(parts) - 1:
            return {"models": subs} if subs else {"field": found[0]}
        if not subs:
            raise KeyError(f"{key} (below a key that is not a section)")
        models = subs
    return {"models": models}


def _check_mapping(data: dict, models: list, prefix: str, problems: list) -> None:
    """Every key of a YAML mapping exists in one of `models` (the data kinds: the one its
    `name` says); recurse into sections; check sweep grids' keys as key paths."""
    if len(models) > 1:
        name = data.get("name")
        chosen = [m for m in models if m.model_fields["name"].default == name]
        models = chosen or models
    for k, v in data.items():
        key = f"{prefix}{k}"
        field = next((m.model_fields[k] for m in models if k in m.model_fields), None)
        if field is None:
            problems.append(key)
            continue
        subs = _sections(field.annotation)
        if subs and isinstance(v, dict):
            _check_mapping(v, subs, f"{key}.", problems)
        if key == "sweep.grid" and isinstance(v, dict):
            for path in v:
                try:
                    _section_of(path)
                except KeyError as e:
                    problems.append(f"sweep.grid: {e.args[0]}")


def _config_section_text() -> str:
    text = README.read_text()
    start = text.index("\n## Config-driven runs")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_yaml_examples_name_existing_keys():
    blocks = _yaml_blocks(README.read_text())
    assert len(blocks) >= 4  # the section's examples are found
    problems: list[str] = []
    for block in blocks:
        data = yaml.safe_load(block)
        if not isinstance(data, dict):
            continue
        top = {k: v for k, v in data.items() if k != "sweep"}
        _check_mapping(top, [nodekit.Config], "", problems)
        if "sweep" in data:
            _check_mapping(data["sweep"], [_sweep_section()], "sweep.", problems)
    assert not problems, f"README.md's config examples name keys the schema lacks: {problems}"


def _bullets(text: str) -> list[str]:
    """The bullets of the README's `Sections:` list, each on one line."""
    part = text[text.index("\nSections:"):]
    part = part[: part.index("\n\n", part.index("\n- "))]
    return [" ".join(b.split()) for b in re.split(r"\n- ", part)[1:]]


def _words_under(key: str) -> tuple[set[str], set[str]]:
    """The key names and the allowed names (literal values) at and under a section."""
    where = _section_of(key)
    models = where.get("models", [])
    names, values = set(), set()
    for m in models:
        for path, _, name, field in _walk(m):
            names.add(name)
            values |= _literal_values(field.annotation)
    if "field" in where:
        values |= _literal_values(where["field"].annotation)
    return names, values


def test_readme_section_list_names_existing_keys_and_values():
    """Each bullet of the README's `Sections:` list opens with a section and names, in
    backticks, its keys (`model.field`'s `width`) and their allowed names (`joint`);
    each must exist there. Dotted paths must exist as written."""
    from nodekit._config import LBFGS_KWARGS

    bullets = _bullets(_config_section_text())
    assert len(bullets) >= 7, bullets
    # the top-level keys and their names may close any bullet ("plus `seed`, `task` and
    # `precision` (`float32` or `float64`)")
    top = set(nodekit.Config.model_fields) | {
        v for f in nodekit.Config.model_fields.values() if not _sections(f.annotation)
        for v in _literal_values(f.annotation)}
    problems = []
    for bullet in bullets:
        spans = re.findall(r"`([^`]+)`", bullet)
        section = spans[0]
        names, values = _words_under(section)
        allowed = names | values | top | {section}
        if section == "optimizer":
            allowed |= set(LBFGS_KWARGS)  # `optimizer.kwargs` of lbfgs
        for span in spans[1:]:
            if "(" in span or "/" in span:  # code, e.g. jax.random.PRNGKey(init_seed)
                continue
            for word in re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", span):
                if "." in word:
                    try:
                        _section_of(word)
                    except KeyError as e:
                        problems.append(f"{section}: {word} ({e.args[0]} does not exist)")
                elif word not in allowed and word not in ("null", "true", "false"):
                    problems.append(f"{section}: {word}")
    assert not problems, ("README.md's list of config sections names keys or values the "
                          f"schema does not have: {problems}")


@pytest.mark.parametrize("key", ["solver.rtoll", "model.field.widht", "sweep.grids",
                                 "data.series.name"])
def test_a_key_path_that_does_not_exist_is_found(key):
    """The README checks above can fail: a misspelt key path is caught."""
    with pytest.raises(KeyError):
        _section_of(key)
