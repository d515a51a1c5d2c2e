"""The user's own data files and model code: CSV and NPZ round trips, every malformed
file refused with one message naming the file, the line or array and what is allowed,
the train/validation/test split and normalisation, and `python` targets checked before
anything is compiled.

Most cases call the library directly (milliseconds each); two `nodekit` subprocesses
prove the exit code and the one-line message end to end.
"""

from __future__ import annotations

import csv
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nodekit
from nodekit import ConfigError, InputError
from nodekit.data import (
    Normalisation,
    read_labelled,
    read_samples,
    read_trajectories,
    split_three,
)

from .helpers import run_cli


def _csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _series(seed=0, n=3):
    """`n` series of irregular, different-length times with 2 coordinates."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(g.integers(5, 9))
        t = np.cumsum(g.uniform(0.05, 0.5, k))
        out.append((f"s{i}", t, g.standard_normal((k, 2))))
    return out


# --------------------------------------------------------------------------- round trips


def test_csv_round_trip_with_series_and_irregular_times(tmp_path):
    series = _series()
    rows = [[sid, repr(float(t)), repr(float(y[0])), repr(float(y[1]))]
            for sid, ts, ys in series for t, y in zip(ts, ys)]
    # rows of different series interleaved: each series keeps its own order
    rows = rows[::2] + rows[1::2]
    rows.sort(key=lambda r: (r[0], float(r[1])))
    path = _csv(tmp_path / "obs.csv", ["id", "time", "x", "v"], rows)
    tr = read_trajectories(path, time="time", state=["x", "v"], series="id")
    assert tr.ids == ("s0", "s1", "s2") and tr.names == ("x", "v") and tr.fully_observed
    for (sid, ts, ys), t, y in zip(series, tr.times, tr.values):
        np.testing.assert_array_equal(t, ts)  # exact: repr round-trips a float
        np.testing.assert_array_equal(y, ys)
    # the state defaults to every column but time and series
    assert read_trajectories(path, time="time", series="id").names == ("x", "v")


def test_csv_missing_cells_are_masked_where_allowed(tmp_path):
    path = _csv(tmp_path / "m.csv", ["t", "a", "b"], [[0, 1, ""], [1, "", 2], [2, 3, "nan"]])
    tr = read_trajectories(path, allow_missing=True, task="latent")
    np.testing.assert_array_equal(tr.masks[0], [[1, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(tr.values[0], [[1, 0], [0, 2], [3, 0]])
    with pytest.raises(InputError, match=r"line 2, column 'b' is empty or NaN.*trajectory task"):
        read_trajectories(path)


@pytest.mark.parametrize("shared_t", [True, False])
def test_npz_round_trip(shared_t, tmp_path):
    g = np.random.default_rng(1)
    n, length, d = 3, 6, 2
    t = np.cumsum(g.uniform(0.1, 1.0, (n, length)), axis=1)
    t = t[0] if shared_t else t
    y = g.standard_normal((n, length, d))
    mask = g.random((n, length)) < 0.7
    mask[:, 0] = True
    np.savez(tmp_path / "a.npz", t=t, y=y, mask=mask)
    tr = read_trajectories(tmp_path / "a.npz", state=["p", "q"], allow_missing=True)
    assert tr.names == ("p", "q") and len(tr) == n
    for i in range(n):
        np.testing.assert_array_equal(tr.times[i], t if shared_t else t[i])
        np.testing.assert_array_equal(tr.masks[i], np.repeat(mask[i][:, None], d, 1))
        np.testing.assert_array_equal(tr.values[i], np.where(mask[i][:, None], y[i], 0.0))
    # padded arrays: the padding continues the times upwards and carries no weight
    ts, ys, ms = tr.padded(length + 3)
    assert ts.shape == (n, length + 3) and (np.diff(ts, axis=1) > 0).all()
    assert not ms[:, length:].any()


def test_samples_and_labelled_round_trips(tmp_path):
    g = np.random.default_rng(2)
    x = g.standard_normal((20, 3))
    np.savez(tmp_path / "s.npz", x=x)
    got, names = read_samples(tmp_path / "s.npz")
    np.testing.assert_array_equal(got, x)
    assert names == ("x0", "x1", "x2")
    _csv(tmp_path / "s.csv", ["u", "w", "z"], [[repr(float(v)) for v in row] for row in x])
    got, names = read_samples(tmp_path / "s.csv", columns=["z", "u"])
    np.testing.assert_array_equal(got, x[:, [2, 0]])
    assert names == ("z", "u")
    y = g.integers(0, 3, 20)
    np.savez(tmp_path / "c.npz", x=x, y=y)
    data = read_labelled(tmp_path / "c.npz")
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    np.savez(tmp_path / "pm.npz", x=x, y=np.where(y > 0, 1.0, -1.0))
    assert read_labelled(tmp_path / "pm.npz").y.dtype == np.float64


# --------------------------------------------------------------------------- malformed files

GOOD = "t,x,v\n0,1,0\n0.5,0.9,-0.2\n1.0,0.7,-0.4\n"

#: name -> (file name, content (text or a function writing the file), reader kwargs,
#:          words the message must hold)
MALFORMED = {
    "missing-file": ("nope.csv", None, {}, ["does not exist"]),
    "empty-file": ("e.csv", "", {}, ["is empty"]),
    "header-only": ("h.csv", "t,x,v\n", {}, ["header but no data rows"]),
    "missing-column": ("c.csv", GOOD, {"state": ["x", "w"]},
                       ["no column 'w'", "data.state", "Columns found: t, x, v"]),
    "missing-time-column": ("c.csv", GOOD, {"time": "time"},
                            ["no column 'time'", "data.time", "Columns found: t, x, v"]),
    "non-numeric-cell": ("n.csv", "t,x,v\n0,1,0\n0.5,oops,1\n", {},
                         ["line 3", "column 'x'", "'oops' is not a number"]),
    "infinite-cell": ("i.csv", "t,x,v\n0,1,0\n0.5,inf,1\n", {}, ["line 3", "not finite"]),
    "times-not-increasing": ("d.csv", "t,x,v\n0,1,0\n0.5,1,0\n0.5,1,0\n", {},
                             ["line 4", "does not come after", "increase within a series"]),
    "times-not-increasing-in-series": (
        "s.csv", "id,t,x\na,0,1\nb,0,1\na,1,1\nb,2,1\na,0.5,1\n", {"series": "id"},
        ["line 6", "series 'a'", "sort the file by series"]),
    "nan-without-masks": ("nan.csv", "t,x,v\n0,1,0\n0.5,,1\n", {},
                          ["line 3", "column 'x'", "empty or NaN", "takes no missing values"]),
    "ragged-row": ("r.csv", "t,x,v\n0,1,0\n0.5,1\n", {}, ["line 3 has 2 cells", "3 columns"]),
    "not-utf8": ("u.csv", b"t,x\n0,\xff\n", {}, ["not UTF-8"]),
    "npz-not-an-archive": ("z.npz", b"not a zip file", {}, ["not a NumPy .npz archive"]),
    "npz-missing-array": ("z.npz", lambda p: np.savez(p, t=np.arange(3.0)), {},
                          ["no array 'y'", "arrays found: t"]),
    "npz-unknown-array": ("z.npz", lambda p: np.savez(p, t=np.arange(3.0),
                                                      y=np.zeros((1, 3, 1)), maks=np.ones(3)),
                          {}, ["'maks'", "did you mean 'mask'?"]),
    "npz-wrong-shape": ("z.npz", lambda p: np.savez(p, t=np.arange(3.0), y=np.zeros((3, 2))),
                        {}, ["y must have shape (N, T, D)", "(3, 2)"]),
    "npz-time-mismatch": ("z.npz", lambda p: np.savez(p, t=np.arange(4.0),
                                                      y=np.zeros((1, 3, 1))),
                          {}, ["t must have shape (3,) or (1, 3)"]),
    "npz-times-not-increasing": ("z.npz", lambda p: np.savez(p, t=np.array([0.0, 2, 1]),
                                                             y=np.zeros((1, 3, 1))),
                                 {}, ["series 0", "t[2]", "increase"]),
    "npz-objects": ("z.npz", lambda p: np.savez(p, t=np.arange(2.0),
                                                y=np.array([None, {}], dtype=object)),
                    {}, ["'y'", "Python objects"]),
    "npz-nan-without-masks": ("z.npz", lambda p: np.savez(p, t=np.arange(2.0),
                                                          y=np.array([[[1.0], [np.nan]]])),
                              {}, ["missing value", "index (0, 1, 0)", "takes no missing"]),
    "npz-empty": ("z.npz", lambda p: np.savez(p, t=np.zeros(0), y=np.zeros((0, 0, 1))), {},
                  ["no series"]),
    "wrong-extension": ("x.txt", GOOD, {}, [".csv or .npz"]),
    "a-directory": ("adir.csv", "DIR", {}, ["is a directory"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_trajectory_file_is_refused(case, tmp_path):
    name, content, kwargs, needles = MALFORMED[case]
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif callable(content):
        with open(path, "wb") as f:
            content(f)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as e:
        read_trajectories(path, **kwargs)
    msg = str(e.value)
    assert name in msg, msg  # the file is named
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "\n" not in msg


@pytest.mark.parametrize("content, needles", [
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.array([0, 1, -1, 0])), ["negative class"]),
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.zeros(4, int)), ["one class only"]),
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.array([0.5, 1, -1, 1])), ["±1 targets"]),
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.array([0, 1, 1])), ["y must have shape (4,)"]),
    (lambda p: np.savez(p, x=np.zeros((4, 2, 2)), y=np.array([0, 1, 1, 0])),
     ["(N, D)", "(N, C, H, W)"]),
    (lambda p: np.savez(p, x=np.full((4, 2), np.nan), y=np.array([0, 1, 1, 0])), ["NaN"]),
])
def test_malformed_labelled_file_is_refused(content, needles, tmp_path):
    path = tmp_path / "xy.npz"
    with open(path, "wb") as f:
        content(f)
    with pytest.raises(InputError) as e:
        read_labelled(path)
    for needle in ["xy.npz"] + needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_sample_file_refuses_missing_values(tmp_path):
    path = _csv(tmp_path / "s.csv", ["a", "b"], [[1, 2], [3, ""]])
    with pytest.raises(InputError, match=r"line 3, column 'b'.*density task takes no missing"):
        read_samples(path)


# --------------------------------------------------------------------------- tasks on files


def _config(tmp_path, data: dict, **sections) -> dict:
    return {"data": {"name": "file", **data},
            "train": {"steps": 2, "batch_size": 2, "progress": False}, **sections}


def test_too_few_points_for_batch_time(tmp_path):
    from nodekit.tasks import make_task

    _csv(tmp_path / "short.csv", ["run", "t", "x"],
         [["a", i, i] for i in range(6)] + [["b", i, i] for i in range(3)])
    cfg = nodekit.validate_config(_config(tmp_path, {"path": "short.csv", "series": "run",
                                                     "batch_time": 4}), base_dir=tmp_path)
    with pytest.raises(InputError) as e:
        make_task(cfg)
    for needle in ("short.csv", "series 'b' has 3 points", "data.batch_time = 4"):
        assert needle in str(e.value), str(e.value)


def test_split_and_normalisation_use_the_training_part_only(tmp_path):
    """The held-out series are drawn by the seed and never enter the statistics."""
    from nodekit.tasks import make_task

    g = np.random.default_rng(3)
    rows = []
    for i in range(10):  # series i has its mean near 10 i: the parts' statistics differ
        rows += [[f"s{i}", k, repr(10.0 * i + g.standard_normal())] for k in range(6)]
    _csv(tmp_path / "d.csv", ["id", "t", "x"], rows)
    raw = _config(tmp_path, {"path": "d.csv", "series": "id", "batch_time": 3,
                             "val_fraction": 0.2, "test_fraction": 0.2})
    task = make_task(nodekit.validate_config(raw, base_dir=tmp_path))
    train, val, test = split_three(10, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert len(train) == 6 and len(val) == 2 and len(test) == 2
    assert len(set(train) | set(val) | set(test)) == 10  # disjoint and covering
    values = np.array([float(r[2]) for r in rows]).reshape(10, 6)
    np.testing.assert_allclose(task.normalisation.mean, [values[train].mean()], rtol=1e-12)
    np.testing.assert_allclose(task.normalisation.std, [values[train].std()], rtol=1e-12)
    assert task.train.ids == tuple(f"s{i}" for i in train)
    assert task.eval_series.ids == tuple(f"s{i}" for i in val)
    assert task.test_series.ids == tuple(f"s{i}" for i in test)
    # standardised training data: mean 0, spread 1
    flat = np.concatenate([y[:, 0] for y in task._train_y])
    assert abs(flat.mean()) < 1e-6 and abs(flat.std() - 1) < 1e-5
    # the split is a pure function of data.seed
    other = make_task(nodekit.validate_config(dict(raw, seed=5), base_dir=tmp_path))
    assert other.train.ids != task.train.ids
    norm = task.normalisation
    z = norm.apply(np.array([[3.0]]))
    np.testing.assert_allclose(norm.invert(z), [[3.0]])
    back = Normalisation.from_dict(norm.to_dict())
    assert back.names == ("x",) and (back.mean == norm.mean).all() and (back.std == norm.std).all()


def test_split_fractions_that_leave_a_part_empty_name_the_key():
    with pytest.raises(ConfigError) as e:
        split_three(4, val_fraction=0.0, test_fraction=0.1, seed=0)
    assert e.value.path == "data.test_fraction"


# --------------------------------------------------------------------------- python targets


def _module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


FIELD = """
    import equinox as eqx
    import jax.numpy as jnp

    class Decay(eqx.Module):
        rate: object
        def __init__(self, rate=1.0):
            self.rate = jnp.asarray(rate)
        def __call__(self, t, y, args):
            return -self.rate * y

    class Swapped(eqx.Module):
        def __call__(self, y, t):
            return -y

    class Wide(eqx.Module):
        def __call__(self, t, y, args):
            return jnp.concatenate([y, y])

    def plain(t, y, args):
        return -y
