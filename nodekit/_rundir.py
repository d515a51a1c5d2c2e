"""The run directory: its paths, atomic writes, the metrics log and the summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ._errors import InputError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, flush, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def json_float(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Workdir:
    def __init__(self, path: Path):
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self.plot_dir = path / "plots"
        self.latest = self.ckpt_dir / "latest.nkc"
        self.best = self.ckpt_dir / "best.nkc"
        self.metrics = path / "metrics.jsonl"
        self.summary = path / "summary.json"
        self.config = path / "config.yaml"

    def prepare(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(exist_ok=True)
            self.plot_dir.mkdir(exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise InputError(
                f"workdir {str(self.path)!r} is not writable ({e.strerror}); choose another "
                "with --workdir."
            ) from None


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Drop metric rows past the checkpoint (they are recomputed on resume); returns the
    kept training rows, so the summary covers the whole run."""
    if not path.exists():
        return []
    keep, rows = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if row["step"] < step:
                keep.append(line)
                if not row.get("eval"):
                    rows.append(row)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(l + "\n" for l in keep))
    return rows
