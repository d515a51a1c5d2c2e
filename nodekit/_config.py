"""Config schema, YAML loading, dotted `--set` overrides and error wording.

A config is YAML validated against the pydantic models below. Unknown keys are errors
that name the closest valid key; every error names the key path, the bad value and
what is allowed (`ConfigError`, exit code 2 in the CLI).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._errors import ConfigError, InputError, closest, unknown_name_message
from ._fields import ACTIVATIONS
from ._neural_ode import BATCH_MODES
from ._odeint import ADJOINTS, ENGINES, SOLVERS


#: Optimisers by their Optax names. `lbfgs` (L-BFGS with a zoom line search) is for
#: full-batch, deterministic fine-tuning; see `OptimizerConfig`.
OPTIMIZERS = (
    "adam", "adamw", "adabelief", "adagrad", "adamax", "lamb", "lion", "nadam", "radam",
    "rmsprop", "sgd", "yogi", "novograd", "lbfgs",
)
#: `optimizer.kwargs` that `lbfgs` accepts (positive integers), with their defaults.
LBFGS_KWARGS = {"memory_size": 10, "max_linesearch_steps": 20}
#: Learning-rate schedules.
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")


def _allows_bool(annotation) -> bool:
    if annotation is bool:
        return True
    return any(_allows_bool(a) for a in getattr(annotation, "__args__", ()) or ())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _refuse_booleans(raw, cls, path) -> None:
    """pydantic's lax mode reads YAML `true` as 1 for a number field; refuse it (a
    boolean where a number or name belongs is a typo), naming the key."""
    if not isinstance(raw, dict):
        return
    for key, value in raw.items():
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        ann = field.annotation
        if isinstance(value, bool) and not _allows_bool(ann):
            raise ConfigError(".".join(path + [key]), f"got {value!r}: expected a number or "
                                                      "name, not a boolean.")
        if key == "data" and cls is Config:
            sub = _data_model({"data": value})
        else:
            sub = _sub_model(ann)
        if sub is not None:
            _refuse_booleans(value, sub, path + [key])


def _finite(v):
    if v is not None and isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


def _name_in(kind: str, options):
    def check(v):
        if v not in options:
            raise ValueError(unknown_name_message(kind, v, list(options)))
        return v

    return check


PosFloat = pydantic.PositiveFloat
PosInt = pydantic.PositiveInt
NonNegInt = pydantic.NonNegativeInt


class FieldConfig(_Strict):
    """The vector field: an MLP `f(t, y)` (or a second-order field)."""

    type: Literal["mlp", "second_order"] = "mlp"
    width: PosInt = Field(64, le=65536)
    depth: NonNegInt = Field(2, le=64)
    activation: str = "tanh"
    time_dependent: bool = False
    input_power: PosInt = Field(1, le=9)

    _activation = field_validator("activation")(_name_in("activation", ACTIVATIONS))


class CNFConfig(_Strict):
    """The continuous normalising flow of the `density` task (FFJORD)."""

    t1: PosFloat = Field(1.0, le=1e6)
    trace: Literal["exact", "hutchinson"] = "exact"
    noise: Literal["gaussian", "rademacher"] = "gaussian"
    _fin = field_validator("t1")(_finite)


class ModelConfig(_Strict):
    field: FieldConfig = FieldConfig()
    augment_dim: NonNegInt = Field(0, le=4096)
    cnf: CNFConfig = CNFConfig()


class SolverConfig(_Strict):
    name: str = "tsit5"
    rtol: PosFloat = 1e-6
    atol: PosFloat = 1e-8
    dt0: PosFloat | None = None
    adjoint: str = "recursive"
    max_steps: PosInt = Field(4096, le=10_000_000)
    batch_mode: str = "vmap"
    checkpoints: Union[PosInt, Literal["auto"], None] = Field(
        "auto", description="solver steps the recursive adjoint stores: 'auto' (the "
        "engine's ~2 sqrt(max_steps) states; on Diffrax every step when they fit in 16 MiB), "
        "null (Diffrax's log2(max_steps)), or a count (Diffrax)")
    engine: str = Field(
        "auto", description="who integrates: 'auto' (nodekit's Runge-Kutta engine for "
        "adaptive dopri5/tsit5 with the recursive adjoint, else Diffrax), 'diffrax' (opt "
        "out), or 'nodekit' (refuse settings the engine cannot run)")

    _name = field_validator("name")(_name_in("solver", SOLVERS))

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints(cls, v):
        if isinstance(v, str) and v != "auto":
            raise ValueError("must be 'auto', null (Diffrax's default) or a positive integer")
        return v
    _adjoint = field_validator("adjoint")(_name_in("adjoint", ADJOINTS))
    _engine = field_validator("engine")(_name_in("engine", ENGINES))
    _batch_mode = field_validator("batch_mode")(_name_in("batch mode", BATCH_MODES))
    _fin = field_validator("rtol", "atol", "dt0")(_finite)


class OptimizerConfig(_Strict):
    """The optimiser, by its Optax name, with its learning rate and schedule, gradient
    clipping, weight decay and extra keyword arguments.

    `lbfgs` is `optax.lbfgs` with a zoom line search that picks each step's size: it is
    meant for full-batch fine-tuning of a deterministic loss (e.g. a UDE after Adam, as
    Rackauckas et al. 2020). Its `learning_rate` scales the step the line search starts
    from and defaults to 1.0; `schedule` must stay `constant`, and `clip_norm` and
    `weight_decay` are refused (they would change the gradients without changing the
    loss the line search measures). `kwargs` may set `memory_size` and
    `max_linesearch_steps`. `validate` also refuses it with minibatches or stochastic
    terms in the loss (see `_check_lbfgs_loss`).
    """

    name: str = "adam"
    learning_rate: PosFloat = 1e-3
    schedule: str = "constant"
    warmup_steps: NonNegInt = 0
    decay_rate: float = Field(0.1, gt=0, le=1)
    clip_norm: PosFloat | None = None
    weight_decay: float = Field(0.0, ge=0)
    kwargs: dict[str, float] = {}

    _name = field_validator("name")(_name_in("optimizer", OPTIMIZERS))

    @pydantic.model_validator(mode="before")
    @classmethod
    def _lbfgs_learning_rate(cls, data):
        """L-BFGS's line search starts from the full quasi-Newton step: its default
        learning rate is 1.0, not Adam's 1e-3."""
        if isinstance(data, dict) and data.get("name") == "lbfgs" and "learning_rate" not in data:
            data = {**data, "learning_rate": 1.0}
        return data

    @field_validator("kwargs", mode="before")
    @classmethod
    def _numbers_only(cls, v):
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, bool) or (isinstance(x, float) and not math.isfinite(x)):
                    raise ValueError(f"kwargs.{k} must be a finite number, got {x!r}")
        return v
    _schedule = field_validator("schedule")(_name_in("schedule", SCHEDULES))
    _fin = field_validator("learning_rate", "clip_norm", "weight_decay")(_finite)

    @field_validator("schedule", "clip_norm", "weight_decay", "kwargs")
    @classmethod
    def _lbfgs_fits(cls, v, info):
        """Refuse what L-BFGS's line search cannot work with (fields after `name`)."""
        if info.data.get("name") != "lbfgs":
            return v
        key = info.field_name
        if key == "schedule" and v != "constant":
            raise ValueError("lbfgs picks each step's size by a line search; a schedule "
                             "cannot apply. Use schedule 'constant' (learning_rate scales "
                             "the step the line search starts from, default 1.0)")
        if key == "clip_norm" and v is not None:
            raise ValueError("lbfgs cannot clip gradients: the line search and the curvature "
                             "memory need the true gradient of the loss. Leave clip_norm null")
        if key == "weight_decay" and v:
            raise ValueError("lbfgs cannot add decoupled weight decay: the line search "
                             "measures the loss without it. Leave weight_decay 0 (put an "
                             "L2 penalty in the loss instead)")
        if key == "kwargs":
            for k, x in v.items():
                if k not in LBFGS_KWARGS:
                    hint = closest(k, list(LBFGS_KWARGS))
                    did = f"; did you mean {hint!r}?" if hint else ""
                    raise ValueError(f"kwargs.{k} is not an lbfgs option{did} Allowed: "
                                     f"{', '.join(LBFGS_KWARGS)}")
                if x != int(x) or x < 1:
                    raise ValueError(f"kwargs.{k} must be a positive integer for lbfgs, got {x!r}")
        return v


