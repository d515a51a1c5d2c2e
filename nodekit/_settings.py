"""`SolveSettings`: how an ODE is solved (solver, tolerances, step, adjoint, limits,
checkpoints and integrator), with every default written once, and the rule that picks
the integrator (nodekit's engine or Diffrax) from what the caller asked.

The option lists (`SOLVERS`, `ADJOINTS`, `ENGINES`, `BATCH_MODES`) live here too;
`nodekit._odeint` and the config schema read them from here. Importing this module
does not import Diffrax.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._checks import check_choice, check_float, check_int
from ._errors import InputError


class _SolverInfo(NamedTuple):
    class_name: str  # the Diffrax solver class (`RK4` is nodekit's), imported on use
    adaptive: bool  # has an embedded error estimate
    evals_per_step: int  # vector-field evaluations per attempted step
    fsal: bool  # first-same-as-last: one extra evaluation at the start
    implicit: bool = False

    @property
    def cls(self) -> type:
        from ._diffrax_solve import solver_class

        return solver_class(self.class_name)


#: Solvers by name. `adaptive` solvers accept `dt0=None` (PID step-size control). The
#: evaluation counts are those of the solvers' tableaux (checked against Diffrax's in
#: tests/test_engine.py), written out so that naming a solver does not import Diffrax.
SOLVERS: dict[str, _SolverInfo] = {
    "euler": _SolverInfo("Euler", False, 1, False),
    "midpoint": _SolverInfo("Midpoint", True, 2, False),
    "heun": _SolverInfo("Heun", True, 2, False),
    "ralston": _SolverInfo("Ralston", True, 2, False),
    "rk4": _SolverInfo("RK4", False, 4, False),
    "bosh3": _SolverInfo("Bosh3", True, 3, True),
    "dopri5": _SolverInfo("Dopri5", True, 6, True),
    "tsit5": _SolverInfo("Tsit5", True, 6, True),
    "dopri8": _SolverInfo("Dopri8", True, 13, True),
    "kvaerno5": _SolverInfo("Kvaerno5", True, 6, True, implicit=True),
}

#: Solver names from SciPy, torchdiffeq and Diffrax that are not nodekit's, with
#: nodekit's equivalent and why (answered in the "unknown solver" message).
SOLVER_ALIASES: dict[str, tuple[str, str]] = {
    "RK45": ("dopri5", "SciPy's RK45 is the Dormand-Prince 5(4) pair"),
    "RK23": ("bosh3", "SciPy's RK23 is the Bogacki-Shampine 3(2) pair"),
    "DOP853": ("dopri8", "SciPy's DOP853 is Dormand-Prince's 8th-order method"),
    "Radau": ("kvaerno5", "SciPy's Radau is an implicit method for stiff problems"),
    "BDF": ("kvaerno5", "SciPy's BDF is an implicit method for stiff problems"),
    "LSODA": ("kvaerno5", "SciPy's LSODA switches to an implicit method on stiff problems "
                          "(use 'tsit5' if yours is not stiff)"),
    "adaptive_heun": ("heun", "torchdiffeq's adaptive_heun is Heun's method with an error "
                              "estimate"),
    "explicit_adams": ("tsit5", "nodekit has no Adams methods"),
    "implicit_adams": ("kvaerno5", "nodekit has no Adams methods"),
    "fixed_adams": ("rk4", "nodekit has no Adams methods"),
}

#: Adjoint (gradient) methods by name.
ADJOINTS = ("recursive", "backsolve", "direct")

#: Who integrates: `auto` (nodekit's own engine where it applies, else Diffrax; see
#: `SolveSettings.integrator`), `diffrax` (always Diffrax) or `nodekit` (the engine, or
#: an error saying why it cannot).
ENGINES = ("auto", "diffrax", "nodekit")

#: How a batch of initial states is solved: one solve per sample (`vmap`, each sample
#: picks its own steps) or the whole batch as one ODE state (`joint`, one shared step
#: size, as torchdiffeq and FFJORD do; also one parameter adjoint for `backsolve`).
BATCH_MODES = ("vmap", "joint")

#: The solvers nodekit's engine (`nodekit._rk`) implements.
ENGINE_SOLVERS = ("dopri5", "tsit5")

#: Memory the `recursive` adjoint may spend on stored solver steps when it picks the
#: number of checkpoints itself (`checkpoints="auto"`), and the engine's stored states.
CHECKPOINT_BUDGET_BYTES = 16 * 2**20


class _Default:
    """The marker of an argument left at its default (taken from `SolveSettings`)."""

    def __repr__(self) -> str:
        return "<SolveSettings default>"


#: `odeint(..., rtol=DEFAULT)`: use the value of `settings` (or `SolveSettings()`).
DEFAULT: Any = _Default()


def _check_checkpoints(value):
    if value == "auto" or value is None:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(
            f"checkpoints must be 'auto', None or a positive integer, got {value!r}.")
    return int(value)


class SolveSettings(eqx.Module):
    """How to solve an ODE: one Equinox module (static fields only), carried by
    `NeuralODE` and every model, accepted by `nodekit.odeint(..., settings=...)`, built
    from a config's `solver:` section with `SolveSettings.from_config`.

    **Arguments:**

    - `solver`: one of `euler, midpoint, heun, ralston, rk4, bosh3, dopri5, tsit5, dopri8,
      kvaerno5` (the last is implicit, for stiff problems). SciPy's names (`RK45`,
      `DOP853`, ...) are answered with their nodekit equivalents.
    - `rtol`, `atol`: tolerances of the adaptive (PID) step-size controller, Python floats
      (an `rtol` below what the state's dtype resolves is refused when solving).
    - `dt0`: `None` for adaptive stepping; a number for fixed steps of that size
      (required by `euler` and `rk4`, which have no error estimate). Its sign follows
      the direction of `ts`.
    - `adjoint`: `"recursive"` (backprop through the solver), `"backsolve"` (continuous
      adjoint) or `"direct"` (supports forward-mode AD).
    - `max_steps`: the most steps a solve may take (forward, and each backward interval
      of `backsolve`).
    - `checkpoints`: solver steps the `recursive` adjoint stores on Diffrax: `"auto"`
      (every step when they fit in 16 MiB, else Diffrax's default), `None` (Diffrax's
      default, about log2(max_steps)) or a count. The engine keeps its own
      `~2 sqrt(max_steps)` states under `"auto"` or a count `>= max_steps`.
    - `engine`: `"auto"` (nodekit's engine where it applies, else Diffrax; see
      `integrator`), `"diffrax"` or `"nodekit"` (the engine, or an error saying why not).

    **Raises:** `InputError` naming the bad value and what is allowed.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    settings = nodekit.SolveSettings(solver="dopri5", rtol=1e-5, atol=1e-7)
    ys = nodekit.odeint(lambda t, y, args: -y, jnp.ones(2), jnp.linspace(0.0, 1.0, 5),
                        settings=settings)
    print(settings.integrator(jnp.ones(2)))   # ('nodekit', ...)
    ```
    """

    solver: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    checkpoints: int | str | None = eqx.field(static=True)
    engine: str = eqx.field(static=True)

    def __init__(
        self,
        solver: str = "tsit5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        dt0: float | None = None,
        adjoint: str = "recursive",
        max_steps: int = 4096,
        checkpoints: int | str | None = "auto",
        engine: str = "auto",
    ):
        self.solver = check_choice("solver", solver, list(SOLVERS), SOLVER_ALIASES)
        self.rtol = check_float("rtol", rtol, positive=True)
        self.atol = check_float("atol", atol, positive=True)
        if dt0 is not None:
            dt0 = check_float("dt0", dt0)
            if dt0 == 0:
                raise InputError("dt0 must be non-zero (None for adaptive steps).")
        self.dt0 = dt0
        self.adjoint = check_choice("adjoint", adjoint, ADJOINTS)
        self.max_steps = check_int("max_steps", max_steps, minimum=1)
        self.checkpoints = _check_checkpoints(checkpoints)
        self.engine = check_choice("engine", engine, ENGINES)

    def __check_init__(self):
        if self.dt0 is None and not SOLVERS[self.solver].adaptive:
            raise InputError(
                f"solver {self.solver!r} has no error estimate, so it needs a fixed step size: "
                "pass dt0=... (or choose an adaptive solver such as 'tsit5')."
            )

    # ------------------------------------------------------------- building

    @property
    def info(self) -> _SolverInfo:
        """The solver's table entry (`SOLVERS[solver]`)."""
        return SOLVERS[self.solver]

    def replace(self, **changes) -> "SolveSettings":
        """A copy with some settings changed (each validated).

        **Example:**

        ```python
        import nodekit

        loose = nodekit.SolveSettings().replace(rtol=1e-3, atol=1e-5)
        ```
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            from ._checks import unexpected_keywords

            raise unexpected_keywords("SolveSettings", {k: changes[k] for k in unknown}, names)
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(cls, settings: "SolveSettings | None" = None, **overrides) -> "SolveSettings":
        """`settings` (default `SolveSettings()`) with the `overrides` that are not
        `DEFAULT` applied: how `odeint` combines `settings=` with keyword arguments."""
        if settings is not None and not isinstance(settings, SolveSettings):
            raise InputError(f"settings must be a nodekit.SolveSettings, got "
                             f"{type(settings).__name__}.")
        base = settings if settings is not None else _DEFAULTS
        changes = {k: v for k, v in overrides.items() if v is not DEFAULT}
        return base.replace(**changes) if changes else base

    @classmethod
    def from_config(cls, solver_config) -> "SolveSettings":
        """The settings of a config's `solver:` section (a `SolverConfig`, or a dict of
        its keys; `batch_mode` is a property of the batch, not of a solve, and is not
        part of the settings).

        **Example:**

        ```python
        import nodekit

        cfg = nodekit.validate_config({"solver": {"name": "dopri5", "rtol": 1e-5}})
        settings = nodekit.SolveSettings.from_config(cfg.solver)   # solver='dopri5'
        ```
        """
        s = solver_config if isinstance(solver_config, dict) else {
            k: getattr(solver_config, k) for k in ("name", "rtol", "atol", "dt0", "adjoint",
                                                   "max_steps", "checkpoints", "engine")
            if hasattr(solver_config, k)}
        s = dict(s)
        s.pop("batch_mode", None)
        if "name" in s:
            s["solver"] = s.pop("name")
        return cls(**s)

    # ------------------------------------------------------------- the integrator

    def integrator(self, y0_like: PyTree, *, batch_mode: str | None = None,
                   regularisers: Sequence = (), quadrature: str = "trapezoid",
                   dense: bool = False, event: bool = False) -> tuple[str, str]:
        """Which integrator solves with these settings, and why: `("nodekit" |
        "diffrax", reason)`. A pure function of its arguments (no tracing, no solve):
        call it on the host, e.g. to record a run's integrator.

        **Arguments:**

        - `y0_like`: the initial state as the caller holds it: one state for
          `batch_mode=None`, the batch (samples along the first axis) for `"vmap"` and
          `"joint"`. Arrays or `jax.ShapeDtypeStruct`s (only shapes and dtypes are read).
        - `batch_mode`: `None` (one solve), `"vmap"` (one solve per sample) or `"joint"`
          (the batch as one state), as `NeuralODE.solve_batch(mode=...)` and the config's
          `solver.batch_mode`.
        - `regularisers`, `quadrature`: as in `nodekit.regularised_odeint` (regularisers
          integrated on the step grid need Diffrax; `quadrature="augmented"` does not).
        - `dense`, `event`: whether the solve keeps dense output or has an event.

        **Returns:** `(name, reason)`. With `engine="nodekit"` and settings the engine
        cannot run, raises instead.

        **Raises:** `InputError` for `engine="nodekit"` with settings the engine cannot run,
        or an unknown `batch_mode`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import nodekit

        s = nodekit.SolveSettings(solver="dopri5")
        s.integrator(jnp.ones((8, 2)), batch_mode="joint")   # ('nodekit', ...)
        s.integrator(jnp.ones((8, 2)), batch_mode="vmap")    # ('diffrax', 'one sample ...')
        ```
        """
        if batch_mode is not None:
            check_choice("batch mode", batch_mode, BATCH_MODES)
        vmap_size = None
        state = y0_like
        if batch_mode == "vmap":
            leaves = jax.tree_util.tree_leaves(y0_like)
            vmap_size = int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else 1
            state = jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype), y0_like)
        integrals = None
        if regularisers:
            from ._regularisers import integration_of

            integrals = integration_of(quadrature, tuple(regularisers))
            r = jax.ShapeDtypeStruct((len(regularisers),), _dtype_of(state))
            state = (state, r)
        return choose_integrator(self, state, vmap_size=vmap_size, integrals=integrals,
                                 dense=dense, event=event)


_DEFAULTS = SolveSettings()


def _dtype_of(tree):
    return jnp.result_type(*[x.dtype for x in jax.tree_util.tree_leaves(tree)])


def state_bytes(y0, copies: int = 1) -> int:
    """Bytes of the state (times `copies`, the samples of a per-sample batch)."""
    return copies * sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize
                        for x in jax.tree_util.tree_leaves(y0))


def auto_checkpoints(y0, info: _SolverInfo, max_steps: int, copies: int = 1,
                     budget: int = CHECKPOINT_BUDGET_BYTES) -> int | None:
    """How many solver steps Diffrax's `recursive` adjoint stores (`checkpoints="auto"`).

    Diffrax's default (`None`) keeps about log2(max_steps) checkpoints and recomputes
    the forward solve between them in the backward pass (the spiral step: 54 extra
    field evaluations on top of 27 forward ones, and a deeper program to compile). When
    the loop state of all `max_steps` steps fits in `budget` bytes, storing every step
    (`checkpoints=max_steps`) removes the recomputation. Intermediate counts measured
    no faster than `None` on the spiral (Diffrax's treeverse bookkeeping), so it is one
    or the other: `max_steps` when it fits, else `None`.

    The loop state of one step is estimated as about `stages + 4` copies of the state
    (`y`, the dense-output stages, the FSAL stage, error estimate and bookkeeping).
    `copies` counts the samples of a per-sample (`vmap`) batch: the stored steps are
    allocated for the whole batch.
    """
    per_step = max(1, state_bytes(y0, copies) * (info.evals_per_step + 5))
    return max_steps if max_steps * per_step <= budget else None


def choose_integrator(settings: SolveSettings, y0, *, vmap_size: int | None = None,
                      integrals: str | None = None, dense: bool = False,
                      event: bool = False) -> tuple[str, str]:
    """The integrator of one solve of `y0` (the state as solved) and why.

    nodekit's engine (`nodekit._rk`) covers the solve training spends its time in: an
    adaptive `dopri5` or `tsit5` solve (no `dt0`) differentiated by backpropagation
    (`adjoint="recursive"`, `checkpoints` `"auto"` or at least `max_steps`; the engine
    keeps about `2 sqrt(max_steps)` states, which must fit in `CHECKPOINT_BUDGET_BYTES`)
    or by the continuous adjoint (`"backsolve"`), of a state of one floating dtype,
    without step quadratures or events, and (for `"auto"`) not one sample of a
    per-sample batch (`vmap_size`: the batch's size when the caller asked for
    `batch_mode="vmap"`; the joint mode is one solve). Everything else goes to Diffrax."""
    s = settings
    if s.engine == "diffrax":
        return "diffrax", "engine='diffrax' was asked for"
    from ._rk import engine_states

    leaves = jax.tree_util.tree_leaves(y0)
    dtypes = {jnp.dtype(x.dtype) for x in leaves}
    copies = vmap_size or 1
    size = state_bytes(y0, copies)
    if s.solver not in ENGINE_SOLVERS:
        why = f"solver {s.solver!r} (the engine has {', '.join(ENGINE_SOLVERS)})"
    elif s.adjoint not in ("recursive", "backsolve"):
        why = f"adjoint {s.adjoint!r} (the engine has 'recursive' and 'backsolve')"
    elif s.dt0 is not None:
        why = "a fixed step dt0 (the engine is adaptive)"
    elif integrals is not None:
        why = "integrals accumulated on the step grid (regularisers)"
    elif event:
        why = "an event (the engine does not locate events; Diffrax does)"
    elif s.adjoint == "recursive" and not (
            s.checkpoints == "auto" or (isinstance(s.checkpoints, int)
                                        and s.checkpoints >= s.max_steps)):
        why = f"checkpoints={s.checkpoints!r} (the engine keeps states its own way)"
    elif s.adjoint == "recursive" and (kept := engine_states(s.max_steps)) * size \
            > CHECKPOINT_BUDGET_BYTES:
        why = (f"the engine's {kept} stored states of {size} bytes (max_steps="
               f"{s.max_steps}) exceed {CHECKPOINT_BUDGET_BYTES // 2**20} MiB")
    elif len(dtypes) != 1 or not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        why = "a state that is not of one real floating dtype"
    elif s.engine == "auto" and vmap_size is not None:
        # Under vmap every sample's loop runs until the slowest is done and each stored
        # step becomes a scatter: measured slower than Diffrax's loop on the spiral
        # (1.65 vs 1.34 ms a step), so auto keeps Diffrax; engine="nodekit" still runs.
        return "diffrax", ("one sample of a per-sample batch (batch mode 'vmap'; the engine "
                           "serves single and joint solves)")
    else:
        return "nodekit", (f"engine={s.engine!r}: adaptive {s.solver} with adjoint "
                           f"{s.adjoint!r}" + (", dense output" if dense else ""))
    if s.engine == "nodekit":
        raise InputError(f"engine='nodekit' cannot solve with {why}; use engine='auto' "
                         "(falls back to Diffrax) or engine='diffrax'.")
    return "diffrax", why


