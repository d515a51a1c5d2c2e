"""Ground-truth trajectories for generated data sets.

Reference data is solved in float64 with SciPy's DOP853 at tight tolerances: more
accurate than a float32 solve, and with no JAX compilation, so building a data set adds
nothing to a run's time to first step.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def reference_solve(rhs, y0, ts) -> np.ndarray:
    """Solve `dy/dt = rhs(t, y)` (NumPy, float64) from `y0` at `ts[0]`, returning the
    states at `ts` as float32 of shape `(len(ts), len(y0))`."""
    ts = np.asarray(ts, np.float64)
    sol = solve_ivp(rhs, (ts[0], ts[-1]), np.asarray(y0, np.float64), method="DOP853",
                    t_eval=ts, rtol=1e-10, atol=1e-12)
    if not sol.success:  # pragma: no cover - the built-in problems are benign
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return sol.y.T.astype(np.float32)
