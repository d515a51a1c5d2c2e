"""Config errors in the user's words: pydantic's error locations turned into the key
paths the user typed, and messages that name the bad value and what is allowed."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from .._errors import ConfigError, closest, unknown_name_message
from ._schema import _DATA_MODELS, NAME_KINDS, Config

def _sub_model(annotation) -> type | None:
    """The config section an annotation holds (`Section` or `Section | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [a for a in getattr(annotation, "__args__", ()) or ()
              if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _model_at(cls, loc) -> type | None:
    """The pydantic model class found by following `loc` from `cls`."""
    for part in loc:
        if cls is None or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            # a discriminated union member, named by its tag
            return None
        cls = _sub_model(field.annotation)
    return cls


def _clean_loc(loc) -> list[str]:
    """The user's key path from pydantic's error location: union branch tags that
    pydantic inserts (`data.spiral.t1`, `train.devices.constrained-int`) are dropped by
    following the schema, and free-form mappings (`optimizer.kwargs.b1`) keep their keys."""
    out: list[str] = []
    cls: Any = Config
    for part in (str(p) for p in loc):
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            field = cls.model_fields.get(part)
            if field is None:
                if cls is Config or part not in _DATA_MODELS:
                    out.append(part)  # an unknown key: named as typed
                cls = _DATA_MODELS.get(part)
                continue
            out.append(part)
            if cls is Config and part == "data":
                cls = "data"  # a union by data.name: the next part may be its tag
            elif getattr(field.annotation, "__origin__", None) is dict:
                cls = "mapping"
            else:
                cls = _sub_model(field.annotation)  # None for a value: what follows is a tag
        elif cls == "data":
            cls = _DATA_MODELS.get(part)
            if cls is None:
                out.append(part)
        elif cls == "mapping":
            out.append(part)
            cls = None
    return out


def _shown(value) -> str:
    """A bad value as the message shows it: short, whatever its size."""
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _format_error(err: dict, raw: dict) -> ConfigError:
    loc_clean = _clean_loc(err["loc"])
    path = ".".join(loc_clean)
    kind = err["type"]
    value = err.get("input")
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):
        # a validator's own error, its path relative to the section it checks
        full = ".".join(p for p in (path, inner.path) if p)
        return ConfigError(full, inner.message)
    if kind == "extra_forbidden":
        parent_loc = loc_clean[:-1]
        model = _model_at(Config, parent_loc) if parent_loc else Config
        if parent_loc and parent_loc[0] == "data":
            model = _data_model(raw)
        allowed = sorted(model.model_fields) if model is not None else []
        key = loc_clean[-1]
        hint = closest(key, allowed)
        did = f"; did you mean {hint!r}?" if hint else "."
        where = ".".join(parent_loc) or "the top level"
        return ConfigError(
            path, f"unknown key {key!r} under {where}{did} Allowed keys: {', '.join(allowed)}."
        )
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = _shown(value)
    if kind == "missing":
        return ConfigError(path, "this key is required.")
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        data = raw.get("data") if isinstance(raw, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
        text = name if isinstance(name, str) else _shown(name)
        return ConfigError("data.name", unknown_name_message("data name", text, list(_DATA_MODELS)))
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        parent = _model_at(Config, loc_clean[:-1]) if loc_clean[:-1] else Config
        if loc_clean and loc_clean[0] == "data" and len(loc_clean) == 2:
            parent = _data_model(raw)
        name_kind = NAME_KINDS.get((getattr(parent, "__name__", ""), loc_clean[-1] if loc_clean else ""))
        if not isinstance(value, str):
            return ConfigError(path, f"got {shown}: must be a string, one of "
                                     f"{', '.join(map(repr, options))}.")
        if name_kind is not None:
            return ConfigError(path, unknown_name_message(name_kind, value, options))
        hint = closest(str(value), options) if isinstance(value, str) else None
        did = f"; did you mean {hint!r}?" if hint else "."
        return ConfigError(path, f"got {shown}: allowed {', '.join(map(repr, options))}{did}")
    return ConfigError(path, f"got {shown}: {msg}.".replace("..", "."))


def _data_model(raw: dict):
    data = raw.get("data") if isinstance(raw, dict) else None
    name = data.get("name", "spiral") if isinstance(data, dict) else "spiral"
    return _DATA_MODELS.get(name) if isinstance(name, str) else None
