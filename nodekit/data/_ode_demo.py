"""torchdiffeq's `ode_demo` problem: a cubic spiral `dy/dt = (y**3) @ A`."""

from __future__ import annotations

import functools

import numpy as np

from ._checks import check_float, check_int
from ._reference import cached_reference, reference_solve


#: The matrix of torchdiffeq's `ode_demo`: `dy/dt = (y**3) @ ODE_DEMO_A` (read-only).
ODE_DEMO_A = np.array([[-0.1, 2.0], [-2.0, -0.1]], dtype=np.float32)
ODE_DEMO_A.flags.writeable = False

#: The initial state of `ode_demo` (read-only).
ODE_DEMO_Y0 = np.array([2.0, 0.0], dtype=np.float32)
ODE_DEMO_Y0.flags.writeable = False


_A64 = ODE_DEMO_A.astype(np.float64)


@functools.lru_cache(maxsize=16)
def _solve(n_points: int, t1: float) -> tuple[np.ndarray, np.ndarray]:
    ts = np.linspace(0.0, t1, n_points, dtype=np.float32)
    ys = cached_reference("ode_demo_spiral", [n_points, t1], (n_points, 2),
                          lambda: reference_solve(lambda t, y: (y**3) @ _A64, ODE_DEMO_Y0, ts))
    ts.flags.writeable = False
    ys.flags.writeable = False
    return ts, ys


def ode_demo_spiral(n_points: int = 1000, t1: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory of torchdiffeq's `ode_demo`: `dy/dt = (y**3) @ A` from `y0 = [2, 0]`.

    `A = [[-0.1, 2.0], [-2.0, -0.1]]` (`ODE_DEMO_A`), `y0 = ODE_DEMO_Y0`, observed at
    `ts = linspace(0, t1, n_points)`. Solved in float64 with SciPy's DOP853 at
    `rtol=1e-10, atol=1e-12` (no JAX compilation), returned as float32. Results are
    cached per `(n_points, t1)`; each call returns fresh copies.

    **Arguments:**

    - `n_points`: number of time points, `>= 2`.
    - `t1`: the end time, `> 0`.

    **Returns:**

    `(ts, ys)`: float32 arrays of shapes `(n_points,)` and `(n_points, 2)`.

    **Raises:**

    `InputError` for a bad `n_points` or `t1`.

    **Example:**

    ```python
    import nodekit

    ts, ys = nodekit.data.ode_demo_spiral()        # (1000,), (1000, 2)
    ts, ys = nodekit.data.ode_demo_spiral(n_points=200, t1=10.0)
    ```
    """
    n_points = check_int("n_points", n_points, minimum=2)
    t1 = check_float("t1", t1, positive=True)
    ts, ys = _solve(n_points, t1)
    return ts.copy(), ys.copy()
