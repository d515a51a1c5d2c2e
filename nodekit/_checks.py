"""Argument checks, in one place: numbers, names (with did-you-mean), ODE states and
times, and vector fields. Every check raises `InputError` at once, naming the argument,
the bad value and the fix, and raises it from nodekit's own frame (`from None`): never
chained under a JAX traceback.

Used by the solver settings (`nodekit._settings`), `odeint`, `NeuralODE`, the models,
the regularisers and the data generators (`nodekit.data` re-exports the number checks).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InputError, closest, unknown_name_message


def is_concrete(x) -> bool:
    """Whether `x` holds values on the host (not a tracer inside `jit`/`vmap`/`grad`)."""
    return not isinstance(x, jax.core.Tracer)


def _who(owner: str | None, name: str) -> str:
    return f"{owner} {name}" if owner else name


# ------------------------------------------------------------------ numbers


def check_int(name: str, value, *, minimum: int = 1, owner: str | None = None) -> int:
    """`value` as an `int`, refusing booleans, floats and anything below `minimum`.

    **Example:**

    ```python
    from nodekit._checks import check_int

    check_int("width", 16)   # 16
    ```
    """
    who = _who(owner, name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(f"{who} must be an integer >= {minimum}, got {value!r} "
                         f"({type(value).__name__}).")
    if value < minimum:
        raise InputError(f"{who} must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_seed(seed) -> int:
    """A seed: a non-negative integer (NumPy's `SeedSequence` refuses negatives)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise InputError(
            f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})."
        )
    if seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed}.")
    return int(seed)


def check_float(name: str, value, *, positive: bool = False, nonnegative: bool = False,
                owner: str | None = None) -> float:
    """`value` as a finite Python `float`; optionally `> 0` or `>= 0`. A traced value
    (a `jit` argument) is refused with the advice to pass a Python number."""
    who = _who(owner, name)
    if isinstance(value, jax.core.Tracer):
        raise InputError(
            f"{who} must be a Python number, got a traced value ({value.aval}): it is "
            "fixed when the solve is compiled, so it cannot be an argument of a jitted "
            f"function. Pass it as a Python float (close over it, or mark it static, e.g. "
            f"jax.jit(fn, static_argnames='{name}'))."
        )
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.ndim(value) == 0 \
            and not isinstance(value, (np.bool_,)) and np.issubdtype(np.asarray(value).dtype,
                                                                   np.number):
        value = np.asarray(value).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{who} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{who} must be finite, got {value}.")
    if positive and not value > 0:
        raise InputError(f"{who} must be > 0, got {value}.")
    if nonnegative and not value >= 0:
        raise InputError(f"{who} must be >= 0, got {value}.")
    return value


def check_fraction(name: str, value) -> float:
    """A fraction in `[0, 1)` (e.g. `test_fraction`: the training set is never empty)."""
    value = check_float(name, value)
    if not 0.0 <= value < 1.0:
        raise InputError(f"{name} must be in [0, 1), got {value}.")
    return value


def check_choice(kind: str, value, options: Sequence[str],
                 aliases: Mapping[str, tuple[str, str]] | None = None) -> str:
    """`value` if it is one of `options`; else `InputError` with a did-you-mean hint.

    `aliases` maps names from other libraries to `(nodekit's name, why)`, e.g. SciPy's
    `"RK45"` to `("dopri5", "SciPy's RK45 is the Dormand-Prince 5(4) pair")`: such a
    name is answered with its equivalent."""
    if isinstance(value, str) and value in options:
        return value
    options = list(options)
    if aliases and isinstance(value, str):
        hit = aliases.get(value) or next((v for k, v in aliases.items()
                                          if k.lower() == value.lower()), None)
        if hit is not None:
            name, why = hit
            raise InputError(f"unknown {kind} {value!r}: {why}; nodekit's equivalent is "
                             f"{kind}={name!r}. Allowed: {', '.join(sorted(options))}.")
    raise InputError(unknown_name_message(kind, value, options))


def check_ndim(owner: str, name: str, x, ndims: tuple[int, ...], meaning: str) -> None:
    """Raise `InputError` unless `x.ndim` is one of `ndims`; `meaning` describes the
    expected layout, e.g. `"(B, T, D)"`."""
    if jnp.ndim(x) not in ndims:
        raise InputError(
            f"{owner}: {name} must have shape {meaning}, got shape {tuple(jnp.shape(x))}."
        )


# ------------------------------------------------------------------ keyword arguments