def _check_lbfgs_loss(cfg: "Config") -> None:
    """`lbfgs` needs the same deterministic loss at every step: its curvature memory
    pairs gradients of consecutive steps, and its line search assumes the function it
    measured is the one it then minimises. Refuse, naming the key, a run whose loss
    changes from step to step (minibatches, Hutchinson noise, STEER's random end time)."""
    if cfg.optimizer.name != "lbfgs":
        return
    why = "optimizer.name 'lbfgs' needs a deterministic full-batch loss"
    reg = cfg.regularisation
    if reg.steer is not None:
        raise ConfigError("regularisation.steer", f"{why}, but STEER draws a random end "
                          "time each step. Remove regularisation.steer, or train with adam.")
    if reg.jacobian is not None and reg.jacobian.estimator == "hutchinson":
        raise ConfigError("regularisation.jacobian.estimator", f"got 'hutchinson': {why}, "
                          "but the Hutchinson estimator draws new noise each step. Use "
                          "estimator 'exact' with lbfgs.")
    if cfg.task == "density" and cfg.model.cnf.trace == "hutchinson":
        raise ConfigError("model.cnf.trace", f"got 'hutchinson': {why}, but the Hutchinson "
                          "trace draws new noise each step. Use trace 'exact' with lbfgs.")
    d = cfg.data
    full = d.n_points - d.batch_time if cfg.task == "trajectory" else d.n_train
    if cfg.train.batch_size != full:
        raise ConfigError("train.batch_size", f"got {cfg.train.batch_size}: {why}, so the "
                          f"batch must be the whole training set: set train.batch_size={full} "
                          "(or train with adam on minibatches).")


