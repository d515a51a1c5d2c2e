"""The user's own data files: trajectories, samples and labelled examples from CSV or
NPZ (by extension), a seeded train/validation/test split, and normalisation
statistics taken from the training part.

Files are read through `nodekit._io.read_bytes_bounded` (regular files only, under a
size limit); CSV with the standard library's `csv` module, NPZ with
`np.load(..., allow_pickle=False)` (no Python objects are ever unpickled). Every
problem is refused with one `InputError` naming the file, the line or array, what is
wrong and what is allowed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import zipfile
from pathlib import Path

import numpy as np

from .._errors import InputError, closest
from ._split import LabelledData, split_indices


def _what(path) -> str:
    return f"data file {str(path)!r}"


def _read(path) -> bytes:
    from .._io import read_bytes_bounded

    if "\x00" in str(path):
        raise InputError(f"{_what(path)}: a path cannot hold a NUL character.")
    return read_bytes_bounded(path, kind="data", what=_what(path))


def _suffix(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise InputError(f"{_what(path)}: the file type is read from the extension, which "
                         f"must be .csv or .npz, got {suffix or 'none'!r}.")
    return suffix


# ----------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """Observed trajectories ("series"), each with its own, possibly irregular, times.

    Made by `read_trajectories`. Series may differ in length.

    **Fields:**

    - `times`: one `(T_i,)` float64 array per series, strictly increasing.
    - `values`: one `(T_i, D)` float64 array per series (0 where not observed).
    - `masks`: one `(T_i, D)` bool array per series, true where observed.
    - `names`: the `D` coordinate names (CSV columns, or `x1, x2, ...` for NPZ arrays;
      not `y0, y1`, which would read as the API's initial state).
    - `ids`: each series' name (the CSV `series` value, or its index).
    - `source`: the file it came from.

    **Example:**

    ```python
    import numpy as np
    import nodekit

    tr = nodekit.data.Trajectories.from_arrays(np.linspace(0, 1, 5), np.zeros((2, 5, 3)))
    print(len(tr), tr.dim, tr.lengths)          # 2 3 [5, 5]
    ```
    """

    times: tuple
    values: tuple
    masks: tuple
    names: tuple
    ids: tuple
    source: str = ""

    def __len__(self) -> int:
        return len(self.times)

    @property
    def dim(self) -> int:
        """The number of coordinates `D`."""
        return len(self.names)

    @property
    def lengths(self) -> list[int]:
        """The number of time points of each series."""
        return [len(t) for t in self.times]

    @property
    def fully_observed(self) -> bool:
        """Whether every value of every series is observed."""
        return all(bool(m.all()) for m in self.masks)

    def subset(self, index) -> "Trajectories":
        """The series at `index` (a sequence of integers)."""
        index = [int(i) for i in np.asarray(index).reshape(-1)]
        pick = lambda xs: tuple(xs[i] for i in index)  # noqa: E731
        return dataclasses.replace(self, times=pick(self.times), values=pick(self.values),
                                   masks=pick(self.masks), ids=pick(self.ids))

    def padded(self, length: int | None = None):
        """The series as arrays `(times (N, L), values (N, L, D), mask (N, L, D))`, each
        padded to `length` (default the longest) past its end with strictly increasing
        times (a small step beyond the last) and mask 0, so that every padded time
        grid is still increasing and padded points carry no weight."""
        L = max(self.lengths) if length is None else int(length)
        n, d = len(self), self.dim
        ts = np.zeros((n, L))
        ys = np.zeros((n, L, d))
        ms = np.zeros((n, L, d), bool)
        for i, (t, y, m) in enumerate(zip(self.times, self.values, self.masks)):
            k = len(t)
            span = float(t[-1] - t[0]) if k > 1 else 1.0
            step = 1e-3 * (span if span > 0 else 1.0) / max(L, 1)
            ts[i, :k] = t
            ts[i, k:] = t[-1] + step * np.arange(1, L - k + 1)
            ys[i, :k] = y
            ms[i, :k] = m
        return ts, ys, ms

    @classmethod
    def from_arrays(cls, t, y, mask=None, *, names=None, source: str = "") -> "Trajectories":
        """Series from arrays: `t` of shape `(T,)` (shared) or `(N, T)`, `y` of shape
        `(N, T, D)`, `mask` (optional) of shape `(N, T, D)` or `(N, T)`."""
        t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
        n, length, d = y.shape
        t = np.broadcast_to(t, (n, length)) if t.ndim == 1 else t
        m = np.ones(y.shape, bool) if mask is None else np.asarray(mask, bool)
        if m.ndim == 2:
            m = np.broadcast_to(m[..., None], y.shape)
        names = tuple(names) if names is not None else tuple(f"x{i + 1}" for i in range(d))
        return cls(times=tuple(np.array(t[i]) for i in range(n)),
                   values=tuple(np.where(m[i], y[i], 0.0) for i in range(n)),
                   masks=tuple(np.array(m[i]) for i in range(n)), names=names,
                   ids=tuple(str(i) for i in range(n)), source=source)


# ----------------------------------------------------------------- CSV


def _csv_rows(path, blob: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """`(header, [(line number, cells), ...])` of a CSV file; blank lines skipped."""
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{_what(path)} is not UTF-8 text (byte {e.start}); save it as "
                         "UTF-8 CSV.") from None
    if not text.strip():
        raise InputError(f"{_what(path)} is empty; a CSV needs a header row of column "
                         "names and at least one data row.")
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                rows.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as e:
        raise InputError(f"{_what(path)}: line {reader.line_num} is not valid CSV ({e}).") from None
    header_line, header = rows[0]
    for i, name in enumerate(header):
        if not name:
            raise InputError(f"{_what(path)}: column {i + 1} of the header (line {header_line}) "
                             "has no name; every column needs one.")
    dup = [c for c in header if header.count(c) > 1]
    if dup:
        raise InputError(f"{_what(path)}: the header names column {dup[0]!r} twice.")
    body = rows[1:]
    if not body:
        raise InputError(f"{_what(path)} has a header but no data rows.")
    for line, cells in body:
        if len(cells) != len(header):
            raise InputError(f"{_what(path)}: line {line} has {len(cells)} cells, the header "
                             f"has {len(header)} columns ({', '.join(header)}).")
    return header, body


_MISSING = ("", "nan", "na", "null")


def _column(path, header, key: str, name: str) -> int:
    if name not in header:
        hint = closest(name, header) if len(name) > 2 else None
        did = f"; did you mean {hint!r}?" if hint else "."
        raise InputError(f"{_what(path)} has no column {name!r} ({key}){did} Columns found: "
                         f"{', '.join(header)}.")
    return header.index(name)


def _number(path, line: int, column: str, cell: str) -> float:
    """A cell as a float; NaN when empty (or `nan`/`NA`/`null`)."""
    if cell.lower() in _MISSING:
        return math.nan
    try:
        x = float(cell)
    except ValueError:
        raise InputError(f"{_what(path)}: line {line}, column {column!r}: {cell!r} is not a "
                         "number (cells hold numbers; an empty cell is a missing value, "
                         "which only the latent task accepts).") from None
    if math.isinf(x):
        raise InputError(f"{_what(path)}: line {line}, column {column!r}: {cell!r} is not "
                         "finite; only finite numbers (or an empty cell, where missing "
                         "values are allowed) can be read.")
    return x


def _check_increasing(path, times, lines, series_name: str | None) -> None:
    bad = np.nonzero(np.diff(times) <= 0)[0]
    if len(bad):
        i = int(bad[0]) + 1
        where = f" in series {series_name!r}" if series_name is not None else ""
        fix = ("sort the file by series, then time" if series_name is not None else
               "sort the rows by time, or name the column that tells series apart with "
               "data.series")
        raise InputError(f"{_what(path)}: line {lines[i]}: time {times[i]:g} does not come "
                         f"after {times[i - 1]:g} (line {lines[i - 1]}){where}; times must "
                         f"increase within a series ({fix}).")


def _state_columns(header, state, exclude, key: str, path) -> list[str]:
    if state is None:
        cols = [c for c in header if c not in exclude]
        if not cols:
            raise InputError(f"{_what(path)} has no columns besides {', '.join(exclude)}; "
                             f"name the state columns with {key}.")
        return cols
    for c in state:
        _column(path, header, key, c)
    return list(state)


def _missing_refused(path, line, column, task: str) -> InputError:
    return InputError(f"{_what(path)}: line {line}, column {column!r} is empty or NaN, but "
                      f"the {task} task takes no missing values (only the latent task masks "
                      "them); fill or drop the row.")


def read_trajectories(
    path,
    *,
    time: str = "t",
    state: list[str] | None = None,
    series: str | None = None,
    allow_missing: bool = False,
    task: str = "trajectory",
) -> Trajectories:
    """Read observed trajectories from a CSV or NPZ file.

    - CSV: a header row, a `time` column, `state` columns (default: every other
      column except `series`), and optionally a `series` column whose values tell the
      trajectories apart (any text). Times must increase within each series and may be
      irregular. Empty cells (or `nan`) are missing values.
    - NPZ (`np.savez`): `t` of shape `(T,)` (shared) or `(N, T)`, `y` of shape
      `(N, T, D)`, optionally `mask` of shape `(N, T, D)` or `(N, T)` (1 where
      observed); NaN in `y` is a missing value. `state` names the `D` coordinates.

    **Arguments:**

    - `path`: the file (`.csv` or `.npz`).
    - `time`, `state`, `series`: the CSV columns (as `data.time`, `data.state`,
      `data.series` in a config).
    - `allow_missing`: accept missing values (masked); otherwise they are refused.
    - `task`: named in the message that refuses a missing value.

    **Returns:** a `Trajectories`.

    **Raises:** `InputError` naming the file, the line or array and what is wrong:
    a missing or unreadable file, an empty file, a missing column (listing the
    columns found), a non-numeric or infinite cell (with its line), times that do not
    increase within a series, a missing value where none is allowed, arrays of the
    wrong shape.

    **Example:**

    ```python
    import tempfile, pathlib
    import nodekit

    path = pathlib.Path(tempfile.mkdtemp()) / "obs.csv"
    path.write_text("t,x,v\\n0,1,0\\n0.1,0.99,-0.1\\n0.25,0.97,-0.24\\n")
    tr = nodekit.data.read_trajectories(path, time="t", state=["x", "v"])
    print(tr.names, tr.lengths)      # ('x', 'v') [3]
    ```
    """
    blob = _read(path)
    if _suffix(path) == ".npz":
        return _npz_trajectories(path, blob, state, allow_missing, task)
    header, body = _csv_rows(path, blob)
    if series is not None and series == time:
        raise InputError(f"{_what(path)}: data.series names the time column {time!r}; it "
                         "names the column that tells the trajectories apart.")
    ti = _column(path, header, "data.time", time)
    si = _column(path, header, "data.series", series) if series is not None else None
    exclude = [time] + ([series] if series is not None else [])
    cols = _state_columns(header, state, exclude, "data.state", path)
    if time in cols or (series is not None and series in cols):
        raise InputError(f"{_what(path)}: data.state lists the time or series column; it names "
                         "the state's columns only.")
    idx = [header.index(c) for c in cols]
    groups: dict[str, list[int]] = {}
    lines = np.array([line for line, _ in body])
    times = np.empty(len(body))
    values = np.empty((len(body), len(cols)))
    for r, (line, cells) in enumerate(body):
        t = _number(path, line, time, cells[ti])
        if math.isnan(t):
            raise InputError(f"{_what(path)}: line {line}: the time column {time!r} is empty; "
                             "every row needs a time.")
        times[r] = t
        for j, (c, k) in enumerate(zip(cols, idx)):
            x = _number(path, line, c, cells[k])
            if math.isnan(x) and not allow_missing:
                raise _missing_refused(path, line, c, task)
            values[r, j] = x
        sid = cells[si] if si is not None else "0"
        if si is not None and not sid:
            raise InputError(f"{_what(path)}: line {line}: the series column {series!r} is "
                             "empty; every row needs the name of its series.")
        groups.setdefault(sid, []).append(r)
    out_t, out_y, out_m = [], [], []
    for sid, rows in groups.items():
        rows = np.asarray(rows)
        _check_increasing(path, times[rows], lines[rows], sid if si is not None else None)
        y = values[rows]
        m = ~np.isnan(y)
        out_t.append(times[rows])
        out_y.append(np.where(m, y, 0.0))
        out_m.append(m)
    return Trajectories(times=tuple(out_t), values=tuple(out_y), masks=tuple(out_m),
                        names=tuple(cols), ids=tuple(groups), source=str(path))


# ----------------------------------------------------------------- NPZ


def _npz(path, blob: bytes, expected: dict[str, str]) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` archive; `expected` maps each allowed key to its
    description (keys with a description starting `optional` may be absent)."""
    try:
        archive = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        if not blob:
            raise InputError(f"{_what(path)} is empty; save arrays with np.savez(path, "
                             f"{', '.join(f'{k}=...' for k in expected)}).") from None
        raise InputError(f"{_what(path)} is not a NumPy .npz archive ({type(e).__name__}); "
                         f"save arrays with np.savez(path, "
                         f"{', '.join(f'{k}=...' for k in expected)}).") from None
    if isinstance(archive, np.ndarray):
        raise InputError(f"{_what(path)} holds one array (a .npy file); save named arrays "
                         f"with np.savez(path, {', '.join(f'{k}=...' for k in expected)}).")
    with archive:
        keys = list(archive.files)
        allowed = "; ".join(f"{k}: {d}" for k, d in expected.items())
        for k in keys:
            if k not in expected:
                hint = closest(k, list(expected))
                did = f"; did you mean {hint!r}?" if hint else "."
                raise InputError(f"{_what(path)} holds an array {k!r} that is not read{did} "
                                 f"Arrays read: {allowed}.")
        for k, d in expected.items():
            if k not in keys and not d.startswith("optional"):
                raise InputError(f"{_what(path)} has no array {k!r}; arrays found: "
                                 f"{', '.join(keys) or 'none'}. Arrays read: {allowed}.")
        out = {}
        for k in keys:
            try:
                a = archive[k]
            except ValueError:
                raise InputError(f"{_what(path)}: array {k!r} holds Python objects, which "
                                 "are never unpickled; save numbers.") from None
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise InputError(f"{_what(path)}: array {k!r} cannot be read ({e}).") from None
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or \
                    np.issubdtype(a.dtype, np.complexfloating):
                raise InputError(f"{_what(path)}: array {k!r} has dtype {a.dtype}; save real "
                                 "numbers.")
            out[k] = a
    return out


def _finite_or_nan(path, name, a, allow_nan: bool):
    a = np.asarray(a, np.float64)
    if np.isinf(a).any():
        i = tuple(int(x) for x in np.argwhere(np.isinf(a))[0])
        raise InputError(f"{_what(path)}: array {name!r} holds an infinite value at index {i}.")
    if not allow_nan and np.isnan(a).any():
        i = tuple(int(x) for x in np.argwhere(np.isnan(a))[0])
        return a, i
    return a, None


def _npz_trajectories(path, blob, state, allow_missing, task) -> Trajectories:
    arr = _npz(path, blob, {"t": "(T,) or (N, T) times", "y": "(N, T, D) values",
                            "mask": "optional (N, T, D) or (N, T), 1 where observed"})
    y, _ = _finite_or_nan(path, "y", arr["y"], True)
    if y.ndim != 3:
        raise InputError(f"{_what(path)}: y must have shape (N, T, D) (N series of T times, D "
                         f"coordinates), got {y.shape}; for one series use y[None].")
    n, length, d = y.shape
    if n == 0 or length == 0 or d == 0:
        raise InputError(f"{_what(path)}: y has shape {y.shape}: no series to read (the file "
                         "is empty).")
    t, bad = _finite_or_nan(path, "t", arr["t"], False)
    if bad is not None:
        raise InputError(f"{_what(path)}: array 't' holds NaN at index {bad}; every time must "
                         "be a number.")
    if t.shape not in ((length,), (n, length)):
        raise InputError(f"{_what(path)}: t must have shape ({length},) or ({n}, {length}) to "
                         f"match y {y.shape}, got {t.shape}.")
    t = np.broadcast_to(t, (n, length))
    for i in range(n):
        bad = np.nonzero(np.diff(t[i]) <= 0)[0]
        if len(bad):
            j = int(bad[0]) + 1
            raise InputError(f"{_what(path)}: series {i}: t[{j}] = {t[i, j]:g} does not come "
                             f"after t[{j - 1}] = {t[i, j - 1]:g}; times must increase within "
                             "a series.")
    if "mask" in arr:
        m = np.asarray(arr["mask"])
        if m.shape not in (y.shape, y.shape[:2]):
            raise InputError(f"{_what(path)}: mask must have shape {y.shape} or {y.shape[:2]} "
                             f"to match y, got {m.shape}.")
        if not np.isin(m, (0, 1)).all():
            raise InputError(f"{_what(path)}: mask must hold 0 or 1 (1 where observed).")
        m = np.broadcast_to(m.astype(bool)[..., None] if m.ndim == 2 else m.astype(bool), y.shape)
        hole = np.argwhere(m & np.isnan(y))
        if len(hole):
            raise InputError(f"{_what(path)}: y is NaN at index {tuple(int(x) for x in hole[0])}, "
                             "where mask says observed (1).")
    else:
        m = ~np.isnan(y)
    if not allow_missing and not m.all():
        i = tuple(int(x) for x in np.argwhere(~m)[0])
        raise InputError(f"{_what(path)}: y has a missing value (NaN or mask 0) at index {i}, "
                         f"but the {task} task takes no missing values (only the latent task "
                         "masks them).")
    if state is not None and len(state) != d:
        raise InputError(f"{_what(path)}: data.state names {len(state)} coordinates "
                         f"({', '.join(state)}) but y has D = {d}.")
    return Trajectories.from_arrays(t, np.where(m, y, 0.0), m, names=state, source=str(path))


# ----------------------------------------------------------------- samples and labels


def read_samples(path, *, columns: list[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Read samples of a density from a CSV (`columns`, default all) or an NPZ (`x` of
    shape `(N, D)`).

    **Returns:** `(x, names)`: float64 `(N, D)` and the coordinate names.

    **Raises:** `InputError` naming the file and the problem (as `read_trajectories`;
    missing values are refused).

    **Example:**

    ```python
    import tempfile, pathlib
    import numpy as np
    import nodekit

    path = pathlib.Path(tempfile.mkdtemp()) / "samples.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(100, 2)))
    x, names = nodekit.data.read_samples(path)
    print(x.shape, names)            # (100, 2) ('x0', 'x1')
    ```
    """
    blob = _read(path)
    if _suffix(path) == ".npz":
        arr = _npz(path, blob, {"x": "(N, D) samples"})
        x, bad = _finite_or_nan(path, "x", arr["x"], False)
        if bad is not None:
            raise InputError(f"{_what(path)}: x holds NaN at index {bad}; the density task "
                             "takes no missing values.")
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise InputError(f"{_what(path)}: x must have shape (N, D) with N, D >= 1, got "
                             f"{x.shape}.")
        names = tuple(columns) if columns else tuple(f"x{i}" for i in range(x.shape[1]))
        if len(names) != x.shape[1]:
            raise InputError(f"{_what(path)}: data.state names {len(names)} coordinates but x "
                             f"has D = {x.shape[1]}.")
        return x, names
    header, body = _csv_rows(path, blob)
    cols = _state_columns(header, columns, [], "data.state", path)
    idx = [header.index(c) for c in cols]
    x = np.empty((len(body), len(cols)))
    for r, (line, cells) in enumerate(body):
        for j, (c, k) in enumerate(zip(cols, idx)):
            v = _number(path, line, c, cells[k])
            if math.isnan(v):
                raise _missing_refused(path, line, c, "density")
            x[r, j] = v
    return x, tuple(cols)


def read_labelled(path) -> LabelledData:
    """Read labelled examples from an NPZ: `x` of shape `(N, D)` (vectors) or
    `(N, C, H, W)` (images), `y` of shape `(N,)`: integer classes `0..K-1`, or `±1`
    targets (floats).

    **Returns:** a `LabelledData` with `x` float64 and `y` int64 (classes) or float64
    (±1 targets).

    **Raises:** `InputError` naming the file and the problem.

    **Example:**

    ```python
    import tempfile, pathlib
    import numpy as np
    import nodekit

    path = pathlib.Path(tempfile.mkdtemp()) / "xy.npz"
    np.savez(path, x=np.zeros((6, 2)), y=np.array([0, 1, 2, 0, 1, 2]))
    data = nodekit.data.read_labelled(path)
    print(data.x.shape, data.y.dtype)     # (6, 2) int64
    ```
    """
    blob = _read(path)
    if _suffix(path) != ".npz":
        raise InputError(f"{_what(path)}: labelled examples are read from an .npz file holding "
                         "x (inputs) and y (labels).")
    arr = _npz(path, blob, {"x": "(N, D) or (N, C, H, W) inputs",
                            "y": "(N,) integer classes or ±1 targets"})
    x, bad = _finite_or_nan(path, "x", arr["x"], False)
    if bad is not None:
        raise InputError(f"{_what(path)}: x holds NaN at index {bad}; every input must be a "
                         "number.")
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise InputError(f"{_what(path)}: x must have shape (N, D) (vectors) or (N, C, H, W) "
                         f"(images) with N >= 1, got {x.shape}.")
    y = np.asarray(arr["y"])
    if y.shape != (x.shape[0],):
        raise InputError(f"{_what(path)}: y must have shape ({x.shape[0]},), one label per "
                         f"example of x, got {y.shape}.")
    if np.issubdtype(y.dtype, np.integer):
        if (y < 0).any():
            raise InputError(f"{_what(path)}: y holds a negative class ({int(y.min())}); "
                             "classes are 0, 1, ..., K-1.")
        if len(np.unique(y)) < 2:
            raise InputError(f"{_what(path)}: y holds one class only; a classifier needs two "
                             "or more.")
        return LabelledData(x, y.astype(np.int64))
    yf = np.asarray(y, np.float64)
    if not np.isin(yf, (-1.0, 1.0)).all():
        raise InputError(f"{_what(path)}: y must hold integer classes 0..K-1 (an integer "
                         "array) or ±1 targets (floats); found other values.")
    return LabelledData(x, yf)


# ----------------------------------------------------------------- splits, normalisation


def split_three(n: int, *, val_fraction: float, test_fraction: float, seed: int,
                labels=None, what: str = "series"):
    """Random disjoint `(train, validation, test)` indices covering `range(n)`:
    `round(test_fraction n)` test and `round(val_fraction n)` validation items
    (stratified by `labels` when given), the rest for training; a pure function of the
    arguments.

    **Raises:** `ConfigError` naming `data.test_fraction`/`data.val_fraction` when a
    fraction rounds to an empty part or leaves nothing to train on.

    **Example:**

    ```python
    import nodekit

    train, val, test = nodekit.data.split_three(10, val_fraction=0.2, test_fraction=0.2, seed=0)
    print(len(train), len(val), len(test))     # 6 2 2
    ```
    """
    from .._errors import ConfigError

    n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
    for key, frac, k in (("data.test_fraction", test_fraction, n_test),
                         ("data.val_fraction", val_fraction, n_val)):
        if frac > 0 and k == 0:
            raise ConfigError(key, f"got {frac}: of {n} {what} that is none; give more "
                                   f"{what}, a larger fraction, or 0.")
    if n - n_test - n_val < 1:
        raise ConfigError("data.test_fraction", f"with data.val_fraction, leaves no training "
                                                f"{what} of the {n}; use smaller fractions.")
    everything = np.arange(n)
    if n_test:
        rest, test = split_indices(n, test_fraction=n_test / n, seed=seed, labels=labels)
    else:
        rest, test = everything, everything[:0]
    if n_val:
        sub = None if labels is None else np.asarray(labels)[rest]
        tr, va = split_indices(len(rest), test_fraction=n_val / len(rest), seed=seed + 1,
                               labels=sub)
        train, val = rest[tr], rest[va]
    else:
        train, val = rest, everything[:0]
    return train, val, test


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """Per-coordinate standardisation `(x - mean) / std`, with statistics from the
    training part of a data set (saved with a run, so predictions can be mapped back
    to the data's units).

    **Fields:** `mean`, `std` (float64 arrays of shape `(D,)`), `names` (the `D`
    coordinate names).

    **Example:**

    ```python
    import numpy as np
    import nodekit

    norm = nodekit.data.Normalisation.fit(np.array([[0.0, 10.0], [2.0, 30.0]]), names=("a", "b"))
    z = norm.apply(np.array([1.0, 20.0]))       # [0, 0]
    x = norm.invert(z)                          # back to [1, 20]
    ```
    """

    mean: np.ndarray
    std: np.ndarray
    names: tuple = ()

    @classmethod
    def fit(cls, values, mask=None, *, names=(), axis=None) -> "Normalisation":
        """Statistics of `values` (`(..., D)`; or images `(N, C, H, W)` with `axis=1`,
        one mean and std per channel), over the entries where `mask` is true (default
        all). A coordinate with no spread keeps the scale 1."""
        v = np.asarray(values, np.float64)
        if axis is not None:  # per channel: move it last, flatten the rest
            v = np.moveaxis(v, axis, -1)
        v = v.reshape(-1, v.shape[-1])
        m = np.ones(v.shape, bool) if mask is None else np.asarray(mask, bool).reshape(v.shape)
        count = np.maximum(m.sum(0), 1)
        mean = np.where(m, v, 0.0).sum(0) / count
        var = np.where(m, (v - mean) ** 2, 0.0).sum(0) / count
        std = np.sqrt(var)
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return cls(mean=mean, std=std, names=tuple(names))

    def apply(self, x, axis: int = -1):
        """`(x - mean) / std` along `axis` (the coordinate axis)."""
        x = np.asarray(x, np.float64)
        shape = [1] * x.ndim
        shape[axis] = -1
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)

    def invert(self, z, axis: int = -1):
        """`z * std + mean`: back to the data's units."""
        z = np.asarray(z, np.float64)
        shape = [1] * z.ndim
        shape[axis] = -1
        return z * self.std.reshape(shape) + self.mean.reshape(shape)

    def to_dict(self) -> dict:
        """JSON-able statistics: `{"names", "mean", "std"}`."""
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        """The inverse of `to_dict`."""
        return cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64),
                   names=tuple(d.get("names", ())))