#: Keyword arguments other ODE libraries use, and nodekit's name for each.
KEYWORD_ALIASES: dict[str, str] = {
    "method": "solver",           # torchdiffeq, scipy.integrate.solve_ivp
    "step_size": "dt0",           # torchdiffeq's options={'step_size': ...}
    "first_step": "dt0",          # scipy
    "h0": "dt0",
    "max_num_steps": "max_steps",  # torchdiffeq
    "mxstep": "max_steps",        # scipy.integrate.odeint
    "t_eval": "ts",
    "t": "ts",
    "saveat": "ts",
    "stepsize_controller": "rtol=..., atol=...",
    "event_fn": "event",          # torchdiffeq's odeint_event
    "events": "event",            # scipy
}


def unexpected_keywords(caller: str, unexpected: Mapping[str, Any], allowed: Iterable[str]):
    """`InputError` for keyword arguments `caller` does not take, answering the names
    other libraries use (`method=` is `solver=`) and near misses."""
    allowed = list(allowed)
    parts = []
    for key, value in unexpected.items():
        if key in KEYWORD_ALIASES:
            ours = KEYWORD_ALIASES[key]
            if ours == "solver" and isinstance(value, str):
                hint = f"nodekit names the solver with solver=: {caller}(..., solver={value!r})"
                from ._settings import SOLVER_ALIASES, SOLVERS

                if value not in SOLVERS:
                    eq = SOLVER_ALIASES.get(value) or SOLVER_ALIASES.get(value.lower())
                    near = eq[0] if eq else closest(value, SOLVERS)
                    if near:
                        hint = (f"nodekit names the solver with solver=, and {value!r} is "
                                f"nodekit's {near!r}: {caller}(..., solver={near!r})")
            elif "=" in ours:
                hint = f"nodekit's equivalent is {ours}"
            else:
                hint = f"nodekit's name for it is {ours}="
            parts.append(f"{key}= ({hint})")
        else:
            near = closest(key, allowed)
            parts.append(f"{key}=" + (f" (did you mean {near}=?)" if near else ""))
    return InputError(
        f"{caller} got unexpected keyword argument{'s' if len(parts) > 1 else ''} "
        + "; ".join(parts) + f". It takes: {', '.join(allowed)}."
    )


# ------------------------------------------------------------------ states and times

_HALF = (jnp.float16, jnp.bfloat16)


def _describe(tree) -> str:
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1 and jax.tree_util.tree_structure(tree).num_leaves == 1 \
            and not isinstance(tree, (dict, list, tuple)):
        return f"{tuple(leaves[0].shape)} {leaves[0].dtype}"
    return str(jax.tree_util.tree_map(lambda x: f"{tuple(x.shape)} {x.dtype}", tree))


def describe_state(tree) -> str:
    """`"(2,) float32"` for one array, the tree of such strings for a pytree."""
    return _describe(tree)


def _short(x, limit: int = 40) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_state(y0, *, name: str = "y0"):
    """`y0` as a pytree of JAX arrays of a floating (or complex) dtype, or
    `InputError`: a Python list of numbers (read as a pytree of separate scalars), a
    Python scalar, an integer array or a half-precision array is refused with the fix."""
    leaves, treedef = jax.tree_util.tree_flatten(y0)
    if not leaves:
        raise InputError(f"{name} holds no arrays (got {_short(y0)}): pass the initial "
                         f"state as an array, e.g. {name}=jnp.array([1.0, 0.0]).")
    if isinstance(y0, (int, float, complex)) and not isinstance(y0, bool):
        raise InputError(
            f"{name} is a Python {type(y0).__name__} ({y0!r}): pass an array, "
            f"{name}=jnp.asarray({y0!r}) (a scalar state) or jnp.array([{y0!r}]) (a 1-D one)."
        )
    if isinstance(y0, (list, tuple)) and all(isinstance(x, numbers.Number) for x in leaves):
        raise InputError(
            f"{name} is a Python {type(y0).__name__} of numbers ({_short(y0)}); nodekit reads "
            "a list or tuple as a pytree of separate states. Pass one array: "
            f"{name}=jnp.asarray({_short(y0)})."
        )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(y0)[0]]
    out = []
    for path, leaf in zip(paths, leaves):
        where = f"{name}{path}" if path else name
        if isinstance(leaf, numbers.Number) or not hasattr(leaf, "dtype"):
            raise InputError(
                f"{where} is a Python {type(leaf).__name__} ({_short(leaf)}); every leaf of the "
                f"state must be an array: wrap it in jnp.asarray(...)."
            )
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise InputError(
                f"{where} has dtype {leaf.dtype}; an ODE state must be floating point: pass "
                f"jnp.asarray({name}, float)."
            )
        if leaf.dtype in _HALF:
            raise InputError(
                f"{where} is {leaf.dtype}: half precision (machine epsilon "
                f"{float(jnp.finfo(leaf.dtype).eps):.0e}) cannot resolve the step-size control "
                "of an adaptive solve. Solve in float32 and cast back: "
                f"odeint(f, {name}.astype(jnp.float32), ts).astype({leaf.dtype.name})."
            )
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def state_dtype(y0):
    """The dtype the solve runs in: the widest of the state's leaves."""
    return jnp.result_type(*jax.tree_util.tree_leaves(y0))