class TrainConfig(_Strict):
    steps: PosInt = Field(1000, le=100_000_000)
    batch_size: PosInt = Field(32, le=1_000_000)
    log_every: PosInt = 1
    eval_every: PosInt = 100
    checkpoint_every: PosInt = 100
    on_nonfinite: Literal["stop", "skip_step"] = "stop"
    max_solver_failures: float = Field(
        0.0, ge=0, le=1, description="fraction of a batch's solves allowed to fail"
    )
    progress: bool = True
    compile_cache: bool = True
    devices: Union[PosInt, Literal["all"]] = Field(
        1, description="data-parallel devices: a count or 'all' (batch sharded, params replicated)"
    )


class DistributedConfig(_Strict):
    """Multi-host start-up through `jax.distributed.initialize`. Leave the fields unset
    to read them from the usual environment (SLURM, Open MPI, Cloud TPU, or
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""

    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: PosInt | None = None
    process_id: NonNegInt | None = None


class SpiralData(_Strict):
    """The torchdiffeq `ode_demo` spiral: dy/dt = (y**3) A."""

    name: Literal["spiral"] = "spiral"
    n_points: PosInt = Field(1000, ge=20, le=1_000_000)
    t1: PosFloat = 25.0
    batch_time: PosInt = Field(10, ge=2)
    noise: float = Field(0.0, ge=0)

    _fin = field_validator("t1", "noise")(_finite)

    @field_validator("batch_time")
    @classmethod
    def _fits_the_data(cls, v, info):
        n = info.data.get("n_points")
        if n is not None and v > n:
            raise ValueError(f"must be at most data.n_points ({n}): a batch segment is "
                             "cut from the one true trajectory")
        return v


class Toy2DData(_Strict):
    """FFJORD's toy 2-D densities (`nodekit.data.sample_toy2d`), for the `density` task."""

    name: Literal["toy2d"] = "toy2d"
    distribution: str = "8gaussians"
    n_train: PosInt = Field(10_000, ge=16, le=10_000_000)
    n_test: PosInt = Field(2_000, ge=16, le=1_000_000)

    @field_validator("distribution")
    @classmethod
    def _known(cls, v):
        from .data import TOY2D_NAMES

        return _name_in("toy density", TOY2D_NAMES)(v)


