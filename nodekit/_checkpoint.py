"""Atomic, checksummed checkpoints (no pickle).

File layout: the 8-byte magic `NODEKIT1`, an 8-byte little-endian header length, a JSON
header (step, config hash, leaf shapes and dtypes, free-form metadata, and a SHA-256
over the rest of the header and the payload), then the payload written by `equinox.tree_serialise_leaves`.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed
over the target (atomic on POSIX), and the folder is fsynced: a crash at any moment
leaves either the old checkpoint or the new one, never a torn file. The training loop
keeps the checkpoint before `latest.nkc` as `previous.nkc`, a fallback should `latest`
ever be unreadable.

A checkpoint is loaded only when the checksum matches, the header is well formed, and
the arrays in the payload have exactly the shapes and dtypes the header and the model
expect, with finite values: a file crafted to pass the checksum with other contents is
refused like a corrupt one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._errors import CheckpointError
from ._rundir import atomic_write_bytes


MAGIC = b"NODEKIT1"
FORMAT_VERSION = 2  # 2: the checksum covers the header too


def _error(message: str, reason: str) -> CheckpointError:
    """A `CheckpointError` with `reason`: `"corrupt"` (the file itself is unusable: a
    fallback may be tried), `"config"` (another config wrote it) or `"model"` (another
    model's arrays)."""
    e = CheckpointError(message)
    e.reason = reason
    return e


def _is_array(x) -> bool:
    return eqx.is_array_like(x) or isinstance(x, jax.ShapeDtypeStruct)


def _leaf_specs(tree) -> list[list]:
    """`[shape, dtype]` of each array leaf (arrays, Python numbers, or the
    `jax.ShapeDtypeStruct`s of a tree built with `jax.eval_shape`)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, _is_array))
    return [[list(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)]
            for x in leaves]


def _to_host(x):
    """A leaf as host data; an array spread over several processes (multi-host) is
    replicated, so its first local shard is the whole of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return x


def save_checkpoint(path, tree, *, step: int, config_hash: str, meta: dict | None = None,
                    backup: str | Path | None = None) -> None:
    """Save a pytree of arrays (model, optimiser state, key, ...) atomically.

    **Arguments:**

    - `path`: the checkpoint file.
    - `tree`: any pytree; its array leaves are saved.
    - `step`: the number of finished training steps.
    - `config_hash`: `Config.hash()` of the run; checked on load.
    - `meta`: extra JSON-able data (e.g. the best loss, the resolved config).
    - `backup`: if given, an existing checkpoint at `path` is kept there (renamed)
      when the new one replaces it.

    **Example:**

    ```python
    import jax.numpy as jnp
    from nodekit._checkpoint import load_checkpoint, save_checkpoint

    tree = {"w": jnp.ones(3), "b": jnp.zeros(())}
    save_checkpoint("/tmp/nodekit-example.nkc", tree, step=10, config_hash="abc")
    loaded, header = load_checkpoint("/tmp/nodekit-example.nkc", tree, config_hash="abc")
    assert header["step"] == 10
    ```
    """
    tree = jax.tree_util.tree_map(_to_host, tree)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    payload = buf.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "config_hash": config_hash,
        "leaves": _leaf_specs(tree),
        "payload_bytes": len(payload),
        "meta": meta or {},
    }
    header["sha256"] = _digest(header, payload)
    hbytes = json.dumps(header).encode()
    atomic_write_bytes(Path(path), MAGIC + struct.pack("<Q", len(hbytes)) + hbytes + payload,
                       backup=None if backup is None else Path(backup))


def _digest(header: dict, payload: bytes) -> str:
    """SHA-256 over the header (less its own checksum, keys sorted) and the payload, so
    an edited step or config hash is caught as surely as a flipped payload byte."""
    fields = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + payload).hexdigest()


def _check_header(header: dict, what: str) -> None:
    """Well-formed fields (a checksum proves integrity, not sense)."""
    step = header.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _error(f"{what} is corrupt: its step {step!r} is not a count of steps.", "corrupt")
    leaves = header.get("leaves")
    ok = isinstance(leaves, list) and all(
        isinstance(s, list) and len(s) == 2 and isinstance(s[0], list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s[0])
        and isinstance(s[1], str) for s in leaves)
    if not ok:
        raise _error(f"{what} is corrupt: its list of arrays is malformed.", "corrupt")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise _error(f"{what} is corrupt: its metadata is not a mapping.", "corrupt")
    best = meta.get("best")
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)):
        raise _error(f"{what} is corrupt: its best loss {best!r} is not a number.", "corrupt")