#: The one rule for output times, eager or traced.
TS_RULE = ("ts must be monotonic: non-decreasing for a forward solve or non-increasing for "
           "a backward one (repeated times are allowed and give the same state; ts[0] is "
           "the initial time)")


def check_times(ts, dtype, *, name: str = "ts", order: bool = True):
    """`ts` as a 1-D array in the solve's `dtype` (times are cast to the state's dtype),
    its order checked now when concrete (a traced `ts` is checked when the solve runs;
    see `TS_RULE`). `order=False` leaves the order to `check_order`."""
    if isinstance(ts, (list, tuple)):
        ts = np.asarray(ts)
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise InputError(f"{name} must be a 1-D array of times with the initial time first, "
                         f"got shape {tuple(ts.shape)}.")
    if jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.finfo(dtype).dtype  # times are real
    if ts.dtype != dtype:
        ts = ts.astype(dtype)
    return check_order(ts, name=name) if order else ts


def check_order(ts, *, name: str = "ts"):
    """`ts` if it follows `TS_RULE` (checked when concrete), else `InputError` naming the
    first time that goes the other way."""
    if is_concrete(ts):
        host = np.asarray(ts)
        if not np.all(np.isfinite(host)):
            raise InputError(f"{name} must be finite, got {np.asarray(host).tolist()}.")
        d = np.diff(host)
        if not (np.all(d >= 0) or np.all(d <= 0)):
            first = int(np.argmax(d * np.sign(host[-1] - host[0]) < 0)) + 1
            raise InputError(f"{TS_RULE}; {name}[{first}] = {host[first]:g} goes the other way "
                             f"(from {host[first - 1]:g}).")
    return ts


def times_in_order(ts) -> jax.Array:
    """A traced check of `TS_RULE` (a boolean scalar)."""
    d = jnp.diff(ts)
    return jnp.all(d >= 0) | jnp.all(d <= 0)


def check_rtol_resolvable(rtol: float, dtype, *, language: str = "python") -> None:
    """Refuse an `rtol` below what `dtype` resolves (half its machine epsilon): such a
    solve would shrink its steps until `max_steps` without meeting the tolerance."""
    if not jnp.issubdtype(dtype, jnp.floating):
        return
    eps = float(jnp.finfo(dtype).eps)
    if rtol < eps / 2:
        key = "solver.rtol" if language == "config" else "rtol"
        wider = ("precision: float64" if language == "config" else
                 "a float64 state (jax.config.update('jax_enable_x64', True) and y0 in float64)")
        raise InputError(
            f"{key}={rtol:g} is below what {jnp.dtype(dtype).name} can resolve (machine "
            f"epsilon {eps:.1e}): no step could meet it. Use {key} >= {eps:.0e} (1e-6 is "
            f"typical in float32), or {wider}."
        )


def check_flat_state(caller: str, name: str, y, ndim: int, what: str):
    """`y` as one float array of rank `ndim` for solves that need a flat state (the
    regularisers); a pytree or a wrong rank is refused with the fix."""
    if isinstance(y, (dict, list, tuple)) and len(jax.tree_util.tree_leaves(y)) > 1 \
            and not all(isinstance(v, numbers.Number) for v in jax.tree_util.tree_leaves(y)):
        raise InputError(
            f"{caller} needs {name} as {what}; got a pytree ({_describe(y)}). Flatten it "
            "with jax.flatten_util.ravel_pytree (and unflatten inside the field), or use "
            "nodekit.odeint, which takes pytree states, without regularisers."
        )
    if isinstance(y, (list, tuple)) or isinstance(y, numbers.Number):
        check_state(y, name=name)  # the message for lists and scalars
    y = jnp.asarray(y)
    if y.ndim != ndim or not jnp.issubdtype(y.dtype, jnp.floating):
        raise InputError(f"{name} must be {what}; got shape {tuple(y.shape)}, dtype {y.dtype}.")
    return y


# ------------------------------------------------------------------ vector fields


def field_name(func) -> str:
    """A readable name for a vector field: its class or its function name."""
    import equinox as eqx

    if isinstance(func, eqx.Module):
        return type(func).__name__
    return getattr(func, "__qualname__", None) or type(func).__name__


