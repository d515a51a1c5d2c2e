"""The exception types nodekit raises, and the helpers that word their messages.

Three kinds of failure, each with its own type and exit code in the CLI:

- bad input (a config, an argument, a file, a shape) -> `InputError` / `ConfigError` /
  `CheckpointError`, exit code 2;
- a fault while training (non-finite loss, solver failure) -> `TrainingFault`, exit code 3.

Every message says what is wrong, where, and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class NodekitError(Exception):
    """Base class of every error nodekit raises on purpose; `exit_code` is what the CLI
    returns for it.

    **Example:**

    ```python
    import nodekit

    try:
        nodekit.train("no-such-config.yaml", "runs/x")   # a typo in the file name
    except nodekit.NodekitError as e:   # here a ConfigError
        print(e.exit_code, e)   # 2 config file 'no-such-config.yaml' does not exist. ...
    ```
    """

    exit_code: int = 1


class InputError(NodekitError, ValueError):
    """Bad input: a value, a shape, a file. The CLI exits with code 2.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    try:
        nodekit.odeint(lambda t, y, args: -y, jnp.ones(2), jnp.linspace(0, 1, 3), solver="dopri")
    except nodekit.InputError as e:
        print(e)   # unknown solver 'dopri'; did you mean 'dopri5'? ...
    ```
    """

    exit_code = 2


class ConfigError(InputError):
    """A config value is wrong. The message names the key path, the bad value and what
    is allowed. The CLI exits with code 2 and prints only the message.

    **Arguments:**

    - `path`: dotted key path, e.g. `"solver.rtol"`.
    - `message`: what is wrong and what is allowed.

    **Example:**

    ```python
    import nodekit

    try:
        nodekit.validate_config({"solver": {"rtoll": 1e-5}})
    except nodekit.ConfigError as e:
        print(e.path)   # solver.rtoll  (message: did you mean 'rtol'?)
    ```
    """

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class CheckpointError(InputError):
    """A checkpoint cannot be used (corrupt, truncated, or from another model/config).
    The message says which, and what to do (`--restart`, or a new workdir).

    **Example:**

    ```python
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=3", "train.plots=false"])
    nodekit.train(config, "runs/tiny", restart=True, progress=False)
    wider = nodekit.load_config("tiny", ["train.steps=3", "model.field.width=32"])
    try:
        nodekit.train(wider, "runs/tiny", progress=False)   # the workdir holds another run
    except nodekit.CheckpointError as e:
        print(e)   # ... written by a different config ... model.field.width 16 -> 32 ...
    ```
    """


class TrainingFault(NodekitError, RuntimeError):
    """Training stopped on a fault (non-finite loss, solver failure). Exit code 3.

    The last good checkpoint is kept; the message says what to try; `step` is the step
    that failed and `status` the summary's status (`"nonfinite"`, `"solver_failure"`).

    **Example:**

    ```python
    import nodekit

    config = nodekit.load_config("tiny", ["train.steps=3", "train.plots=false",
                                          "optimizer.learning_rate=1e30"])   # far too large
    try:
        nodekit.train(config, "runs/diverged", restart=True, progress=False)
    except nodekit.TrainingFault as e:
        print(e.step, e.status)   # 1 solver_failure (the message says what to try)
    ```
    """

    exit_code = 3

    def __init__(self, message: str, *, step: int | None = None, status: str = "fault"):
        self.step = step
        self.status = status
        super().__init__(message)


class SolverError(TrainingFault):
    """An ODE solve failed (too many steps, step size collapse, non-finite state).

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    stiff_field = lambda t, y, args: -1e5 * (y - jnp.cos(t))
    try:
        nodekit.odeint(stiff_field, jnp.ones(1), jnp.linspace(0, 1, 3), max_steps=16)
    except nodekit.SolverError as e:
        print(e)   # ... hit max_steps=16 ... It stopped at t=... Try looser tolerances ...
    ```
    """


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and
    swaps of two neighbouring letters each cost 1 (`adma` is one edit from `adam`)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option closest to `name`, or `None` when nothing is close.

    Ranked by edit distance (a swap of two letters is one edit), then by similarity,
    then by the order of `options`; an option more than about a third of the name's
    letters away is not suggested.

    **Example:**

    ```python
    closest("dopri", ["dopri5", "dopri8"])   # 'dopri5'
    closest("adma", ["adam", "adamax"])      # 'adam'
    ```
    """
    name = str(name)
    options = [str(o) for o in options]
    if len(name) > 200:  # a pasted blob, not a typo
        return None
    best = None
    for index, option in enumerate(options):
        d = _edit_distance(name.lower(), option.lower())
        if len(name) >= 3 and option.lower().startswith(name.lower()):
            d = min(d, 1)  # a cut-short name: 'skip' for 'skip_step'
        if d > max(1, (max(len(name), len(option)) + 1) // 3):
            continue
        ratio = difflib.SequenceMatcher(None, name, option).ratio()
        rank = (d, -ratio, index)
        if best is None or rank < best[0]:
            best = (rank, option)
    return best[1] if best else None


def unknown_name_message(kind: str, name: object, options: Sequence[str]) -> str:
    """`unknown solver 'dopri'; did you mean 'dopri5'? Allowed: ...`"""
    options = sorted(options)
    hint = closest(str(name), options)
    did_you_mean = f"; did you mean {hint!r}?" if hint is not None else "."
    return f"unknown {kind} {name!r}{did_you_mean} Allowed: {', '.join(options)}."


# ------------------------------------------------------------------ solver failures
# (owned by the solver core: `odeint` words failures for Python callers, the training
# loop calls the same function with `language="config"`)

#: How the fixes are spelled for each kind of caller.
_SPELLING = {
    "python": dict(rtol="rtol={v}", atol="atol={v}", solver="solver={v!r}",
                   max_steps="max_steps", x64="a float64 state "
                   "(jax.config.update('jax_enable_x64', True) and y0 in float64)",
                   dt0="dt0={v}", reg="a regulariser (nodekit.KineticEnergy)",
                   adjoint="adjoint={v!r}"),
    "config": dict(rtol="solver.rtol: {v}", atol="solver.atol: {v}", solver="solver.name: {v}",
                   max_steps="solver.max_steps", x64="precision: float64",
                   dt0="solver.dt0: {v}", reg="regularisation.kinetic (a small weight)",
                   adjoint="solver.adjoint: {v}"),
}


def solver_failure_message(
    result: str,
    *,
    solver: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    t_reached: float | None = None,
    t_span: tuple[float, float] | None = None,
    language: str = "python",
    training: bool | None = None,
) -> str:
    """Turn a solver result name into a message that says where the solve stopped and
    what to try, in the caller's language.

    **Arguments:**

    - `result`: the result name (`nodekit._odeint.result_name(code)`).
    - `solver`, `rtol`, `atol`, `max_steps`: the settings of the failed solve.
    - `t_reached`, `t_span`: the time the solve reached and its `(t0, t1)` (when known,
      the message says where it stopped).
    - `language`: `"python"` (fixes spelled as Python arguments, `rtol=1e-4`) or
      `"config"` (config keys, `solver.rtol: 1e-4`; the training loop's wording).
    - `training`: whether the solve is part of training (the non-finite advice is then
      about the learning rate, not a finite-time blow-up); default: `language ==
      "config"`.

    **Returns:** the message (one paragraph).

    **Example:**

    ```python
    from nodekit._errors import solver_failure_message

    print(solver_failure_message("max_steps_reached", solver="tsit5", rtol=1e-6, atol=1e-8,
                                 max_steps=16, t_reached=0.25, t_span=(0.0, 1.0),
                                 language="config"))
    ```
    """
    sp = _SPELLING["config" if language == "config" else "python"]
    if training is None:
        training = language == "config"
    where = f"solver {solver!r}" if solver else "the solver"
    tol = ""
    if rtol is not None and atol is not None:
        tol = (f" (solver.rtol: {rtol:g}, solver.atol: {atol:g})" if language == "config"
               else f" (rtol={rtol:g}, atol={atol:g})")
    blowup = "" if training else (
        " If the state grows without bound there, the solution may blow up in finite time "
        "(dy/dt = y**2 from y0 = 1 explodes at t = 1): end the solve earlier; if the field "
        "returns NaN or inf just beyond that time, jax.config.update('jax_debug_nans', True) "
        "finds where.")
    at = ""
    if t_reached is not None:
        at = f" It stopped at t={t_reached:.6g}"
        at += f" of [{t_span[0]:g}, {t_span[1]:g}]." if t_span is not None else "."
    x64 = sp["x64"]
    if result == "max_steps_reached":
        steps = (f"max_steps={max_steps}" if language != "config" else
                 f"solver.max_steps={max_steps}") if max_steps is not None else "max_steps"
        return (
            f"the ODE solve hit {steps} before reaching the end time with {where}{tol}.{at} "
            "The dynamics are probably stiff or fast. Try looser tolerances "
            f"({sp['rtol'].format(v='1e-4')}, {sp['atol'].format(v='1e-6')}), a stiff solver "
            f"({sp['solver'].format(v='kvaerno5')}, best with {x64}), "
            + (f"{sp['reg']} to keep the dynamics simple, " if training else "")
            + f"or a larger {sp['max_steps'].format(v='...')}." + blowup
        )
    if result == "dt_min_reached":
        return (
            f"the step size of {where}{tol} collapsed.{at} The dynamics are probably stiff: "
            f"try {sp['solver'].format(v='kvaerno5')}, {x64} or looser tolerances." + blowup
        )
    if result in ("nonfinite", "nonfinite_input"):
        if training:
            return (
                f"the ODE state became non-finite (NaN or inf) during the solve with {where}.{at} "
                "Try a smaller learning rate (optimizer.learning_rate), gradient clipping "
                "(optimizer.clip_norm), tighter tolerances or a stiff solver."
                if language == "config" else
                f"the ODE state became non-finite (NaN or inf) during the solve with {where}.{at} "
                "Try a smaller learning rate, gradient clipping (optax.clip_by_global_norm), "
                "tighter tolerances or a stiff solver."
            )
        return (
            f"the ODE state became non-finite (NaN or inf) during the solve with {where}.{at} "
            "Either the solution blows up in finite time before the end of ts (e.g. dy/dt = "
            "y**2 from y0 = 1 explodes at t = 1: end the solve earlier), or the vector field "
            "returned NaN/inf (check it at the initial state; "
            "jax.config.update('jax_debug_nans', True) stops at the first NaN it makes)."
        )
    if result.startswith("nonlinear") or result in ("singular", "breakdown", "stagnation"):
        return (
            f"the implicit solver's root find failed ({result}) with {where}{tol}.{at} "
            f"Try a smaller step ({sp['dt0'].format(v='...')} if fixed), looser tolerances or "
            "an explicit solver if the problem is not stiff."
        )
    if result == "unordered_times":
        return (
            "ts must be monotonic: non-decreasing for a forward solve or non-increasing for a "
            "backward one (repeated times are allowed); the ts given at run time go both ways."
        )
    return f"the ODE solve failed with {where}{tol}: {result}.{at}"


def backward_failure_message(result: str, *, solver: str | None = None,
                             max_steps: int | None = None, language: str = "python") -> str:
    """The message for a failed backward solve of `adjoint="backsolve"` (the gradient
    would be wrong, so it is refused: an error, or NaN gradients with `throw=False`)."""
    sp = _SPELLING["config" if language == "config" else "python"]
    what = {"max_steps_reached": f"hit max_steps={max_steps}",
            "nonfinite": "became non-finite",
            "dt_min_reached": "had its step size collapse"}.get(result, f"failed ({result})")
    return (
        f"the backward (adjoint) solve of {sp['adjoint'].format(v='backsolve')} {what} with "
        f"solver {solver!r}, so the gradient would be wrong. Try "
        f"{sp['adjoint'].format(v='recursive')} (backpropagation through the forward solve), "
        f"looser tolerances or a larger {sp['max_steps'].format(v='...')}."
    )


#: Solver result codes by position, as Diffrax numbers them (`diffrax.RESULTS`), so a code
#: from either engine reads the same. Written out here so that reading a code does not
#: import Diffrax; tests/test_engine.py checks the list against Diffrax's.
RESULT_NAMES = (
    "successful", "max_steps_reached", "singular", "breakdown", "stagnation", "conlim",
    "nonfinite_input", "nonlinear_max_steps_reached", "nonlinear_divergence", "nonfinite",
    "dt_min_reached", "event_occurred", "max_steps_rejected", "internal_error",
    # nodekit's own codes, after Diffrax's:
    "unordered_times",
)
