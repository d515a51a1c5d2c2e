"""The run directory: its paths and lock, atomic writes, the metrics logs (JSON lines,
CSV, TensorBoard) and the summary.

Every file a run writes is either replaced atomically (a temporary file in the same
folder, fsync, rename: `atomic_write_bytes`) or appended to line by line; nothing is
rewritten in place. On resume, the metric rows past the checkpoint (which the resumed
run recomputes) are dropped by writing the kept rows to a temporary file and renaming it
over the log, so a kill at any moment leaves either the old log or the new one.

One process per workdir: `Workdir.open` takes an exclusive `fcntl.flock` on
`.nodekit.lock` (the operating system releases it when the process dies, so a lock left
by a killed run is simply taken over) and writes the holder's PID there for the message
a second process gets.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
from pathlib import Path

from ._errors import InputError
from ._io import read_bytes_bounded

#: Temporary files of atomic writes: `.<name>.tmp-<pid>-<n>`.
TMP_GLOB = ".*.tmp-*"
_counter = itertools.count()


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


def atomic_write_bytes(path: Path, data: bytes, *, backup: Path | None = None) -> None:
    """Write `data` to `path` atomically (temporary file, flush, fsync, rename, fsync of
    the folder). With `backup`, an existing `path` is first kept as `backup` (a second
    name for it), so a crash at any moment leaves `path` whole (old or new) and never
    a torn file.

    **Raises:** `OSError` (e.g. a full disk); the temporary file is then removed and
    `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.exists():
            # `path` stays in place throughout: the backup is a second name for the
            # same file (a hard link, or a copy where links are not supported), so a
            # kill at any moment leaves a whole `path`, old or new
            btmp = backup.with_name(f".{backup.name}.tmp-{os.getpid()}-{next(_counter)}")
            try:
                os.link(path, btmp)
            except OSError:
                shutil.copyfile(path, btmp)
            os.replace(btmp, backup)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)  # (a failed write names no file: the message should)
        raise
    _fsync_dir(path.parent)


def json_float(x):
    """`x`, with NaN and infinities as `None` (JSON has no such numbers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps_row(row: dict) -> str:
    return json.dumps({k: json_float(v) for k, v in row.items()})


# ----------------------------------------------------------------- lock


class _Lock:
    """An exclusive `flock` on a file; the PID of the holder is written in it."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def acquire(self, what: str) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "a process that has not yet written its PID"
            raise InputError(
                f"{what} is in use by another nodekit process ({who}). Wait for it to "
                "finish (or stop it), or choose another workdir (--workdir)."
            ) from None
        except OSError as e:
            os.close(fd)
            raise InputError(f"cannot lock {what} ({e.strerror}); choose another workdir "
                             "(--workdir).") from None
        self.stale_pid = _read_pid(fd)  # left by a run that was killed: taken over
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # an empty lock file: the last holder ended cleanly
            except OSError:
                pass
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _create_and_lock(folder: Path, lock: _Lock, what: str) -> None:
    """Create `folder` (and its parents) and take its lock.

    **Raises:** `InputError`: the folder cannot be created, or another process holds it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what} is not writable ({e.strerror}); choose another "
                         "with --workdir.") from None
    lock.acquire(what)


class WorkdirLock:
    """`with WorkdirLock(folder):` holds the exclusive lock of a folder (creating it).

    **Raises:** `InputError` naming the holder's PID when another process holds it.
    """

    def __init__(self, folder: str | Path, what: str | None = None):
        self.folder = Path(folder)
        self.what = what or f"workdir {str(self.folder)!r}"
        self._lock = _Lock(self.folder / ".nodekit.lock")

    def __enter__(self):
        _create_and_lock(self.folder, self._lock, self.what)
        return self

    def __exit__(self, *exc):
        self._lock.release()


# ----------------------------------------------------------------- the workdir

#: What a run writes (moved aside together by `--restart`).
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "eval.csv", "summary.json",
             "checkpoints", "plots", "tensorboard")


class Workdir:
    """The paths of a run's folder, its lock, and the `--restart` move-aside."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.plot_dir = self.path / "plots"
        self.tb_dir = self.path / "tensorboard"
        self.latest = self.ckpt_dir / "latest.nkc"
        self.previous = self.ckpt_dir / "previous.nkc"  # the checkpoint before latest
        self.best = self.ckpt_dir / "best.nkc"
        self.metrics = self.path / "metrics.jsonl"
        self.metrics_csv = self.path / "metrics.csv"
        self.eval_csv = self.path / "eval.csv"
        self.summary = self.path / "summary.json"
        self.config = self.path / "config.yaml"
        self.aside = self.path / "previous-run"
        self._aside_partial = self.path / ".previous-run.partial"
        self._lock = _Lock(self.path / ".nodekit.lock")
        self.notes: list[str] = []

    @property
    def what(self) -> str:
        return f"workdir {str(self.path)!r}"

    def has_checkpoint(self) -> bool:
        return self.latest.exists() or self.previous.exists()

    def open(self) -> None:
        """Create the folders, take the lock, finish an interrupted `--restart`
        move, remove temporary files left by killed writes, and check that every
        file the run appends to can be written.

        **Raises:** `InputError`: not writable, or locked by another process.
        """
        _create_and_lock(self.path, self._lock, self.what)
        try:
            if self._lock.stale_pid and self._lock.stale_pid != os.getpid():
                self.notes.append(f"took over the lock of PID {self._lock.stale_pid}, which "
                                  "ended without releasing it (killed?); its files are intact")
            if self._aside_partial.exists():
                self._finish_aside()
            for folder in (self.ckpt_dir, self.plot_dir):
                if folder.exists() and not folder.is_dir():
                    raise InputError(f"{str(folder)!r} is not a folder; move it away or choose "
                                     "another workdir (--workdir).")
                folder.mkdir(exist_ok=True)
            removed = 0
            for folder in (self.path, self.ckpt_dir, self.plot_dir, self.tb_dir):
                for tmp in folder.glob(TMP_GLOB) if folder.is_dir() else ():
                    tmp.unlink(missing_ok=True)
                    removed += 1
            if removed:
                self.notes.append(f"removed {removed} temporary file(s) left by an "
                                  "interrupted write")
            self._check_writable()
        except OSError as e:
            self.close()
            raise InputError(f"{self.what} is not usable ({e.strerror}: "
                             f"{e.filename or self.path}); fix it or choose another "
                             "workdir (--workdir).") from None
        except BaseException:
            self.close()
            raise

    def _check_writable(self) -> None:
        for folder in (self.path, self.ckpt_dir, self.plot_dir):
            probe = folder / f".write-test.tmp-{os.getpid()}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise InputError(f"cannot write in {str(folder)!r} ({e.strerror}); make it "
                                 "writable or choose another workdir (--workdir).") from None
        import stat

        for f in (self.metrics, self.metrics_csv, self.eval_csv, self.summary, self.config,
                  self.latest, self.previous, self.best):
            if not f.exists() and not f.is_symlink():
                continue
            try:
                mode = os.stat(f).st_mode
            except OSError as e:
                raise InputError(f"cannot use {str(f)!r} ({e.strerror}); move it away or "
                                 "choose another workdir (--workdir).") from None
            if not stat.S_ISREG(mode):
                raise InputError(f"{str(f)!r} is not a regular file (a folder, FIFO, device "
                                 "or a link to one); move it away or choose another workdir "
                                 "(--workdir).")
            if f.parent == self.ckpt_dir:
                continue  # checkpoints are replaced, never appended to
            try:
                with open(f, "ab"):  # appends nothing: only asks whether we could
                    pass
            except OSError as e:
                raise InputError(f"cannot write {str(f)!r} ({e.strerror}); make it writable "
                                 "(e.g. chmod u+w) or choose another workdir (--workdir).") from None

    def close(self) -> None:
        self._lock.release()

    # -- --restart: the previous run is moved aside, kept until the new run's first checkpoint

    def move_aside(self) -> str | None:
        """Move the previous run's files into `previous-run/` (for `--restart`);
        returns a note for the log, or `None` when there was nothing to move.

        If `previous-run/` already holds a run and the workdir holds no checkpoint (a
        restart that was stopped before its first checkpoint), the workdir's files are
        that unfinished restart's and are discarded instead; the older run stays aside.
        """
        present = [n for n in RUN_FILES if (self.path / n).exists()]
        if not present:
            return None
        if self.aside.exists() and not self.has_checkpoint():
            for n in present:
                _remove(self.path / n)
            self.ckpt_dir.mkdir(exist_ok=True)
            self.plot_dir.mkdir(exist_ok=True)
            return (f"the previous run stays in {self.aside} (the restarted run that "
                    "replaced it had not reached its first checkpoint)")
        if self.aside.exists():
            shutil.rmtree(self.aside)
        self._aside_partial.mkdir(exist_ok=True)
        self._finish_aside()
        self.ckpt_dir.mkdir(exist_ok=True)
        self.plot_dir.mkdir(exist_ok=True)
        return (f"moved the previous run to {self.aside}; it is removed once the new run "
                "writes its first checkpoint (move its files back to undo the restart)")

    def _finish_aside(self) -> None:
        for n in RUN_FILES:
            src = self.path / n
            if src.exists() and not (self._aside_partial / n).exists():
                os.replace(src, self._aside_partial / n)
        if self.aside.exists():
            shutil.rmtree(self.aside)
        os.replace(self._aside_partial, self.aside)
        _fsync_dir(self.path)

    def drop_aside(self) -> bool:
        """Remove `previous-run/` (the new run has its own checkpoint now)."""
        if self.aside.exists():
            shutil.rmtree(self.aside, ignore_errors=True)
            return True
        return False


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------- metrics


def _jsonl_step(line: bytes):
    try:
        row = json.loads(line)
        step = row["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _csv_step(line: bytes):
    head = line.split(b",", 1)[0]
    try:
        return int(head)
    except ValueError:
        return None


def cut_rows(path: Path, start: int, *, header: bool = False) -> int:
    """Drop the rows of `path` (JSON lines, or CSV with `header`) whose step is at or
    past `start` (the resumed run recomputes them), and a torn last line left by a
    kill; rows that cannot be read (hand edits) are kept as they are. The file is
    replaced atomically, and only when something changes. Returns the rows dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    blob = read_bytes_bounded(path, kind="metrics", what=f"metrics log {str(path)!r}")
    lines = blob.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    step_of = _csv_step if header else _jsonl_step
    keep, dropped = [], 0 if not torn else 1
    for i, line in enumerate(lines):
        step = None if (header and i == 0) else step_of(line)
        if step is not None and step >= start:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in keep))
    return dropped


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The rows of a `metrics.jsonl` (training and eval rows, in file order) and the
    number of lines skipped because they are not JSON objects with an integer `step`
    (hand edits, a torn last line)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    blob = read_bytes_bounded(path, kind="metrics", what=f"metrics log {str(path)!r}")
    rows, bad = [], 0
    for line in blob.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            bad += 1
            continue
        rows.append(row)
    return rows, bad


class _naming:
    """Give an `OSError` from writing an open file the file's name (for the message)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(self.path)
        return False


#: Where each metrics sink writes (`train.metrics`); `jsonl` is always on.
SINKS = ("jsonl", "csv", "tensorboard")


class _CsvLog:
    """A CSV file appended row by row; the header is the first row's keys."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                first = f.readline(1 << 16).rstrip(b"\n")
            self.columns = next(csv.reader([first.decode("utf-8", "replace")]), None) or None
        self.f = open(path, "a", newline="")

    def write(self, row: dict) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if self.columns is None:
            self.columns = ["step"] + [k for k in row if k != "step"]
            w.writerow(self.columns)
        w.writerow(["" if row.get(k) is None else row.get(k) for k in self.columns])
        self.f.write(buf.getvalue())
        self.f.flush()


class MetricsLog:
    """The run's metric logs: `metrics.jsonl` (always), `metrics.csv` and `eval.csv`
    (`csv`), TensorBoard event files under `tensorboard/` (`tensorboard`).

    **Arguments:**

    - `wd`: the `Workdir`.
    - `sinks`: the configured `train.metrics`.
    - `start`: the step the run (re)starts from; rows at or past it are dropped first.
    """

    def __init__(self, wd: Workdir, sinks, start: int):
        self.wd = wd
        self.dropped = cut_rows(wd.metrics, start)
        self._jsonl = open(wd.metrics, "a")
        self._csv = self._eval_csv = self._tb = None
        if "csv" in sinks:
            for p in (wd.metrics_csv, wd.eval_csv):
                cut_rows(p, start, header=True)
            self._csv, self._eval_csv = _CsvLog(wd.metrics_csv), _CsvLog(wd.eval_csv)
        if "tensorboard" in sinks:
            from ._tensorboard import EventWriter

            self._tb = EventWriter(wd.tb_dir, resume_step=start)

    def train_row(self, row: dict) -> None:
        with _naming(self.wd.metrics):
            self._jsonl.write(dumps_row(row) + "\n")
            self._jsonl.flush()
        if self._csv is not None:
            with _naming(self.wd.metrics_csv):
                self._csv.write({k: json_float(v) for k, v in row.items()})
        if self._tb is not None:
            with _naming(self._tb.path):
                self._tb.scalars(row["step"], row, "train")

    def eval_row(self, row: dict) -> None:
        with _naming(self.wd.metrics):
            self._jsonl.write(dumps_row(row) + "\n")
            self._jsonl.flush()
        if self._eval_csv is not None:
            with _naming(self.wd.eval_csv):
                self._eval_csv.write({k: json_float(v) for k, v in row.items() if k != "eval"})
        if self._tb is not None:
            with _naming(self._tb.path):
                self._tb.scalars(row["step"], row, "eval")

    def sync(self) -> None:
        """Flush and fsync the logs (before a checkpoint that covers their rows)."""
        for f in (self._jsonl, getattr(self._csv, "f", None), getattr(self._eval_csv, "f", None)):
            if f is not None:
                with _naming(Path(f.name)):
                    f.flush()
                    os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._jsonl, getattr(self._csv, "f", None), getattr(self._eval_csv, "f", None),
                  self._tb):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


# ----------------------------------------------------------------- summary


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps({k: json_float(v) for k, v in data.items()},
                                         indent=2) + "\n").encode())


def read_json(path: Path, what: str) -> dict | None:
    """A JSON object file read with a size bound; `None` if missing or unreadable."""
    try:
        data = json.loads(read_bytes_bounded(path, kind="summary", what=what))
    except (InputError, ValueError):
        return None
    return data if isinstance(data, dict) else None