def _inner_field(func):
    """The field a joint-batch wrapper applies per sample (`func` itself otherwise)."""
    seen = 0
    while hasattr(func, "field") and getattr(func, "_vmaps_field", False) and seen < 8:
        func, seen = func.field, seen + 1
    return func


def _positional_names(func) -> list[str] | None:
    """The names of the positional parameters `func` takes, or `None` when it takes
    `*args` or its signature cannot be read."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return names


_STATE_WORDS = {"y", "x", "z", "u", "state", "h", "q"}
_TIME_WORDS = {"t", "time", "s", "tau"}


def _signature_problem(func) -> str | None:
    """Why `func` cannot be called as `func(t, y, args)`, judged from its signature."""
    names = _positional_names(func)
    if names is None:
        return None
    try:
        inspect.signature(func).bind(0.0, 0.0, None)
        if len(names) >= 2 and names[0] in _STATE_WORDS and names[1] in _TIME_WORDS:
            return (f"its parameters are ({', '.join(names)}): is the state first? nodekit "
                    "calls fields as f(t, y, args), time first")
        return None
    except TypeError:
        pass
    shown = f"({', '.join(names)})"
    order = ""
    if len(names) >= 2 and names[0] in _STATE_WORDS and names[1] in _TIME_WORDS:
        order = " (state first: SciPy's odeint order)"
    elif len(names) == 2:
        order = " (torchdiffeq's f(t, y))"
    return (f"it takes {shown}{order} but nodekit calls fields as f(t, y, args): time, "
            "state, then the `args` passed to the solve (None by default); define it as "
            "def f(t, y, args)")


def _state_size(func) -> int | None:
    return getattr(_inner_field(func), "state_size", None)


def check_field(func, t0, y0, args, *, caller: str = "odeint", augment_dim: int = 0,
                times=None) -> None:
    """Refuse, before compiling, a vector field that cannot be called as `func(t, y,
    args)` on the state or whose output does not match it.

    Runs the field abstractly (`jax.eval_shape`: no FLOPs, no compilation) and compares
    tree structure, shapes and dtypes with `y0`. On a failure it says which common
    mistake it looks like: a field with another signature (`f(y, t)`, `f(t, y)`), an
    `MLPField` built for another state size, a batch where one state is expected (or the
    reverse, in `solve_batch`), or the times and the state passed in the wrong order
    (`times`: the array passed as times, to test that).

    **Raises:** `InputError` naming the field and both shapes.
    """
    import equinox as eqx

    name = field_name(func)
    if not callable(func):
        raise InputError(f"{caller}: the vector field must be callable as f(t, y, args), "
                         f"got {type(func).__name__}.")
    problem = _signature_problem(func if not isinstance(func, eqx.Module) else
                                 type(func).__call__.__get__(func))
    if problem is not None and problem.startswith("it takes"):
        raise InputError(f"vector field {name}: {problem}.")
    try:
        out = jax.eval_shape(func, t0, y0, args)
    except InputError:
        raise
    except Exception as e:  # the field cannot be called on the state: say why
        raise InputError(_call_failure(func, name, t0, y0, args, e, caller, augment_dim,
                                       times, problem)) from None
    y_leaves, o_leaves = jax.tree_util.tree_leaves(y0), jax.tree_util.tree_leaves(out)
    same = jax.tree_util.tree_structure(y0) == jax.tree_util.tree_structure(out) and all(
        tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
        for a, b in zip(y_leaves, o_leaves))
    if same:
        return
    hint = "dy/dt must have the shape and dtype of y."
    if len(o_leaves) == 1 and len(y_leaves) == 1:
        o, y = o_leaves[0], y_leaves[0]
        if tuple(o.shape) == tuple(y.shape):
            hint += f" Cast the output to the state's dtype (return dy.astype({y.dtype.name}))."
        elif o.shape == () and y.shape != ():
            hint += (" It returned a scalar, the shape of t: nodekit calls fields as "
                     "f(t, y, args), time first.")
        else:
            size = _state_size(func)
            hint += (" Check the field's output size against the state"
                     + (" (including augment_dim)" if augment_dim else "")
                     + (f": the field is built for size {size}" if size else "") + ".")
    if problem is not None:
        hint += f" Also, {problem}."
    raise InputError(f"vector field {name} returns {_describe(out)} but the state y0 is "
                     f"{_describe(y0)}; {hint}")


def _works_on(func, t0, y, args) -> bool:
    try:
        out = jax.eval_shape(func, t0, y, args)
    except Exception:
        return False
    return jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(y) and all(
        tuple(a.shape) == tuple(b.shape)
        for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(y)))


def _call_failure(func, name, t0, y0, args, error, caller, augment_dim, times, problem) -> str:
    """The message for a field that raised on the state: the likely mistake and its fix."""
    leaves = jax.tree_util.tree_leaves(y0)
    single = len(leaves) == 1 and hasattr(y0, "shape")
    size = _state_size(func)
    batched_wrapper = _inner_field(func) is not func
    swapped = (times is not None and single and y0.ndim == 1 and np.ndim(times) == 1
               and _works_on(func, t0, jax.ShapeDtypeStruct(np.shape(times), y0.dtype), args))
    order = (f"{caller} is called as model(ts, y0), the times first" if caller.startswith(
        "NeuralODE") else f"{caller} takes (func, y0, ts): the state before the times")
    # times given as the state: 1-D, concrete, at least three values, monotonic
    host = np.asarray(y0) if single and is_concrete(y0) and y0.ndim == 1 else None
    looks_like_times = (host is not None and host.shape[0] >= 3
                        and (np.all(np.diff(host) >= 0) or np.all(np.diff(host) <= 0)))
    if swapped and looks_like_times:
        return (f"{order}; the arguments look swapped: y0 holds {host.shape[0]} ordered "
                f"values, like times, and the field fits the shape of ts, "
                f"{tuple(np.shape(times))}.")
    if single and size is not None and not batched_wrapper and y0.ndim == 1 \
            and y0.shape[0] != size:
        aug = f" (size + augment_dim = {y0.shape[0] - augment_dim} + {augment_dim})" \
            if augment_dim else ""
        msg = (f"{name} has size {size} but the state y0 has size {y0.shape[0]}{aug}: build "
               f"the field for the state, e.g. {name}({y0.shape[0]}, ...)"
               + (" (MLPField's size counts augment_dim)" if augment_dim else "") + ".")
        if swapped:
            msg += (f" Or are the arguments swapped? {order} (the field fits the shape of ts, "
                    f"{tuple(np.shape(times))}).")
        return msg
    if swapped:
        return (f"{order}; the arguments look swapped: the state y0 has shape "
                f"{tuple(y0.shape)} and the field fits the shape of ts, "
                f"{tuple(np.shape(times))}.")
    if single and y0.ndim >= 1 and y0.shape[0] > 0 \
            and _works_on(func, t0, jax.ShapeDtypeStruct(y0.shape[1:], y0.dtype), args):
        fix = ("model.solve_batch(ts, y0s) or jax.vmap(model, in_axes=(None, 0))(ts, y0s)"
               if caller.startswith("NeuralODE") else
               f"jax.vmap(lambda y0: {caller}(f, y0, ts))(y0s) (one solve per sample), or a "
               "field vmapped over the batch (one joint solve)")
        return (f"{caller} solves one state, and the vector field {name} fits shape "
                f"{tuple(y0.shape[1:])}, but y0 has shape {tuple(y0.shape)}: a batch of "
                f"{y0.shape[0]}? Use {fix}.")
    if batched_wrapper and single and y0.ndim >= 1 \
            and _works_on(_inner_field(func), t0, y0, args):
        return one_state_message(caller, y0)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    msg = (f"vector field {name} could not be evaluated on a state of shape {_describe(y0)}: "
           f"{type(error).__name__}: {text}")
    if problem is not None:
        msg += f". Note: {problem}"
    return msg


def one_state_message(caller: str, y0) -> str:
    return (f"{caller} takes a batch with the samples along the first axis, shape (B, ...); "
            f"got one state of shape {tuple(np.shape(y0))}. Use model.solve(ts, y0) (or "
            "model(ts, y0)) for one state, or y0[None] for a batch of one.")


def check_batch(func, t0, y0s, args, *, caller: str) -> None:
    """Refuse one state passed where a batch `(B, ...)` is expected: the field fits the
    whole of `y0s` but not one row of it."""
    leaves = jax.tree_util.tree_leaves(y0s)
    if len(leaves) != 1 or not hasattr(y0s, "shape"):
        return
    if y0s.ndim == 0:
        raise InputError(one_state_message(caller, y0s))
    row = jax.ShapeDtypeStruct(y0s.shape[1:], y0s.dtype)
    if not _works_on(func, t0, row, args) and _works_on(func, t0, y0s, args):
        raise InputError(one_state_message(caller, y0s))


def callable_check(caller: str, name: str, f: Callable) -> None:
    """Refuse a non-callable `f` with the signature it should have."""
    if not callable(f):
        raise InputError(f"{caller} {name} must be callable as {name}(t, y, args), got "
                         f"{type(f).__name__}.")
