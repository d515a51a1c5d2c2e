"""The config schema: one strict pydantic model per section, and `Config` for a run.

Unknown keys are errors; names (solvers, adjoints, optimisers, ...) are checked against
the library's own registries. Loading and error wording live beside this module
(`_load`, `_wording`).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Literal, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._errors import ConfigError, closest, unknown_name_message
from .._fields import ACTIVATIONS
from .._neural_ode import BATCH_MODES
from .._odeint import ADJOINTS, ENGINES, SOLVERS


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

    @field_validator("kwargs")
    @classmethod
    def _finite_after_parsing(cls, v):  # "nan" or 1e400 become non-finite only when parsed
        bad = next((k for k, x in v.items() if not math.isfinite(x)), None)
        if bad is not None:
            raise ValueError(f"kwargs.{bad} must be a finite number, got {v[bad]!r}")
        return v

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
    plots: bool = Field(True, description="write plots/ at the end of the run")
    metrics: list[Literal["jsonl", "csv", "tensorboard"]] = Field(
        ["jsonl", "csv"], description="metric logs: jsonl (metrics.jsonl, always written), "
        "csv (metrics.csv, eval.csv), tensorboard (event files in tensorboard/)")
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
        from ..data import TOY2D_NAMES

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
