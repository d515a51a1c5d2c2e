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
