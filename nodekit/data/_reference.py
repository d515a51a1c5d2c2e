"""Ground-truth trajectories for generated data sets.

Reference data is solved in float64 with SciPy's DOP853 at tight tolerances: more
accurate than a float32 solve, and with no JAX compilation, so building a data set adds
nothing to a run's time to first step.

Importing `scipy.integrate` costs about 0.6 s, more than the solve itself, so it is
imported only when a solve runs, and `cached_reference` keeps each solved trajectory on
disk (`$NODEKIT_CACHE_DIR/data`, default `~/.cache/nodekit/data`; `NODEKIT_DATA_CACHE=0`
turns it off): a second run of the same config loads the stored array, bit for bit the
one it would have solved, without importing SciPy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np


def reference_solve(rhs, y0, ts) -> np.ndarray:
    """Solve `dy/dt = rhs(t, y)` (NumPy, float64) from `y0` at `ts[0]`, returning the
    states at `ts` as float32 of shape `(len(ts), len(y0))`."""
    from scipy.integrate import solve_ivp

    ts = np.asarray(ts, np.float64)
    sol = solve_ivp(rhs, (ts[0], ts[-1]), np.asarray(y0, np.float64), method="DOP853",
                    t_eval=ts, rtol=1e-10, atol=1e-12)
    if not sol.success:  # pragma: no cover - the built-in problems are benign
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return sol.y.T.astype(np.float32)


def _cache_dir() -> Path | None:
    if os.environ.get("NODEKIT_DATA_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("NODEKIT_CACHE_DIR") or str(Path.home() / ".cache" / "nodekit")
    return Path(root) / "data"


def _key(name: str, params) -> str:
    """Identifies one stored trajectory: the generator and its arguments, the versions
    of NumPy and SciPy, and the source of `nodekit.data` (an edited generator never
    loads a stale array)."""
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(json.dumps([name, params, np.__version__, version("scipy")], default=repr).encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:32]


def cached_reference(name: str, params, shape: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, a float32 reference trajectory of `shape`, stored on disk under a
    key made of `name`, `params` (JSON-able) and the library versions, and loaded from
    there next time. The cache is an optimisation only: an entry is used only when its
    stored key and content hash match (`nodekit._io` cache entries); an unreadable,
    mismatched or unwritable entry means the trajectory is solved as if there were
    none (with a note for the run's log, `nodekit._io.take_notes`)."""
    import io

    from .._io import note, pack_cache_entry, read_cache_entry

    folder = _cache_dir()
    path = key = None
    if folder is not None:
        try:
            key = _key(name, params)
            path = folder / f"{name}-{key}.nkcache"
            payload, why = read_cache_entry(path, key)
            if why:
                note(why)
            if payload is not None:
                ys = np.load(io.BytesIO(payload), allow_pickle=False)
                if ys.dtype == np.float32 and ys.shape == tuple(shape):
                    return ys
                note(f"cache entry {path.name} ignored and rebuilt: it holds {ys.dtype}"
                     f"{ys.shape}, not float32{tuple(shape)}")
        except Exception as e:  # noqa: BLE001 - fall back to solving
            note(f"data cache skipped ({type(e).__name__}: {e})")
    ys = compute()
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, ys, allow_pickle=False)
            with open(tmp, "wb") as f:
                f.write(pack_cache_entry(key, buf.getvalue()))
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - e.g. a read-only home: just don't store it
            try:
                tmp.unlink(missing_ok=True)
            except Exception:  # noqa: BLE001
                pass
    return ys