"""


def _field_config(tmp_path, target, **kwargs):
    raw = {"data": {"name": "file", "path": "obs.csv", "batch_time": 2},
           "model": {"field": {"type": "python", "target": target, **kwargs}},
           "train": {"batch_size": 1}}
    return nodekit.validate_config(raw, base_dir=tmp_path)


@pytest.fixture
def field_folder(tmp_path):
    _module(tmp_path, "myfields", FIELD)
    _csv(tmp_path / "obs.csv", ["t", "x", "v"], [[0, 1, 0], [1, 0.5, 0.1], [2, 0.2, 0.1]])
    return tmp_path


@pytest.mark.parametrize("target, kwargs, key, needles", [
    ("nosuchmodule:F", {}, "model.field.target", ["cannot import 'nosuchmodule:F'",
                                                  "ModuleNotFoundError"]),
    ("myfields:Decai", {}, "model.field.target", ["has no 'Decai'", "did you mean 'Decay'?"]),
    ("myfields:Swapped", {}, "model.field.target", ["must be callable as f(t, y, args)",
                                                    "(y, t)"]),
    ("myfields:Wide", {}, "model.field.target", ["returns (4,)", "state of shape (2,)"]),
    ("myfields:plain", {}, "model.field.kwargs", ["calling 'myfields:plain'", "TypeError"]),
    ("myfields:Decay", {"kwargs": {"speed": 2.0}}, "model.field.kwargs",
     ["'speed'", "TypeError"]),
])
def test_bad_python_field_is_refused_naming_the_target(target, kwargs, key, needles,
                                                       field_folder):
    from nodekit.tasks import make_task

    path_before = list(sys.path)
    with pytest.raises(ConfigError) as e:
        make_task(_field_config(field_folder, target, **kwargs))
    assert e.value.path == key, str(e.value)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert sys.path == path_before  # the config's folder was on the path for the import only


def test_python_field_module_errors_and_edits(field_folder):
    from nodekit.tasks import make_task

    _module(field_folder, "broken", "import equinox as eqx\nclass F(eqx.Module):\n  def f(:\n")
    with pytest.raises(ConfigError, match=r"cannot import 'broken:F'.*SyntaxError"):
        make_task(_field_config(field_folder, "broken:F"))
    task = make_task(_field_config(field_folder, "myfields:Decay", kwargs={"rate": 2.0}))
    import jax

    model = task.make_model(jax.random.PRNGKey(0))
    assert float(model.field.rate) == 2.0 and task.fingerprint() is not None
    # an edited module is read afresh (and changes the run's fingerprint)
    _module(field_folder, "myfields", FIELD.replace("-self.rate * y", "-2 * self.rate * y"))
    again = make_task(_field_config(field_folder, "myfields:Decay", kwargs={"rate": 2.0}))
    y = jax.numpy.ones(2)
    assert float(again.make_model(jax.random.PRNGKey(0)).field(0.0, y, None)[0]) == -4.0
    assert again.fingerprint() != task.fingerprint()


# --------------------------------------------------------------------------- end to end (CLI)


def test_cli_refuses_a_bad_data_file_with_one_line(tmp_path):
    """`nodekit validate` and `nodekit train` (subprocesses) refuse a CSV with a
    non-numeric cell and one with a missing column: exit 2, one line naming the file
    and the line or the columns found, no traceback."""
    (tmp_path / "bad.csv").write_text("t,x,v\n0,1,0\n0.5,1,zero\n")
    (tmp_path / "run.yaml").write_text("data: {name: file, path: bad.csv, state: [x, v], "
                                       "batch_time: 2}\ntrain: {batch_size: 1}\n")
    r = run_cli("validate", tmp_path / "run.yaml", cwd="/")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == ""
    for needle in ("bad.csv", "line 3", "column 'v'", "'zero' is not a number"):
        assert needle in r.stderr, r.stderr
    r = run_cli("train", tmp_path / "run.yaml", "--workdir", tmp_path / "w", "--set",
                "data.state=[x, w]", cwd="/")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    for needle in ("bad.csv", "no column 'w'", "Columns found: t, x, v"):
        assert needle in r.stderr, r.stderr
