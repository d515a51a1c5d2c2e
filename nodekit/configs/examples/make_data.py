"""Writes the example data files beside this script (deterministic; rerun to rebuild):

- trajectories.csv: a damped pendulum (theta, omega) from three initial angles,
  50 evenly spaced times each on [0, 10] (for trajectories.yaml);
- oscillator.csv: one noiseless damped oscillator x'' + c x' + k x = 0 with k = 4,
  c = 0.3 from x = 1, v = 0, 101 times on [0, 10] (for oscillator.yaml);
- irregular.csv: 48 noisy, irregularly sampled 2-D damped rotations, 12-20 times each
  on [0, 8], about a fifth of the values missing (empty cells; for irregular.yaml).

Run: python nodekit/configs/examples/make_data.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: The oscillator's true constants (oscillator.yaml recovers them).
STIFFNESS, DAMPING = 4.0, 0.3


def _write(name: str, header: list[str], rows: list[list]) -> None:
    with open(HERE / name, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(["" if isinstance(x, float) and np.isnan(x) else
                        (f"{x:.6g}" if isinstance(x, float) else x) for x in row])


def pendulum() -> None:
    from scipy.integrate import solve_ivp

    ts = np.linspace(0.0, 10.0, 50)
    rows = []
    for k, theta0 in enumerate((0.5, 1.0, 1.5)):
        sol = solve_ivp(lambda t, y: [y[1], -np.sin(y[0]) - 0.2 * y[1]], (0.0, 10.0),
                        [theta0, 0.0], t_eval=ts, rtol=1e-10, atol=1e-12)
        rows += [[f"swing{k + 1}", float(t), float(a), float(b)]
                 for t, a, b in zip(ts, sol.y[0], sol.y[1])]
    _write("trajectories.csv", ["run", "t", "theta", "omega"], rows)


def oscillator() -> None:
    ts = np.linspace(0.0, 10.0, 101)
    gamma = DAMPING / 2
    omega = np.sqrt(STIFFNESS - gamma**2)
    decay = np.exp(-gamma * ts)
    x = decay * (np.cos(omega * ts) + gamma / omega * np.sin(omega * ts))
    v = -decay * STIFFNESS / omega * np.sin(omega * ts)
    _write("oscillator.csv", ["t", "x", "v"], [[float(a), float(b), float(c)]
                                              for a, b, c in zip(ts, x, v)])


def irregular() -> None:
    g = np.random.default_rng(0)
    rows = []
    for k in range(48):
        n = int(g.integers(12, 21))
        ts = np.sort(g.uniform(0.0, 8.0, n))
        w, phase, r = g.uniform(0.5, 1.5), g.uniform(0, 2 * np.pi), g.uniform(1.0, 2.0)
        a = r * np.exp(-0.1 * ts) * np.cos(w * ts + phase) + 0.05 * g.standard_normal(n)
        b = r * np.exp(-0.1 * ts) * np.sin(w * ts + phase) + 0.05 * g.standard_normal(n)
        missing = g.random((n, 2)) < 0.2
        missing[missing.all(1), 1] = False  # keep at least one value per row
        a[missing[:, 0]], b[missing[:, 1]] = np.nan, np.nan
        rows += [[f"p{k:02d}", float(t), float(x), float(y)] for t, x, y in zip(ts, a, b)]
    _write("irregular.csv", ["patient", "t", "a", "b"], rows)


if __name__ == "__main__":
    pendulum()
    oscillator()
    irregular()