DataConfig = Annotated[Union[SpiralData, Toy2DData], Field(discriminator="name")]
_DATA_MODELS = {m.model_fields["name"].default: m for m in (SpiralData, Toy2DData)}
#: The data each task reads.
_TASK_DATA = {"trajectory": "spiral", "density": "toy2d"}


def _weight_shorthand(v):
    """`kinetic: 0.01` means `kinetic: {weight: 0.01}`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"weight": v}
    return v


class KineticConfig(_Strict):
    """Kinetic energy penalty: weight * integral of ||f(t, y)||^2 dt (RNODE)."""

    weight: float = Field(ge=0)
    _fin = field_validator("weight")(_finite)


class JacobianConfig(_Strict):
    """Jacobian Frobenius penalty: weight * integral of ||df/dy||_F^2 dt (RNODE)."""

    weight: float = Field(ge=0)
    estimator: Literal["exact", "hutchinson"] = "hutchinson"
    noise: Literal["gaussian", "rademacher"] = "gaussian"
    _fin = field_validator("weight")(_finite)


class TaylorConfig(_Strict):
    """Taylor-mode penalty R_K: weight * integral of ||d^K y/dt^K||^2 dt (TayNODE)."""

    weight: float = Field(ge=0)
    order: int = Field(2, ge=2, le=8)
    method: Literal["jet", "jvp"] = "jet"
    _fin = field_validator("weight")(_finite)


class SteerConfig(_Strict):
    """STEER: each training solve ends at a time drawn uniformly from [T - width, T + width]."""

    width: PosFloat
    _fin = field_validator("width")(_finite)


class RegularisationConfig(_Strict):
    """Penalties that keep learned dynamics easy to solve; each is off unless given.

    `quadrature` says how the penalties' integrals are taken along the solve:
    `trapezoid` (default: the integrands once per solver step, the steps those of the
    unregularised solve; kinetic energy alone rides on the stages' field values for
    free) or `augmented` (running integrals in the ODE state, evaluated
    at every stage and under error control, as RNODE's and TayNODE's code do; several
    times dearer). See `nodekit.regularised_odeint`.
    """

    kinetic: KineticConfig | None = None
    jacobian: JacobianConfig | None = None
    taylor: TaylorConfig | None = None
    steer: SteerConfig | None = None
    quadrature: Literal["trapezoid", "augmented"] = "trapezoid"

    _short = field_validator("kinetic", "jacobian", "taylor", mode="before")(_weight_shorthand)


class Config(_Strict):
    """A whole training run. Sections: `data`, `model`, `solver`, `regularisation`,
    `optimizer`, `train`, `distributed`, plus `seed`, `task` and `precision`.

    **Example:**

    ```python
    cfg = nodekit.load_config("configs/spiral.yaml", ["train.steps=100"])
    cfg.solver.name, cfg.hash()
    ```
    """

    seed: int = Field(0, ge=0, lt=2**32)
    task: Literal["trajectory", "density"] = "trajectory"
    precision: Literal["float32", "float64"] = "float32"
    data: DataConfig = Field(default_factory=SpiralData)
    model: ModelConfig = ModelConfig()
    solver: SolverConfig = SolverConfig()
    regularisation: RegularisationConfig = RegularisationConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

    def to_dict(self) -> dict:
        """The fully resolved config as plain YAML-able data."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """A hash of everything that determines the model and its optimisation (not
        the step count or logging cadence): a checkpoint is only resumed under a config
        with the same hash."""
        d = self.to_dict()
        d["train"] = {"batch_size": d["train"]["batch_size"]}
        d.pop("distributed")
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- errors


def _sub_model(annotation) -> type | None:
    """The config section an annotation holds (`Section` or `Section | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [a for a in getattr(annotation, "__args__", ()) or ()
              if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _model_at(cls, loc) -> type | None:
    """The pydantic model class found by following `loc` from `cls`."""
    for part in loc:
        if cls is None or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            # a discriminated union member, named by its tag
            return None
        cls = _sub_model(field.annotation)
    return cls


def _clean_loc(loc) -> list[str]:
    """The user's key path from pydantic's error location: union branch tags that
    pydantic inserts (`data.spiral.t1`, `train.devices.constrained-int`) are dropped by
    following the schema, and free-form mappings (`optimizer.kwargs.b1`) keep their keys."""
    out: list[str] = []
    cls: Any = Config
    for part in (str(p) for p in loc):
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            field = cls.model_fields.get(part)
            if field is None:
                if cls is Config or part not in _DATA_MODELS:
                    out.append(part)  # an unknown key: named as typed
                cls = _DATA_MODELS.get(part)
                continue
            out.append(part)
            if cls is Config and part == "data":
                cls = "data"  # a union by data.name: the next part may be its tag
            elif getattr(field.annotation, "__origin__", None) is dict:
                cls = "mapping"
            else:
                cls = _sub_model(field.annotation)  # None for a value: what follows is a tag
        elif cls == "data":
            cls = _DATA_MODELS.get(part)
            if cls is None:
                out.append(part)
        elif cls == "mapping":
            out.append(part)
            cls = None
    return out


def _shown(value) -> str:
    """A bad value as the message shows it: short, whatever its size."""
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _format_error(err: dict, raw: dict) -> ConfigError:
    loc_clean = _clean_loc(err["loc"])
    path = ".".join(loc_clean)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        parent_loc = loc_clean[:-1]
        model = _model_at(Config, parent_loc) if parent_loc else Config
        if parent_loc and parent_loc[0] == "data":
            model = _data_model(raw)
        allowed = sorted(model.model_fields) if model is not None else []
        key = loc_clean[-1]
        hint = closest(key, allowed)
        did = f"; did you mean {hint!r}?" if hint else "."
        where = ".".join(parent_loc) or "the top level"
        return ConfigError(
            path, f"unknown key {key!r} under {where}{did} Allowed keys: {', '.join(allowed)}."
        )
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = _shown(value)
    if kind == "missing":
        return ConfigError(path, "this key is required.")
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        data = raw.get("data") if isinstance(raw, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
        text = name if isinstance(name, str) else _shown(name)
        return ConfigError("data.name", unknown_name_message("data name", text, list(_DATA_MODELS)))
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        hint = closest(str(value), options) if isinstance(value, str) else None
        did = f"; did you mean {hint!r}?" if hint else "."
        return ConfigError(path, f"got {shown}: allowed {', '.join(map(repr, options))}{did}")
    return ConfigError(path, f"got {shown}: {msg}.".replace("..", "."))


def _data_model(raw: dict):
    data = raw.get("data") if isinstance(raw, dict) else None
    name = data.get("name", "spiral") if isinstance(data, dict) else "spiral"
    return _DATA_MODELS.get(name) if isinstance(name, str) else None


def validate(raw: Any) -> Config:
    """Validate raw config data (a mapping) into a `Config`.

    **Raises:** `ConfigError` naming the first bad key path, the value and what is allowed.

    **Example:**

    ```python
    cfg = nodekit.validate_config({"solver": {"name": "dopri5"}, "train": {"steps": 10}})
    ```
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config must be a mapping of sections, got {type(raw).__name__}.")
    task = raw.get("task", "trajectory")
    want = _TASK_DATA.get(task) if isinstance(task, str) else None
    if want is not None and isinstance(raw.get("data", {}), dict) and "name" not in raw.get("data", {}):
        raw = {**raw, "data": {"name": want, **raw.get("data", {})}}  # the task's default data
    _refuse_booleans(raw, Config, [])
    try:
        cfg = Config.model_validate(raw)
    except pydantic.ValidationError as e:
        errors = e.errors()
        # a wrong value is news to the user; a missing key often follows from it
        first = next((x for x in errors if x["type"] != "missing"), errors[0])
        raise _format_error(first, raw) from None
    if cfg.data.name != _TASK_DATA[cfg.task]:
        raise ConfigError("data.name", f"got {cfg.data.name!r}: task {cfg.task!r} reads "
                                       f"{_TASK_DATA[cfg.task]!r} data.")
    _check_lbfgs_loss(cfg)
    _check_engine(cfg)
    return cfg


def _check_engine(cfg: "Config") -> None:
    """`solver.engine: nodekit` with settings the engine cannot run is a config error
    (the state-size budget is checked when the model is solved)."""
    s, reg = cfg.solver, cfg.regularisation
    if s.engine != "nodekit":
        return
    from ._odeint import engine_for

    regularised = any(x is not None for x in (reg.kinetic, reg.jacobian, reg.taylor))
    try:
        engine_for(s.engine, solver=s.name, adjoint=s.adjoint, dt0=s.dt0,
                   integrals="trapezoid" if regularised else None, checkpoints=s.checkpoints,
                   max_steps=s.max_steps, y0=np.zeros((1,), np.float32))
    except InputError as e:
        raise ConfigError("solver.engine", str(e)) from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file with `yaml.safe_load` (no Python object tags).

    **Raises:** `ConfigError` for a missing/unreadable file, bad UTF-8 or bad YAML.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError("", f"config file {str(p)!r} does not exist.")
    if p.is_dir():
        raise ConfigError("", f"config path {str(p)!r} is a directory; give a YAML file.")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"config file {str(p)!r} is not UTF-8 text (byte {e.start}).") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {str(p)!r}: {e.strerror}.") from None
    try:
        _check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(p))
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("", f"{str(p)!r} is not valid YAML{where}: {problem}.") from None
    except RecursionError:
        raise ConfigError("", f"{str(p)!r} is nested too deeply to be a config.") from None
    if data is None:
        raise ConfigError("", f"config file {str(p)!r} is empty; start from configs/spiral.yaml "
                              "(every key has a default, but an empty file is taken as a mistake).")
    if not isinstance(data, dict):
        raise ConfigError("", f"{str(p)!r} must hold a mapping of sections, got a {type(data).__name__}.")
    _check_plain(data)
    return data


def _check_duplicate_keys(node, where: str) -> None:
    """Refuse a mapping that repeats a key (PyYAML would keep the last one silently)."""
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in keys:
                        line = k.start_mark.line + 1
                        raise ConfigError(k.value, f"duplicate key {k.value!r} at line {line} "
                                                   f"of {where!r}; keep one.")
                    keys.add(k.value)
                stack += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


#: Limits on config data (a config is small: these only stop YAML alias bombs and
#: self-referencing values, which would otherwise hang or crash validation).
MAX_DEPTH, MAX_ITEMS = 32, 10_000


def _check_plain(data) -> None:
    """Refuse values nested deeper than `MAX_DEPTH`, larger than `MAX_ITEMS` (after
    expanding YAML aliases) or referring to themselves, naming the top-level key."""
    count = 0

    def walk(x, path, depth, parents):
        nonlocal count
        count += 1
        where = ".".join(path[:2]) or "the config"
        if count > MAX_ITEMS:
            raise ConfigError(where, f"the config holds more than {MAX_ITEMS} values "
                                     "(a YAML alias expanding without bound?).")
        if depth > MAX_DEPTH:
            raise ConfigError(where, f"a value nested more than {MAX_DEPTH} levels deep.")
        if isinstance(x, (dict, list)):
            if id(x) in parents:
                raise ConfigError(where, "a value that contains itself (a recursive YAML alias).")
            parents = parents | {id(x)}
            items = x.items() if isinstance(x, dict) else enumerate(x)
            for k, v in items:
                walk(v, path + [str(k)], depth + 1, parents)

    walk(data, [], 0, frozenset())


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to raw config
    data. Types and key names are checked when the result is validated.

    **Raises:** `ConfigError` for a malformed override.
    """
    _check_plain(raw)
    raw = json.loads(json.dumps(raw))  # deep copy of plain (checked acyclic) data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                "", f"override {item!r} must look like key.path=value (e.g. solver.rtol=1e-5)."
            )
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(key, f"override {item!r} has an empty key segment.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = text
        _check_plain({key: value})
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    ".".join(parts[: i + 1]),
                    f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section.",
                )
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config.

    **Arguments:**

    - `path`: a YAML file (or `None` for all defaults).
    - `overrides`: `["solver.rtol=1e-5", ...]`.

    **Returns:** a validated `Config`.

    **Raises:** `ConfigError`.

    **Example:**

    ```python
    cfg = nodekit.load_config("configs/spiral.yaml", ["train.steps=100"])
    ```
    """
    raw = load_yaml(path) if path is not None else {}
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
