"""Atomic, checksummed checkpoints (no pickle).

File layout: the 8-byte magic `NODEKIT1`, an 8-byte little-endian header length, a JSON
header (step, config hash, leaf shapes and dtypes, free-form metadata, and a SHA-256
over the rest of the header and the payload), then the payload written by `equinox.tree_serialise_leaves`.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed
over the target (atomic on POSIX), and the folder is fsynced: a crash at any moment
leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import io
import json
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


def _leaf_specs(tree) -> list[list]:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array_like))
    return [[list(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)]
            for x in leaves]


def save_checkpoint(path, tree, *, step: int, config_hash: str, meta: dict | None = None) -> None:
    """Save a pytree of arrays (model, optimiser state, key, ...) atomically.

    **Arguments:**

    - `path`: the checkpoint file.
    - `tree`: any pytree; its array leaves are saved.
    - `step`: the number of finished training steps.
    - `config_hash`: `Config.hash()` of the run; checked on load.
    - `meta`: extra JSON-able data (e.g. the best loss).

    **Example:**

    ```python
    save_checkpoint("ckpt.nkc", (model, opt_state), step=10, config_hash=cfg.hash())
    ```
    """
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
    atomic_write_bytes(Path(path), MAGIC + struct.pack("<Q", len(hbytes)) + hbytes + payload)


def _digest(header: dict, payload: bytes) -> str:
    """SHA-256 over the header (less its own checksum, keys sorted) and the payload, so
    an edited step or config hash is caught as surely as a flipped payload byte."""
    fields = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + payload).hexdigest()


def read_header(path) -> tuple[dict, bytes]:
    """Read and verify a checkpoint file; returns `(header, payload)`.

    **Raises:** `CheckpointError` if the file is truncated, corrupt or not a checkpoint.
    """
    from ._io import read_bytes_bounded

    path = Path(path)
    blob = read_bytes_bounded(path, kind="checkpoint", what=f"checkpoint {str(path)!r}",
                              error=CheckpointError)
    what = f"checkpoint {str(path)!r}"
    fix = (
        " Delete it to fall back to another checkpoint, or start fresh with "
        "`nodekit train CONFIG --restart` (or into a new --workdir)."
    )
    if len(blob) < 16 or blob[:8] != MAGIC:
        raise CheckpointError(f"{what} is not a nodekit checkpoint (bad magic bytes)." + fix)
    (hlen,) = struct.unpack("<Q", blob[8:16])
    if 16 + hlen > len(blob):
        raise CheckpointError(f"{what} is truncated (header cut short)." + fix)
    try:
        header = json.loads(blob[16 : 16 + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{what} is corrupt (unreadable header)." + fix) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{what} is corrupt (unreadable header)." + fix)
    payload = blob[16 + hlen :]
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"{what} is truncated: {len(payload)} of {header.get('payload_bytes')} payload "
            "bytes present." + fix
        )
    if _digest(header, payload) != header.get("sha256"):
        raise CheckpointError(f"{what} is corrupt: its checksum does not match." + fix)
    return header, payload


def load_checkpoint(path, like, *, config_hash: str | None = None) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of `like` (a pytree of the same shapes).

    **Returns:** `(tree, header)`.

    **Raises:** `CheckpointError` if the file is truncated or corrupt, was written by a
    different config (hash mismatch) or holds arrays of other shapes (another model).
    """
    header, payload = read_header(path)
    what = f"checkpoint {str(path)!r}"
    if config_hash is not None and header.get("config_hash") != config_hash:
        raise CheckpointError(
            f"{what} was written by a different config (hash {header.get('config_hash')} "
            f"vs {config_hash} now): the model, data, solver or optimiser settings changed. "
            "Resume with the original config, or start fresh with `--restart` or a new "
            "--workdir."
        )
    expected = _leaf_specs(like)
    found = header.get("leaves")
    if found != expected:
        if found is None or len(found) != len(expected):
            detail = f"{len(found or [])} arrays saved, {len(expected)} expected"
        else:
            i = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
            detail = f"array {i}: saved {found[i][1]}{tuple(found[i][0])}, model has " \
                     f"{expected[i][1]}{tuple(expected[i][0])}"
        raise CheckpointError(
            f"{what} is from a different model ({detail}). Start fresh with `--restart` "
            "or a new --workdir."
        )
    tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    return tree, header