def read_header(path) -> tuple[dict, bytes]:
    """Read and verify a checkpoint file; returns `(header, payload)`.

    **Raises:** `CheckpointError` if the file is missing, not a regular file, truncated,
    corrupt or not a checkpoint.
    """
    from ._io import read_bytes_bounded

    path = Path(path)
    what = f"checkpoint {str(path)!r}"
    blob = read_bytes_bounded(path, kind="checkpoint", what=what,
                              error=lambda m: _error(m, "corrupt"))
    if not blob:
        raise _error(f"{what} is empty (0 bytes).", "corrupt")
    if len(blob) < 16 or blob[:8] != MAGIC:
        raise _error(f"{what} is not a nodekit checkpoint (bad magic bytes).", "corrupt")
    (hlen,) = struct.unpack("<Q", blob[8:16])
    if 16 + hlen > len(blob):
        raise _error(f"{what} is truncated (header cut short).", "corrupt")
    try:
        header = json.loads(blob[16 : 16 + hlen].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _error(f"{what} is corrupt (unreadable header).", "corrupt") from None
    if not isinstance(header, dict):
        raise _error(f"{what} is corrupt (unreadable header).", "corrupt")
    payload = blob[16 + hlen :]
    if len(payload) != header.get("payload_bytes"):
        raise _error(
            f"{what} is truncated: {len(payload)} of {header.get('payload_bytes')} payload "
            "bytes present.", "corrupt")
    if _digest(header, payload) != header.get("sha256"):
        raise _error(f"{what} is corrupt: its checksum does not match.", "corrupt")
    _check_header(header, what)
    return header, payload


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(old: dict, new: dict, limit: int = 6) -> str:
    """The keys whose values differ between two resolved configs, in words:
    `solver.rtol 1e-05 -> 1e-06, seed 0 -> 1`."""
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    parts = [f"{k} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def hashed_config(config: dict) -> dict:
    """The part of a resolved config that `Config.hash` covers (what a resume must keep)."""
    d = json.loads(json.dumps(config))
    order = d.get("train", {}).get("batch_order")
    d["train"] = {"batch_size": d.get("train", {}).get("batch_size")}
    if order == "random":
        d["train"]["batch_order"] = order
    d.pop("distributed", None)
    return d


def load_checkpoint(path, like, *, config_hash: str | None = None,
                    config: dict | None = None) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of `like` (a pytree of the same shapes;
    arrays or `jax.ShapeDtypeStruct`s).

    **Arguments:**

    - `path`: the checkpoint file.
    - `like`: the pytree whose structure, shapes and dtypes the checkpoint must have.
    - `config_hash`: if given, the checkpoint must have been written under it.
    - `config`: the resolved config now (`Config.to_dict()`), to name the keys that
      changed when the hash differs.

    **Returns:** `(tree, header)`.

    **Raises:** `CheckpointError` (with `reason` `"corrupt"`, `"config"` or `"model"`)
    if the file is truncated, corrupt or crafted, was written by a different config
    (hash mismatch) or holds arrays of other shapes (another model).
    """
    header, payload = read_header(path)
    what = f"checkpoint {str(path)!r}"
    if config_hash is not None and header.get("config_hash") != config_hash:
        stored = header["meta"].get("config")
        if isinstance(stored, dict) and config is not None:
            diff = config_diff(hashed_config(stored), hashed_config(config))
            changed = f"these keys changed: {diff}" if diff else "the settings changed"
        else:
            changed = ("the model, data, solver or optimiser settings changed (this "
                       "checkpoint does not record its config)")
        raise _error(
            f"{what} was written by a different config (hash {header.get('config_hash')} vs "
            f"{config_hash} now): {changed}.", "config")
    expected = _leaf_specs(like)
    found = header["leaves"]
    if found != expected:
        if len(found) != len(expected):
            detail = f"{len(found)} arrays saved, {len(expected)} expected"
        else:
            i = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
            detail = f"array {i}: saved {found[i][1]}{tuple(found[i][0])}, model has " \
                     f"{expected[i][1]}{tuple(expected[i][0])}"
        raise _error(f"{what} is from a different model ({detail}).", "model")
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # noqa: BLE001 - whatever a crafted payload makes NumPy say
        raise _error(f"{what} is corrupt: its arrays cannot be read "
                     f"({type(e).__name__}).", "corrupt") from None
    for i, (leaf, spec) in enumerate(zip(jax.tree_util.tree_leaves(
            eqx.filter(tree, eqx.is_array_like)), expected)):
        arr = np.asarray(leaf)
        if [list(arr.shape), str(arr.dtype)] != spec:
            raise _error(f"{what} is corrupt: array {i} holds {arr.dtype}{arr.shape} where "
                         f"its header says {spec[1]}{tuple(spec[0])}.", "corrupt")
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            raise _error(f"{what} is corrupt: array {i} holds non-finite values (a run "
                         "never saves those).", "corrupt")
    return tree, header


def payload_arrays(payload: bytes) -> list[np.ndarray]:
    """The arrays of a checkpoint's payload, in order (each stored as a `.npy` blob;
    no pickle)."""
    f = io.BytesIO(payload)
    out = []
    while f.tell() < len(payload):
        out.append(np.load(f, allow_pickle=False))
    return out


def best_value(header: dict) -> float:
    best = header["meta"].get("best")
    return math.inf if best is None else float(best)
