"""Config schema, YAML loading, dotted `--set` overrides and error wording.

A config is YAML validated against the pydantic models below. Unknown keys are errors
that name the closest valid key; every error names the key path, the bad value and
what is allowed (`ConfigError`, exit code 2 in the CLI).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Union

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._errors import ConfigError, closest, unknown_name_message
from ._fields import ACTIVATIONS
from ._neural_ode import BATCH_MODES
from ._odeint import ADJOINTS, SOLVERS


#: Optimisers by their Optax names.
OPTIMIZERS = (
    "adam", "adamw", "adabelief", "adagrad", "adamax", "lamb", "lion", "nadam", "radam",
    "rmsprop", "sgd", "yogi", "novograd",
)
#: Learning-rate schedules.
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ModelConfig(_Strict):
    field: FieldConfig = FieldConfig()
    augment_dim: NonNegInt = Field(0, le=4096)


class SolverConfig(_Strict):
    name: str = "tsit5"
    rtol: PosFloat = 1e-6
    atol: PosFloat = 1e-8
    dt0: PosFloat | None = None
    adjoint: str = "recursive"
    max_steps: PosInt = Field(4096, le=10_000_000)
    batch_mode: str = "vmap"

    _name = field_validator("name")(_name_in("solver", SOLVERS))
    _adjoint = field_validator("adjoint")(_name_in("adjoint", ADJOINTS))
    _batch_mode = field_validator("batch_mode")(_name_in("batch mode", BATCH_MODES))
    _fin = field_validator("rtol", "atol", "dt0")(_finite)


class OptimizerConfig(_Strict):
    name: str = "adam"
    learning_rate: PosFloat = 1e-3
    schedule: str = "constant"
    warmup_steps: NonNegInt = 0
    decay_rate: float = Field(0.1, gt=0, le=1)
    clip_norm: PosFloat | None = None
    weight_decay: float = Field(0.0, ge=0)
    kwargs: dict[str, float] = {}

    _name = field_validator("name")(_name_in("optimizer", OPTIMIZERS))
    _schedule = field_validator("schedule")(_name_in("schedule", SCHEDULES))
    _fin = field_validator("learning_rate", "clip_norm", "weight_decay")(_finite)


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


DataConfig = Union[SpiralData]
_DATA_MODELS = {m.model_fields["name"].default: m for m in (SpiralData,)}


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
    """Penalties that keep learned dynamics easy to solve; each is off unless given."""

    kinetic: KineticConfig | None = None
    jacobian: JacobianConfig | None = None
    taylor: TaylorConfig | None = None
    steer: SteerConfig | None = None

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
    task: Literal["trajectory"] = "trajectory"
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


def _model_at(cls, loc) -> type | None:
    """The pydantic model class found by following `loc` from `cls`."""
    for part in loc:
        if cls is None or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            # a discriminated union member, named by its tag
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", None)
        if args:
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            ann = models[0] if len(models) == 1 else None
        cls = ann
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _format_error(err: dict, raw: dict) -> ConfigError:
    loc = [str(p) for p in err["loc"]]
    # drop discriminator tags pydantic inserts for unions (e.g. data.spiral.t1)
    loc_clean = [p for p in loc if p not in _DATA_MODELS and not p.startswith("function-")]
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
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    if kind == "missing":
        return ConfigError(path, "this key is required.")
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return ConfigError(path + ".name" if path else "data.name", msg)
    return ConfigError(path, f"got {shown}: {msg}.".replace("..", "."))


def _data_model(raw: dict):
    data = raw.get("data") if isinstance(raw, dict) else None
    name = data.get("name", "spiral") if isinstance(data, dict) else "spiral"
    return _DATA_MODELS.get(name)


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
    try:
        cfg = Config.model_validate(raw)
    except pydantic.ValidationError as e:
        raise _format_error(e.errors()[0], raw) from None
    return cfg


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
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("", f"{str(p)!r} is not valid YAML{where}: {problem}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{str(p)!r} must hold a mapping of sections, got a {type(data).__name__}.")
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to raw config
    data. Types and key names are checked when the result is validated.

    **Raises:** `ConfigError` for a malformed override.
    """
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
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
        except yaml.YAMLError:
            value = text
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
