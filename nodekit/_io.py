"""Bounded reads of the files a user hands nodekit: configs, data files, checkpoints and
cache entries are read only when they are regular files below a size limit, so a FIFO,
a device (`/dev/zero`) or a runaway file is refused with a message instead of hanging
or filling memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from ._errors import InputError

#: Size limits by kind of file (bytes). A config is a page of YAML; data files and
#: checkpoints can be large, but not unbounded.
LIMITS = {
    "config": 1 * 2**20,
    "data": 2 * 2**30,
    "checkpoint": 8 * 2**30,
    "cache": 2 * 2**30,
    "metrics": 4 * 2**30,
    "summary": 64 * 2**20,
}


def read_bytes_bounded(path: str | Path, *, kind: str, what: str | None = None,
                       error: Callable[[str], Exception] = InputError) -> bytes:
    """The bytes of `path`, refusing anything but a regular file of at most
    `LIMITS[kind]` bytes.

    The file is opened without blocking (a FIFO with no writer would otherwise hang the
    open), checked with `fstat` on the open descriptor (so a symlink swapped after the
    check cannot change what is read), and read to at most one byte past the limit.

    **Arguments:**

    - `path`: the file.
    - `kind`: one of `LIMITS` (`"config"`, `"data"`, `"checkpoint"`, `"cache"`).
    - `what`: how the message names the file (default `"<kind> file 'path'"`).
    - `error`: makes the exception from the message (default `InputError`; e.g.
      `CheckpointError`).

    **Raises:** `error` naming the file: missing, a directory, not a regular file
    (FIFO, device, socket), larger than the limit, or unreadable.
    """
    p = Path(path)
    what = what or f"{kind} file {str(p)!r}"
    limit = LIMITS[kind]
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} does not exist.") from None
    except IsADirectoryError:
        raise error(f"{what} is a directory; give a file.") from None
    except OSError as e:
        if e.errno == 36:  # ENAMETOOLONG
            raise error(f"{what}: the path is too long for this file system "
                        f"({len(str(p))} characters).") from None
        raise error(f"cannot read {what}: {e.strerror}.") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} is a directory; give a file.")
        if not stat.S_ISREG(st.st_mode):
            kind_name = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                         "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                         "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise error(f"{what} is {kind_name}, not a regular file; nodekit reads "
                        "only regular files.")
        if st.st_size > limit:
            raise error(f"{what} is {st.st_size / 2**20:.1f} MiB, over the "
                        f"{limit / 2**20:.0f} MiB limit for a {kind} file.")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{what} grew past the {limit / 2**20:.0f} MiB limit for a "
                            f"{kind} file while being read.")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror}.") from None
    finally:
        os.close(fd)


# ----------------------------------------------------------------- cache entries

#: First bytes of a cache entry written by `pack_cache_entry`.
CACHE_MAGIC = b"NKCACHE1"


class CacheMismatch(ValueError):
    """A cache entry that is not what its name promises (another key, a changed
    payload, a torn or foreign file); the message says which."""


def pack_cache_entry(key: str, payload: bytes, meta: dict | None = None) -> bytes:
    """A cache entry: magic, header length, a JSON header holding the full `key` the
    entry was stored under, the SHA-256 of `payload` and `meta` (JSON-able facts about
    the payload, e.g. a step's integrators), then `payload`."""
    import hashlib
    import json

    header = json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest(),
                         "bytes": len(payload), "meta": meta or {}}).encode()
    return CACHE_MAGIC + len(header).to_bytes(8, "little") + header + payload


def unpack_cache_entry(blob: bytes, key: str, *, with_meta: bool = False):
    """The payload of an entry made by `pack_cache_entry`, once its stored key equals
    `key` and its content hash matches (with `with_meta`: `(payload, meta)`).

    **Raises:** `CacheMismatch` saying what does not match.
    """
    import hashlib
    import json

    if len(blob) < 16 or blob[:8] != CACHE_MAGIC:
        raise CacheMismatch("not a nodekit cache entry")
    n = int.from_bytes(blob[8:16], "little")
    try:
        header = json.loads(blob[16:16 + n].decode())
        stored_key, digest = header["key"], header["sha256"]
        meta = header.get("meta") or {}
        if not isinstance(meta, dict):
            raise TypeError("meta")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise CacheMismatch("unreadable header") from None
    payload = blob[16 + n:]
    if stored_key != key:
        raise CacheMismatch("stored under another key (a swapped or copied entry)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CacheMismatch("its content does not match its hash (changed or torn)")
    return (payload, meta) if with_meta else payload


def read_cache_entry(path: str | Path, key: str, *, with_meta: bool = False) -> tuple:
    """`(payload, None)` for a valid entry at `path`; `(None, None)` when there is none;
    `(None, note)` when the entry is unusable (`note` says why: it is then rebuilt).
    With `with_meta`, a third element: the entry's `meta` (`{}` without an entry)."""
    p = Path(path)
    out: tuple = (None, None)
    if p.exists():
        try:
            blob = read_bytes_bounded(p, kind="cache", what=f"cache entry {str(p)!r}",
                                      error=CacheMismatch)
            payload, meta = unpack_cache_entry(blob, key, with_meta=True)
            return (payload, None, meta) if with_meta else (payload, None)
        except CacheMismatch as e:
            out = (None, f"cache entry {p.name} ignored and rebuilt: {e}")
    return (*out, {}) if with_meta else out


# ----------------------------------------------------------------- notes for the run's log

_NOTES: list[str] = []


def note(text: str) -> None:
    """Queue a note for the log of the run in progress (e.g. a cache entry ignored);
    the training loop prints and records them (`take_notes`)."""
    if len(_NOTES) < 100:
        _NOTES.append(text)


def take_notes() -> list[str]:
    """The queued notes, emptying the queue."""
    out = list(_NOTES)
    _NOTES.clear()
    return out
