"""The config schema: one strict pydantic model per section, and `Config` for a run.

This module is the one gate: every rule that `nodekit train` enforces on a config lives
here, as field types (strict: no string-to-number or bool-to-number coercion; floats
finite), names typed from the library's registries (`Literal` of the registry's
names), and model validators for rules that span fields or sections. Rules that need
the data (the size of a user's file, its shape) are checked when the task is built,
which `nodekit validate` also does (see `nodekit.tasks.make_task`).

Validators raise `ConfigError` with the key path relative to the model they belong to;
`_wording` turns pydantic's errors into one message naming the whole key path. Paths
in a config (`data.path`, `model.field.path`, `model.physics.path`) are resolved
against the config file's folder while validating (the folder comes in the validation
context as `base_dir`; a config given as a dict resolves against the current
directory), so a validated `Config` holds absolute paths and its resolved YAML reruns
from anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .._errors import ConfigError, closest
from .._fields import ACTIVATIONS
from .._neural_ode import BATCH_MODES
from .._odeint import ADJOINTS, ENGINES, SOLVERS
from .._settings import CHECKPOINT_BUDGET_BYTES


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
#: The tasks a config can name (`nodekit.tasks.TASKS` holds one class for each).
TASK_NAMES = ("trajectory", "density", "classification", "latent", "ude")
#: The data each task reads; the first is the task's default.
TASK_DATA = {
    "trajectory": ("spiral", "file"),
    "density": ("toy2d", "file"),
    "classification": ("digits", "anode_g1d", "concentric_spheres", "file"),
    "latent": ("latent_spirals", "file"),
    "ude": ("lotka_volterra", "file"),
}
#: Encoders of the latent ODE (`nodekit.models.ENCODERS`).
ENCODERS = ("ode_rnn", "gru")
#: File types `data: {name: file}` reads, by extension.
DATA_FILE_TYPES = (".csv", ".npz")


def _names(options) -> Any:
    """`Literal[...]` of a registry's names (a tuple or the keys of a dict)."""
    return Literal[tuple(options)]


#: What each name field is called in messages (`unknown solver 'dopri'; ...`), by
#: `(section model, field)`; filled in below.
NAME_KINDS: dict[tuple[str, str], str] = {}


class _Strict(BaseModel):
    """Strict types (a YAML string is never a number, a boolean never an integer),
    finite floats, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)


PosFloat = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: A target `module:Name` (a dotted module path and an attribute of it).
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _base_dir(info) -> Path:
    ctx = info.context if info is not None else None
    base = (ctx or {}).get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def _resolve(path: str, info) -> str:
    """`path` made absolute against the config's folder (`~` expanded)."""
    if "\x00" in path:
        raise ValueError("a path cannot hold a NUL character")
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = _base_dir(info) / p
    return str(Path(*p.parts))  # normalised separators, no trailing slash


def _check_plain_values(value, where: str) -> None:
    """Python kwargs hold plain YAML values; refuse non-finite floats in them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, f"got {value!r}: must be a finite number.")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain_values(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain_values(v, f"{where}.{i}")


# ----------------------------------------------------------------- model


class FieldConfig(_Strict):
    """The vector field: an MLP `f(t, y)`, a second-order field, or the user's own
    Equinox module (`type: python`).

    `type: python` imports `target` (`"module:Name"`, a class or a factory function)
    with `path` (default: the config file's folder) on the import path, calls it with
    `kwargs` (and `key=` when it takes a `key`), and uses what it returns as the field
    `f(t, y, args)`. **This runs the user's Python code**, as `import` does.
    """

    type: Literal["mlp", "second_order", "python"] = Field(
        "mlp", description="the kind of field: `mlp` (a multilayer perceptron `f(t, y)` of "
        "`width` and `depth`), `second_order` (the state is split into positions and "
        "velocities `[x, v]` of equal size and the MLP gives the acceleration: "
        "`dx/dt = v`, `dv/dt = MLP(x, v)`; needs an even state size), or `python` (your "
        "own Equinox module, named by `target`). The trajectory and ude tasks take all "
        "three, density takes `mlp` or `python`, classification and latent `mlp` only")
    width: PosInt = Field(64, le=65536, description="hidden units per layer of the MLP (for "
                          "the classification task's `odenet` and `resnet` models: the "
                          "channels of the convolutions; for the latent task: the latent "
                          "field's and the ODE-RNN's MLPs, or the `rnn` baseline's readout)")
    depth: NonNegInt = Field(2, le=64, description="hidden layers of the MLP (0: a linear "
                             "map); not used by the `odenet` and `resnet` classifiers or the "
                             "`rnn` baseline")
    activation: _names(ACTIVATIONS) = Field(
        "tanh", description="the MLP's activation function, by name. The density task's "
        "trace differentiates the field: prefer a smooth one there (`tanh`, `softplus`)")
    time_dependent: bool = Field(
        False, description="feed the time `t` to the MLP as an extra input (a "
        "non-autonomous field `f(t, y)`); off: `f(y)`. The density task's flow is always "
        "time-dependent; the latent task and the `odenet` and `resnet` classifiers do not "
        "use the key. A time-dependent field on the trajectory task solves each segment "
        "of a data file on its own times, so `solver.batch_mode: joint` is refused there")
    input_power: PosInt = Field(1, le=9, description="raise the state elementwise to this "
                                "power before the MLP, `MLP(y**p)` (torchdiffeq's `ode_demo` "
                                "spiral uses 3); `mlp` fields of the trajectory, density and "
                                "ude tasks only")
    target: str | None = Field(
        None, description="`type: python` only: the field to build, `\"module:Name\"`: a "
        "class or factory function `Name` in `module.py` beside the config (or under "
        "`path`, or an installed module). It is called with `kwargs` (and `key=` when it "
        "takes a `key`) and must return an Equinox module callable as `f(t, y, args)` "
        "whose output has the state's shape. This runs your Python code")
    path: str | None = Field(
        None, description="`type: python` only: the folder `target`'s module is imported "
        "from, relative to the config file's folder (default: that folder itself)")
    kwargs: dict[str, Any] = Field(
        {}, description="`type: python` only: keyword arguments `target` is called with "
        "(plain YAML values: numbers, text, lists, mappings), e.g. starting values of "
        "physical constants")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v, info):
        return None if v is None else _resolve(v, info)

    @model_validator(mode="after")
    def _python_keys(self, info):
        if self.type != "python":
            for key, unset in (("target", self.target is None), ("path", self.path is None),
                               ("kwargs", not self.kwargs)):
                if not unset:
                    raise ConfigError(key, f"only for type 'python' (a field from your own "
                                           f"code), but type is {self.type!r}.")
            return self
        if self.target is None:
            raise ConfigError("target", "type 'python' needs target: \"module:Name\" (a "
                                        "class or function in module.py beside the config).")
        _check_target(self.target, "target")
        _check_plain_values(self.kwargs, "kwargs")
        if self.path is None:
            object.__setattr__(self, "path", str(_base_dir(info)))
        return self


def _check_target(target: str, key: str) -> None:
    if not _TARGET.match(target):
        raise ConfigError(key, f"got {target!r}: must look like \"module:Name\" (a module "
                               "beside the config, or an installed one, and a class or "
                               "function in it), e.g. \"oscillator:DampedOscillator\".")


class PhysicsConfig(_Strict):
    """The known physics of a universal differential equation (task `ude`): the model
    is `dy/dt = physics(t, y) + field(t, y)`, with `model.field` the learned term."""

    type: Literal["lotka_volterra", "python"] = Field(
        "python", description="the known term: `lotka_volterra` (the UDE paper's prey "
        "growth and predator decay, `(alpha x, -delta y)`, on a state of 2) or `python` "
        "(your own Equinox module, named by `target`). Without a `model.physics` section "
        "the ude task has no known term: a plain neural ODE fitted to whole trajectories")
    target: str | None = Field(
        None, description="`type: python` (required there): the known term to build, "
        "`\"module:Name\"`, imported like `model.field.target` and called with `kwargs`; "
        "it must return an Equinox module `f(t, y, args)` whose output has the state's "
        "shape. This runs your Python code")
    path: str | None = Field(
        None, description="`type: python` only: the folder `target`'s module is imported "
        "from, relative to the config file's folder (default: that folder itself)")
    kwargs: dict[str, Any] = Field(
        {}, description="for `python`: keyword arguments `target` is called with (plain "
        "YAML values); for `lotka_volterra`: the rates `alpha` and `delta` (positive "
        "numbers; default the `lotka_volterra` data's rates, else 1.3 and 1.8)")
    learnable: bool = Field(
        False, description="train the known term's arrays too (its rates or your module's "
        "parameters, reported as `physics_parameters` in `summary.json`); false: they stay "
        "fixed and only `model.field` is trained")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v, info):
        return None if v is None else _resolve(v, info)

    @model_validator(mode="after")
    def _keys(self, info):
        _check_plain_values(self.kwargs, "kwargs")
        if self.type == "lotka_volterra":
            for key in ("target", "path"):
                if getattr(self, key) is not None:
                    raise ConfigError(key, "only for type 'python'.")
            for k, v in self.kwargs.items():
                if k not in ("alpha", "delta"):
                    hint = closest(k, ["alpha", "delta"])
                    did = f"; did you mean {hint!r}?" if hint else "."
                    raise ConfigError(f"kwargs.{k}", f"not a lotka_volterra rate{did} "
                                                     "Allowed: alpha, delta.")
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ConfigError(f"kwargs.{k}", f"got {v!r}: must be a positive number.")
            return self
        if self.target is None:
            raise ConfigError("target", "type 'python' needs target: \"module:Name\".")
        _check_target(self.target, "target")
        if self.path is None:
            object.__setattr__(self, "path", str(_base_dir(info)))
        return self


class SparseRegressionConfig(_Strict):
    """Sparse regression (STLSQ, as SINDy) of a UDE's learned term after training, on
    the monomials of the state up to `degree`; coefficients below `threshold` are set
    to zero and the rest refitted, `iterations` times. The coefficients are written to
    `summary.json` (`sparse_regression`)."""

    degree: PosInt = Field(2, le=5, description="the highest total degree of the "
                           "monomials of the state in the library (the constant, `x`, `y`, "
                           "`x*y`, `x^2`, ... up to this degree)")
    threshold: float = Field(0.1, ge=0, description="coefficients smaller than this in size "
                             "are set to zero before each refit (larger: sparser)")
    iterations: PosInt = Field(10, le=1000, description="rounds of thresholding and refitting "
                               "least squares on the monomials that remain")


class CNFConfig(_Strict):
    """The continuous normalising flow of the `density` task (FFJORD)."""

    t1: PosFloat = Field(1.0, le=1e6, description="end time of the flow: data points are "
                         "carried from `t = 0` to `t1`; `regularisation.steer.width` must be "
                         "below it")
    trace: Literal["exact", "hutchinson"] = Field(
        "exact", description="how training takes the trace of the field's Jacobian in the "
        "log-density: `exact` (the full trace; cost grows with the data dimension, for low "
        "dimensions) or `hutchinson` (FFJORD's unbiased one-sample estimate `eps^T J eps`, "
        "one vector-Jacobian product; refused with `optimizer.name: lbfgs`). Evaluation "
        "always uses the exact trace")
    noise: Literal["gaussian", "rademacher"] = Field(
        "gaussian", description="distribution of the noise vector `eps` drawn for each "
        "training solve: the Hutchinson trace's and, in this task, the Hutchinson Jacobian "
        "penalty's (`regularisation.jacobian` shares this vector)")


class ClassifierConfig(_Strict):
    """The model of the `classification` task: Chen et al.'s ODE-Net on images, a
    ResNet baseline with the same stem and head, or an ANODE (an augmented neural ODE)
    on vectors; how its prediction is read off the final state, and its loss."""

    type: Literal["auto", "odenet", "resnet", "anode"] = Field(
        "auto", description="the model: `odenet` (Chen et al.'s ODE-Net on images: a "
        "downsampling stem, one ODE block of a convolutional field with "
        "`model.field.width` channels, a head), `resnet` (the same stem and head with "
        "`num_blocks` residual blocks, no ODE), `anode` (a neural ODE on vectors, augmented "
        "by `model.augment_dim` zeros, with the MLP field of `model.field`), or `auto` "
        "(`odenet` for images, `anode` for vectors)")
    t1: PosFloat = Field(1.0, le=1e6, description="end time of the ODE block: features flow "
                         "from `t = 0` to `t1` (not used by `resnet`)")
    num_blocks: PosInt = Field(6, le=1024, description="residual blocks of the `resnet` "
                               "baseline (other types ignore it)")
    readout: Literal["linear", "none"] = Field(
        "linear", description="how the prediction is read off the final state: `linear` (a "
        "learned linear map) or `none` (the state's first coordinate is the prediction, as "
        "in Dupont et al.'s 1-D example; only for the `anode` model on ±1 targets, not "
        "with `loss: cross_entropy`)")
    loss: Literal["auto", "cross_entropy", "mse"] = Field(
        "auto", description="`cross_entropy` (softmax cross-entropy on integer classes), "
        "`mse` (mean squared error to targets of ±1, as Dupont et al.), or `auto` (chosen "
        "from the labels: integer classes or ±1 targets)")


class LatentConfig(_Strict):
    """The model of the `latent` task: a latent ODE (Rubanova et al. 2019) with an
    `ode_rnn` or `gru` encoder, or the `rnn` baseline (a time-aware GRU encoder and
    decoder). The latent field and the ODE-RNN's field are MLPs of `model.field`'s
    width, depth and activation; the RNN's readout has `model.field.width` units. The
    loss is the negative ELBO (the RNN: the Gaussian negative log-likelihood) with
    observation noise `obs_std` and KL weight `kl_weight`."""

    type: Literal["latent_ode", "rnn"] = Field(
        "latent_ode", description="`latent_ode` (an encoder reads each series backwards "
        "into a distribution of the initial latent state, a neural ODE carries it forward, "
        "a decoder maps it back to the data) or `rnn` (the baseline: a time-aware GRU "
        "encoder and decoder, no ODE solves)")
    encoder: _names(ENCODERS) = Field(
        "ode_rnn", description="the latent ODE's encoder: `ode_rnn` (its hidden state "
        "flows by its own neural ODE between observations, Rubanova et al.) or `gru` (a GRU "
        "given the time gaps; no solves in the encoder). Not used by `rnn`")
    latent_size: PosInt = Field(4, le=4096, description="dimension of the latent state that "
                                "the neural ODE evolves (`latent_ode` only)")
    hidden_size: PosInt = Field(25, le=65536, description="size of the encoder's GRU state "
                                "(for `rnn`: of both GRUs' states)")
    decoder_width: PosInt = Field(20, le=65536, description="hidden units of the decoder MLP "
                                  "that maps the latent state to an observation "
                                  "(`latent_ode` only)")
    decoder_depth: NonNegInt = Field(1, le=64, description="hidden layers of the decoder MLP "
                                     "(0: a linear map; `latent_ode` only)")
    obs_std: PosFloat = Field(0.3, description="the fixed standard deviation of the Gaussian "
                              "observation noise in the likelihood, in the data's units "
                              "(standardised units when `data.normalise` is on)")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL divergence of the "
                             "initial latent state's posterior from the N(0, I) prior in the "
                             "loss (1: the true negative ELBO; `latent_ode` only)")


class ModelConfig(_Strict):
    """The model. `field`, `augment_dim` and `init_seed` are shared; `cnf` (density),
    `classifier` (classification), `latent` (latent), `physics` and
    `sparse_regression` (ude) belong to one task each and are refused for the others.
    `cnf`, `classifier` and `latent` are filled with their defaults for their task;
    `physics` and `sparse_regression` stay off unless given."""

    field: FieldConfig = Field(
        FieldConfig(), description="the vector field: a built-in MLP or your own module "
        "(every task; see the `model.field` table)")
    augment_dim: NonNegInt = Field(0, le=4096, description="extra state dimensions, started "
                                   "at zero, appended to the data's state (augmented neural "
                                   "ODEs, Dupont et al.); the trajectory task's `mlp` and "
                                   "`second_order` fields and the classification task's "
                                   "`anode` model only")
    init_seed: Seed | None = Field(
        None, description="seed of the initial weights on their own: drawn with "
        "`jax.random.PRNGKey(init_seed)` instead of a key split from the run's `seed` (which "
        "still draws the training keys), e.g. to start from the same weights as a model "
        "built in Python with that key; null: split from `seed`")
    cnf: CNFConfig | None = Field(
        None, description="the continuous normalising flow (task `density` only; filled "
        "with its defaults there)")
    classifier: ClassifierConfig | None = Field(
        None, description="the classifier (task `classification` only; filled with its "
        "defaults there)")
    latent: LatentConfig | None = Field(
        None, description="the latent ODE or its RNN baseline (task `latent` only; filled "
        "with its defaults there)")
    physics: PhysicsConfig | None = Field(
        None, description="the known physics of a universal differential equation (task "
        "`ude` only); null: no known term")
    sparse_regression: SparseRegressionConfig | None = Field(
        None, description="a sparse regression (STLSQ) of the learned term after training "
        "(task `ude` only); null: none")


class SolverConfig(_Strict):
    """How every ODE of the run is solved and differentiated (`nodekit.SolveSettings`):
    the solver, its tolerances or fixed step, the adjoint, the step limit, how a batch
    is solved and which integrator runs it."""

    name: _names(SOLVERS) = Field(
        "tsit5", description="the Runge-Kutta method. Adaptive (error-controlled, with "
        "`rtol`/`atol`): `midpoint`, `heun`, `ralston`, `bosh3`, `dopri5`, `tsit5`, "
        "`dopri8`, and `kvaerno5` (implicit, for stiff problems); `euler` and `rk4` have no "
        "error estimate and need `dt0`. SciPy's names (`RK45`, `DOP853`, ...) are answered "
        "with their equivalents")
    rtol: PosFloat = Field(1e-6, description="relative tolerance of the adaptive step-size "
                           "controller: each step's local error is kept below "
                           "`atol + rtol * |y|` (ignored with a fixed `dt0`). Looser: fewer "
                           "steps (NFE), faster training")
    atol: PosFloat = Field(1e-8, description="absolute tolerance of the adaptive step-size "
                           "controller (see `rtol`); matters where the state is near zero")
    dt0: PosFloat | None = Field(
        None, description="null: adaptive steps chosen by the controller; a number: fixed "
        "steps of this size (in the time units of the data), required by `euler` and "
        "`rk4`. A fixed step runs on Diffrax, not nodekit's engine")
    adjoint: _names(ADJOINTS) = Field(
        "recursive", description="how gradients go through a solve: `recursive` "
        "(backpropagation through the solver's steps, with stored checkpoints; exact "
        "gradients of the computed solution), `backsolve` (the continuous adjoint: a "
        "second ODE solved backwards in time; memory independent of the steps, gradients "
        "approximate to the tolerances), or `direct` (differentiable in forward mode too; "
        "Diffrax only)")
    max_steps: PosInt = Field(4096, le=10_000_000, description="the most solver steps one "
                              "solve may take (forward, and each backward interval of "
                              "`backsolve`); a solve that needs more fails, and "
                              "`train.max_solver_failures` decides what happens then. Also "
                              "sizes the memory `recursive` reserves for its checkpoints")
    batch_mode: _names(BATCH_MODES) = Field(
        "vmap", description="how a batch is solved: `vmap` (one solve per sample, each "
        "with its own steps) or `joint` (the whole batch as one ODE state with one shared "
        "step size, as torchdiffeq and FFJORD do; cheaper per step, but the stiffest "
        "sample sets the steps for all). Used by the trajectory (segments on a shared time "
        "grid; `joint` is refused where each segment needs its own times), density and "
        "classification tasks; the latent and ude tasks solve each series on its own "
        "times")
    checkpoints: Union[PosInt, Literal["auto"], None] = Field(
        "auto", description="solver steps the `recursive` adjoint stores for the backward "
        "pass (fewer: less memory, more recomputation): `auto` (nodekit's engine keeps "
        "about 2·sqrt(max_steps) states; Diffrax stores every step when they fit in "
        f"{CHECKPOINT_BUDGET_BYTES // 2**20} MiB, "
        "else uses its default), null (Diffrax's default, about log2(max_steps)), or a "
        "count of steps to store (below `max_steps`, the solves run on Diffrax)")
    engine: _names(ENGINES) = Field(
        "auto", description="which integrator runs the solves: `auto` (nodekit's "
        "Runge-Kutta engine where it applies: adaptive `dopri5` or `tsit5` without `dt0`, "
        "the `recursive` adjoint with `checkpoints: auto` or the `backsolve` adjoint, one "
        "solve or a `joint` batch, no regularisers or `regularisation.quadrature: "
        f"augmented`, its stored states within {CHECKPOINT_BUDGET_BYTES // 2**20} MiB; else "
        "Diffrax), `diffrax` (always "
        "Diffrax), or `nodekit` (the engine; settings it cannot run are refused, naming "
        "why). The integrator used is recorded in `metrics.jsonl` and `summary.json`")

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints(cls, v):
        if isinstance(v, str) and v != "auto":
            raise ValueError("must be 'auto', null (Diffrax's default) or a positive integer")
        return v


class OptimizerConfig(_Strict):
    """The optimiser, by its Optax name, with its learning rate and schedule, gradient
    clipping, weight decay and extra keyword arguments.

    `lbfgs` is `optax.lbfgs` with a zoom line search that picks each step's size: it is
    meant for full-batch fine-tuning of a deterministic loss (e.g. a UDE after Adam, as
    Rackauckas et al. 2020). Its `learning_rate` scales the step the line search starts
    from and defaults to 1.0; `schedule` must stay `constant`, and `clip_norm` and
    `weight_decay` are refused (they would change the gradients without changing the
    loss the line search measures). `kwargs` may set `memory_size` and
    `max_linesearch_steps`. The config is also refused with minibatches or stochastic
    terms in the loss (STEER's end time, Hutchinson noise, fresh samples each step, the
    latent ODE's posterior sample).
    """

    name: _names(OPTIMIZERS) = Field(
        "adam", description="the optimiser, by its Optax name (`optax.adam`, ...); `lbfgs` "
        "is L-BFGS with a zoom line search for full-batch fine-tuning of a deterministic "
        "loss, refused with minibatches, schedules, clipping, weight decay or noisy terms "
        "in the loss")
    learning_rate: PosFloat = Field(
        1e-3, description="the step size, and the peak of the schedule; default 1e-3, or "
        "1.0 for `lbfgs` (where it scales the step the line search starts from)")
    schedule: _names(SCHEDULES) = Field(
        "constant", description="the learning rate over `train.steps`: `constant`; "
        "`cosine` (cosine decay from `learning_rate` to `learning_rate * decay_rate`); "
        "`warmup_cosine` (linear warm-up from 0 over `warmup_steps`, then cosine decay to "
        "`learning_rate * decay_rate`); `exponential` (`learning_rate * decay_rate ** (step "
        "/ train.steps)`). A schedule spans `train.steps`, so a run that follows one can "
        "only be resumed with the same `train.steps`")
    warmup_steps: NonNegInt = Field(0, description="steps of the linear warm-up of "
                                    "`schedule: warmup_cosine` (other schedules ignore it)")
    decay_rate: float = Field(0.1, gt=0, le=1, description="the fraction of `learning_rate` "
                              "the `cosine`, `warmup_cosine` and `exponential` schedules "
                              "reach at the last step (`constant` ignores it)")
    clip_norm: PosFloat | None = Field(
        None, description="clip the gradients to this global norm before each update; "
        "null: no clipping. A remedy for a loss that turns non-finite")
    weight_decay: float = Field(0.0, ge=0, description="weight decay: for `adamw` its "
                                "decoupled decay (so the default 0 means none, not Optax's "
                                "default; `kwargs.weight_decay` also sets it); for the other "
                                "optimisers `weight_decay * params` is added to the gradient "
                                "before the update (the gradient of an L2 penalty). 0: none")
    kwargs: dict[str, float] = Field(
        {}, description="extra keyword arguments of the Optax optimiser (numbers), e.g. "
        "`{b1: 0.9, b2: 0.99}` for `adam`; each must be one of its arguments. For `lbfgs`: "
        + " and ".join(f"`{k}` (default {v})" for k, v in LBFGS_KWARGS.items())
        + ", positive integers")

    @model_validator(mode="before")
    @classmethod
    def _lbfgs_learning_rate(cls, data):
        """L-BFGS's line search starts from the full quasi-Newton step: its default
        learning rate is 1.0, not Adam's 1e-3."""
        if isinstance(data, dict) and data.get("name") == "lbfgs" and "learning_rate" not in data:
            data = {**data, "learning_rate": 1.0}
        return data

    @field_validator("kwargs")
    @classmethod
    def _optax_takes_them(cls, v, info):
        """Each of `kwargs` must be a keyword argument of the Optax optimiser (checked
        here so that `validate` refuses what building the optimiser would)."""
        name = info.data.get("name")
        if not v or name is None or name == "lbfgs":
            return v
        import inspect

        import optax

        params = [p for p in inspect.signature(getattr(optax, name)).parameters
                  if p != "learning_rate"]
        for k in v:
            if k not in params:
                hint = closest(k, params)
                did = f"; did you mean {hint!r}?" if hint else "."
                raise ConfigError(k, f"not an option of optax.{name}{did} "
                                                 f"Allowed: {', '.join(params)}.")
        return v

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


class TrainConfig(_Strict):
    """The training loop: how long, how big a batch, how often to log, evaluate and
    checkpoint, what to do on a fault, what to write, and on how many devices. Of these
    keys only `batch_size` (and `batch_order: random`) enter the config's hash, which a
    resumed checkpoint must match: the cadences, guards and outputs may change between
    a run and its resumption."""

    steps: PosInt = Field(1000, le=100_000_000, description="optimisation steps in all. "
                          "Rerunning into a workdir with a checkpoint resumes up to this "
                          "count; with a `constant` learning rate it may be raised to train "
                          "on")
    batch_size: PosInt = Field(32, le=1_000_000, description="training items per step: "
                               "segments (trajectory), samples (density), examples "
                               "(classification) or series (latent, ude); at most the "
                               "training items there are, divisible by `train.devices`, and "
                               "the whole training set for `optimizer.name: lbfgs`")
    log_every: PosInt = Field(1, le=100_000_000, description="write a row of training "
                              "metrics (loss, NFE, step time, terms) to the metric logs "
                              "every this many steps, and on the last step")
    eval_every: PosInt = Field(100, le=100_000_000, description="evaluate on the evaluation "
                               "data every this many steps and after the last one "
                               "(`eval_loss` and the task's metrics in the logs; "
                               "`checkpoints/best.nkc` keeps the best so far)")
    eval_batch_mode: _names(BATCH_MODES) | None = Field(
        None, description="`solver.batch_mode` for the evaluation solves of the density and "
        "classification tasks; null: the same as training")
    checkpoint_every: PosInt = Field(100, le=100_000_000, description="save "
                                     "`checkpoints/latest.nkc` every this many steps and "
                                     "at the end (atomically; the one before is kept as "
                                     "`previous.nkc`): how far a resumed or faulted run "
                                     "falls back")
    batch_order: Literal["epochs", "random"] | None = Field(
        None, description="how the classification, latent and ude tasks draw batches from "
        "their training set: `epochs` (null means this: each epoch a random permutation, "
        "every item once) or `random` (each step's batch drawn anew, without replacement, "
        "by `numpy.random.default_rng(seed * 2**32 + step)`). The trajectory and density "
        "tasks draw each batch at random and refuse the key")
    on_nonfinite: Literal["stop", "skip_step"] = Field(
        "stop", description="what a non-finite loss or gradient does: `stop` (the run "
        "stops as a training fault, exit code 3 from `nodekit train`, with the last good "
        "checkpoint saved and what to try) or `skip_step` (that step's update is not "
        "applied, its metrics row is marked `skipped`, and training goes on)")
    max_solver_failures: float = Field(
        0.0, ge=0, le=1, description="the fraction of a batch's solves that may fail (e.g. "
        "run past `solver.max_steps`) in a step; more stops the run as a training fault "
        "(exit code 3 from `nodekit train`, the last good checkpoint saved). 0: any failed "
        "solve stops it"
    )
    progress: bool = Field(True, description="report progress on stderr: a line per phase, "
                           "then a live bar on a terminal, or a plain line at most every 5 s "
                           "otherwise. false: no live bar; the `nodekit` command still "
                           "prints the plain lines (as `--no-progress` does), "
                           "`nodekit.train` prints nothing")
    compile_cache: bool = Field(True, description="reuse compiled training steps across runs: "
                                "a single-device run stores its traced step under "
                                "`$NODEKIT_CACHE_DIR/xla` (default `~/.cache/nodekit/xla`) "
                                "and loads it when the config and shapes agree, and the "
                                "`nodekit` command also turns on JAX's persistent "
                                "compilation cache there")
    plots: bool = Field(True, description="draw the figures into `plots/` at the end of the "
                        "run (the loss curve and the task's own, e.g. `trajectory.png`, "
                        "`density.png`)")
    metrics: list[Literal["jsonl", "csv", "tensorboard"]] = Field(
        ["jsonl", "csv"], description="the metric logs to write: `jsonl` (`metrics.jsonl`, "
        "always written), `csv` (`metrics.csv` for training rows, `eval.csv` for "
        "evaluations), `tensorboard` (event files in `tensorboard/`)")
    devices: Union[PosInt, Literal["all"]] = Field(
        1, description="devices to train on, data-parallel: a count or `all` (across hosts "
        "with `distributed`). Each batch is split among them and the parameters "
        "replicated, so `batch_size` must divide evenly; a sweep spreads its members over "
        "them instead"
    )


class DistributedConfig(_Strict):
    """Multi-host start-up through `jax.distributed.initialize`. Leave the fields unset
    to read them from the usual environment (SLURM, Open MPI, Cloud TPU, or
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""

    enabled: bool = Field(False, description="start JAX's multi-host runtime "
                          "(`jax.distributed.initialize`) before anything computes, one "
                          "process per host running the same config; then `train.devices: "
                          "all` trains on the devices of every host")
    coordinator_address: str | None = Field(
        None, description="`host:port` of the coordinator (process 0); null: read from the "
        "environment (SLURM, Open MPI, Cloud TPU, or JAX_COORDINATOR_ADDRESS)")
    num_processes: PosInt | None = Field(
        None, description="the number of processes in the run; null: read from the "
        "environment (e.g. JAX_NUM_PROCESSES)")
    process_id: NonNegInt | None = Field(
        None, description="this process's index, 0 to `num_processes - 1` (usually set per "
        "process with `--set distributed.process_id=N`); null: read from the environment "
        "(e.g. JAX_PROCESS_ID)")


# ----------------------------------------------------------------- data


class SpiralData(_Strict):
    """The torchdiffeq `ode_demo` spiral: dy/dt = (y**3) A (task `trajectory`)."""

    name: Literal["spiral"] = Field("spiral", description="the data set: torchdiffeq's "
                                    "`ode_demo` spiral (task `trajectory`)")
    n_points: PosInt = Field(1000, ge=20, le=1_000_000, description="observations of the "
                             "one true trajectory, evenly spaced on `[0, t1]`")
    t1: float = Field(25.0, ge=1e-3, le=1e4, description="end time of the observed "
                      "trajectory, which starts at `y0 = [2, 0]` at `t = 0`")
    batch_time: PosInt = Field(10, ge=2, description="consecutive observations per training "
                               "segment; each segment is solved from its first point. "
                               "`train.batch_size` is at most `n_points - batch_time`")
    noise: float = Field(0.0, ge=0, le=1e6, description="standard deviation of Gaussian "
                         "noise added to the observations (drawn from the run's `seed`); "
                         "0: exact observations")

    @field_validator("batch_time")
    @classmethod
    def _fits_the_data(cls, v, info):
        n = info.data.get("n_points")
        if n is not None and v > n:
            raise ValueError(f"must be at most data.n_points ({n}): a batch segment is "
                             "cut from the one true trajectory")
        return v


def _toy2d_names():
    from ..data import TOY2D_NAMES

    return TOY2D_NAMES


class Toy2DData(_Strict):
    """FFJORD's toy 2-D densities (`nodekit.data.sample_toy2d`), for the `density` task:
    a fixed training set or a fresh batch every step, and a separate test set."""

    name: Literal["toy2d"] = Field("toy2d", description="the data set: FFJORD's toy 2-D "
                                   "densities (task `density`)")
    distribution: _names(_toy2d_names()) = Field(
        "8gaussians", description="which toy density to sample (`nodekit.data.sample_toy2d`)")
    n_train: PosInt = Field(10_000, ge=16, le=10_000_000, description="training samples, "
                            "drawn once (unused with `resample: true`); "
                            "`train.batch_size` is at most this")
    n_test: PosInt = Field(2_000, ge=16, le=1_000_000, description="test samples, on which "
                           "evaluation measures the negative log-likelihood")
    resample: bool = Field(False, description="draw a fresh batch every step instead of "
                           "sampling from `n_train` fixed points (as FFJORD's toy runs; "
                           "step `s` draws with seed `seed * 1000003 + s`); refused with "
                           "`optimizer.name: lbfgs`")
    seed: Seed | None = Field(None, description="seed of the training samples; null: the "
                              "run's `seed`")
    test_seed: Seed | None = Field(None, description="seed of the test samples; null: the "
                                   "run's `seed` + 10007")


class DigitsData(_Strict):
    """scikit-learn's 8x8 digits (`nodekit.data.digits`; task `classification`),
    split stratified with `test_fraction` by `seed` (default the run's seed)."""

    name: Literal["digits"] = Field("digits", description="the data set: scikit-learn's "
                                    "8x8 images of handwritten digits, 10 classes (task "
                                    "`classification`)")
    test_fraction: Fraction = Field(0.2, description="the fraction of the images held out "
                                    "for evaluation (stratified by class)")
    seed: Seed | None = Field(None, description="seed of the split; null: the run's `seed`")


class AnodeG1DData(_Strict):
    """ANODE's 1-D map `g(1) = -1`, `g(-1) = 1` (`nodekit.data.anode_g1d`): two points,
    trained and evaluated on both (task `classification`)."""

    name: Literal["anode_g1d"] = Field("anode_g1d", description="the data set: the two "
                                       "points of ANODE's 1-D map, `g(1) = -1` and "
                                       "`g(-1) = 1` (task `classification`; "
                                       "`train.batch_size` at most 2)")


class ConcentricSpheresData(_Strict):
    """ANODE's concentric spheres (`nodekit.data.concentric_spheres`; task
    `classification`): `n` points, labels -1 inside radius `r1` and +1 between `r2`
    and `r3`, split stratified with `test_fraction`; `seed` (default the run's seed)
    draws the points and the split."""

    name: Literal["concentric_spheres"] = Field(
        "concentric_spheres", description="the data set: ANODE's concentric spheres, a "
        "ball labelled -1 inside a shell labelled +1 (task `classification`)")
    n: PosInt = Field(1000, ge=2, le=10_000_000, description="points in all, before the "
                      "split")
    dim: PosInt = Field(2, le=4096, description="dimension of the points")
    r1: PosFloat = Field(0.5, le=1e6, description="radius of the inner ball (label -1)")
    r2: PosFloat = Field(1.0, le=1e6, description="inner radius of the shell (label +1); "
                         "`r1 < r2 < r3` leaves a gap between ball and shell")
    r3: PosFloat = Field(1.5, le=1e6, description="outer radius of the shell")
    test_fraction: Fraction = Field(0.2, description="the fraction of the points held out "
                                    "for evaluation (stratified by label)")
    seed: Seed | None = Field(None, description="seed of the points and the split; null: "
                              "the run's `seed`")

    @model_validator(mode="after")
    def _radii(self):
        if not self.r1 < self.r2 < self.r3:
            raise ConfigError("r2", f"the radii must satisfy r1 < r2 < r3 (ball, gap, shell), "
                                    f"got {self.r1}, {self.r2}, {self.r3}.")
        return self


class LatentSpiralsData(_Strict):
    """Irregularly observed noisy spirals (`nodekit.data.latent_spirals`; task
    `latent`). Models train on the observation window (the first `obs_fraction` of the
    grid); evaluation reconstructs the window and extrapolates the rest."""

    name: Literal["latent_spirals"] = Field(
        "latent_spirals", description="the data set: irregularly observed noisy spirals "
        "(task `latent`)")
    n_samples: PosInt = Field(1000, ge=2, le=10_000_000, description="spirals in all, "
                              "before the split")
    n_points: PosInt = Field(100, ge=2, le=100_000, description="points of each spiral's "
                             "time grid on `[0, t_max]`")
    n_obs: PosInt = Field(30, description="observed time points per spiral, distinct and "
                          "drawn at random (differently for each spiral) from the "
                          "observation window; at most `obs_fraction * n_points`")
    noise_std: float = Field(0.1, ge=0, le=1e6, description="standard deviation of the "
                             "Gaussian noise on the observations")
    t_max: float = Field(2 * math.pi, ge=1e-3, le=1e4, description="end time of the grid")
    obs_fraction: float = Field(0.5, gt=0, le=1, description="the first fraction of the "
                                "grid that is observed (the window models train on); "
                                "evaluation also extrapolates over the rest")
    test_fraction: Fraction = Field(0.2, description="the fraction of the spirals held out "
                                    "for evaluation")
    seed: Seed | None = Field(None, description="seed of the spirals, their observation "
                              "times and noise, and the split; null: the run's `seed`")

    @model_validator(mode="after")
    def _fits(self):
        window = int(round(self.obs_fraction * self.n_points))
        if self.n_obs > window:
            raise ConfigError("n_obs", f"got {self.n_obs}: at most the {window} time points "
                                       f"of the observation window (obs_fraction x n_points).")
        return self


class LotkaVolterraData(_Strict):
    """The UDE paper's noisy Lotka–Volterra trajectory (`nodekit.data.lotka_volterra`;
    task `ude`): `n_obs` observations on `[0, t1]`, relative noise `noise`, noise drawn
    with `seed` (default the run's seed). The initial state `y0` is known."""

    name: Literal["lotka_volterra"] = Field(
        "lotka_volterra", description="the data set: the UDE paper's noisy Lotka-Volterra "
        "trajectory (task `ude`; one trajectory, so `train.batch_size: 1`)")
    alpha: PosFloat = Field(1.3, le=1e3, description="prey growth rate of the true system "
                            "`dx/dt = alpha x - beta x y`, `dy/dt = gamma x y - delta y`")
    beta: PosFloat = Field(0.9, le=1e3, description="predation rate (the `-beta x y` term)")
    gamma: PosFloat = Field(0.8, le=1e3, description="predator growth per prey eaten (the "
                            "`gamma x y` term)")
    delta: PosFloat = Field(1.8, le=1e3, description="predator death rate (the `-delta y` "
                            "term)")
    y0: list[PosFloat] = Field(default_factory=lambda: [0.44249296, 4.6280594],
                               description="the known initial state `[prey, predator]`, two "
                               "positive numbers")
    t1: float = Field(3.0, ge=1e-3, le=1e3, description="end time of the observed "
                      "trajectory, which starts at `t = 0`")
    n_obs: PosInt = Field(31, ge=2, le=100_000, description="observations, evenly spaced "
                          "on `[0, t1]`")
    noise: float = Field(0.05, ge=0, le=1e3, description="relative noise: Gaussian noise "
                         "whose standard deviation is this times the clean coordinate's "
                         "mean over the trajectory is added to each observation")
    seed: Seed | None = Field(None, description="seed of the noise; null: the run's `seed`")

    @field_validator("y0")
    @classmethod
    def _two(cls, v):
        if len(v) != 2:
            raise ValueError(f"must be two positive numbers (prey, predator), got {len(v)}")
        return v


class FileData(_Strict):
    """The user's own data file (`.csv` or `.npz`, by extension), `path` relative to
    the config file's folder (a config given as a dict: the current directory).

    - Trajectories (tasks `trajectory`, `latent`, `ude`): a CSV with a `time` column,
      `state` columns (default: every other column) and optionally a `series` column
      naming the trajectory each row belongs to; or an NPZ with `t` of shape `(T,)` or
      `(N, T)`, `y` of shape `(N, T, D)` and optionally `mask` (`(N, T, D)` or
      `(N, T)`, 1 where observed). Times increase within a series and may be
      irregular; empty cells (CSV) or `mask` (NPZ) are allowed for `latent` only.
    - Samples (task `density`): a CSV of `state` columns (default: all), or an NPZ
      with `x` of shape `(N, D)`.
    - Labelled examples (task `classification`): an NPZ with `x` (`(N, D)` vectors or
      `(N, C, H, W)` images) and `y` (`(N,)` integer classes, or ±1 targets).

    The file is split at random into training, validation and test parts
    (`val_fraction`, `test_fraction`, `seed`) and, by default, standardised
    (`normalise`).
    """

    name: Literal["file"] = Field("file", description="your own data file (every task)")
    path: str = Field(description="the `.csv` or `.npz` file (the type is read from the "
                      "extension), relative to the config file's folder; the "
                      "classification task reads `.npz` only")
    time: str = Field("t", description="the CSV's time column (trajectories); an NPZ holds "
                      "its times in the array `t`")
    state: list[str] | None = Field(
        None, description="the CSV's state columns, in order (default: every column but "
        "`time` and `series`); for an NPZ, names for the coordinates of `y` (or of `x`, "
        "density), one per coordinate. Used in messages, plots and the sparse regression's "
        "terms")
    series: str | None = Field(
        None, description="the CSV column whose values tell the trajectories apart (any "
        "text; times increase within each series); null: the file is one trajectory. An "
        "NPZ holds its series along the first axis of `y`. Not for the density and "
        "classification tasks")
    batch_time: int | None = Field(
        None, ge=2, le=1_000_000, description="task `trajectory` only: consecutive "
        "observations per training segment, each solved from its first point (default "
        "10; every training series needs at least this many points). The other tasks "
        "solve whole series and refuse it")
    val_fraction: Fraction = Field(
        0.0, description="the fraction of the series (or samples, or examples) held out "
        "at random for validation: periodic evaluation then uses it, and the test part, if "
        "any, is evaluated once at the end (`test_loss` in `summary.json`)")
    test_fraction: Fraction = Field(
        0.0, description="the fraction held out at random for testing; periodic "
        "evaluation uses it when there is no validation part. With neither, evaluation "
        "uses the training data. `val_fraction + test_fraction` must be below 1")
    seed: Seed | None = Field(None, description="seed of the random split; null: the run's "
                              "`seed`")
    normalise: bool | None = Field(
        None, description="standardise each state coordinate (or input feature) by the "
        "training part's mean and standard deviation (saved as `normalisation.json` in the "
        "workdir); null: on, except for a `python` field or the ude task, which work in "
        "the data's own units (true is refused with a `python` field or `model.physics`)")

    @field_validator("path")
    @classmethod
    def _resolved(cls, v, info):
        if not v.strip():
            raise ValueError("must name a .csv or .npz file")
        suffix = Path(v).suffix.lower()
        if suffix not in DATA_FILE_TYPES:
            raise ValueError(f"must end in {' or '.join(DATA_FILE_TYPES)} (the file type "
                             "is read from the extension)")
        return _resolve(v, info)

    @field_validator("state")
    @classmethod
    def _columns(cls, v):
        if v is not None:
            if not v:
                raise ValueError("must name at least one column (or leave it out: every "
                                 "column but time and series)")
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"names column {dup[0]!r} twice")
        return v

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("val_fraction", f"val_fraction + test_fraction must be below 1 "
                                              f"(got {self.val_fraction} + {self.test_fraction}): "
                                              "something must be left to train on.")
        return self


_DATA_CLASSES = (SpiralData, Toy2DData, DigitsData, AnodeG1DData, ConcentricSpheresData,
                 LatentSpiralsData, LotkaVolterraData, FileData)
DataConfig = Annotated[Union[_DATA_CLASSES], Field(discriminator="name")]
_DATA_MODELS = {m.model_fields["name"].default: m for m in _DATA_CLASSES}
_DATA_MODELS["file"] = FileData
#: The data each task reads by default (kept for older callers).
_TASK_DATA = {task: names[0] for task, names in TASK_DATA.items()}


# ----------------------------------------------------------------- regularisation


def _weight_shorthand(v):
    """`kinetic: 0.01` means `kinetic: {weight: 0.01}`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"weight": v}
    return v


class KineticConfig(_Strict):
    """Kinetic energy penalty: weight * integral of ||f(t, y)||^2 dt (RNODE)."""

    weight: float = Field(ge=0, description="the penalty's weight in the loss (loss = task "
                          "loss + weight * integral); `kinetic: 0.01` is short for "
                          "`kinetic: {weight: 0.01}`")


class JacobianConfig(_Strict):
    """Jacobian Frobenius penalty: weight * integral of ||df/dy||_F^2 dt (RNODE)."""

    weight: float = Field(ge=0, description="the penalty's weight in the loss; "
                          "`jacobian: 0.01` is short for `jacobian: {weight: 0.01}`")
    estimator: Literal["exact", "hutchinson"] = Field(
        "hutchinson", description="`hutchinson` (the unbiased one-sample estimate "
        "`||J eps||^2`, one Jacobian-vector product whatever the state size; refused with "
        "`optimizer.name: lbfgs`) or `exact` (the full Jacobian, one product per state "
        "dimension: for small states)")
    noise: Literal["gaussian", "rademacher"] = Field(
        "gaussian", description="distribution of the Hutchinson noise vector `eps`, drawn "
        "once per solve (Rademacher: lower variance). The density task uses `model.cnf`'s "
        "noise vector instead")


class TaylorConfig(_Strict):
    """Taylor-mode penalty R_K: weight * integral of ||d^K y/dt^K||^2 dt (TayNODE)."""

    weight: float = Field(ge=0, description="the penalty's weight in the loss; "
                          "`taylor: 0.01` is short for `taylor: {weight: 0.01}`")
    order: int = Field(2, ge=2, le=8, description="`K`, the order of the time derivative "
                       "penalised (TayNODE uses 2 or 3); the cost grows with it")
    method: Literal["jet", "jvp"] = Field(
        "jet", description="how the time derivatives are taken: `jet` (order 2 from the "
        "linearisation the field evaluation already makes; orders 3 and up by Taylor-mode "
        "AD, cost about quadratic in `order`) or `jvp` (nested Jacobian-vector products, "
        "cost exponential in `order`: a cross-check, and the way out where `jet` lacks a "
        "rule for an operation of your field)")


class SteerConfig(_Strict):
    """STEER: each training solve ends at a time drawn uniformly from [T - width, T + width]."""

    width: PosFloat = Field(description="half-width `b` of the interval the end time is "
                            "drawn from, `[t1 - b, t1 + b]`; below `model.cnf.t1`")


class RegularisationConfig(_Strict):
    """Penalties that keep learned dynamics easy to solve; each is off unless given.
    The `trajectory`, `density` and `ude` tasks integrate them along the training solves
    (`quadrature`; see `nodekit.regularised_odeint`) and add `weight * integral` to the
    loss; STEER applies to `density` only.
    """

    kinetic: KineticConfig | None = Field(
        None, description="kinetic energy penalty, weight * integral of ||f(t, y)||^2 dt "
        "(RNODE): favours straight, constant-speed trajectories; null: off")
    jacobian: JacobianConfig | None = Field(
        None, description="Jacobian Frobenius penalty, weight * integral of "
        "||df/dy||_F^2 dt (RNODE): less stiff dynamics; null: off")
    taylor: TaylorConfig | None = Field(
        None, description="Taylor-mode penalty, weight * integral of ||d^K y/dt^K||^2 dt "
        "(TayNODE): dynamics an adaptive solver integrates in few steps; null: off")
    steer: SteerConfig | None = Field(
        None, description="STEER: each training solve ends at a random time near the end "
        "time; evaluation uses the fixed one (density task only); null: off")
    quadrature: Literal["trapezoid", "augmented"] = Field(
        "trapezoid", description="how the penalties' integrals are taken along the solve: "
        "`trapezoid` (the integrands once per solver step, on the steps of the "
        "unregularised solve; kinetic energy alone comes free from the stages) or "
        "`augmented` (running integrals in the ODE state, at every stage and under error "
        "control, as RNODE's and TayNODE's code; several times dearer)")

    _short = field_validator("kinetic", "jacobian", "taylor", mode="before")(_weight_shorthand)


# ----------------------------------------------------------------- sweeps


#: Most members one sweep may have (grid points x seeds).
MAX_SWEEP_MEMBERS = 10_000
#: Keys a sweep cannot vary: the sweep's own settings, where it runs, and what every
#: member must share to train as one program (`nodekit.sweep`).
UNSWEPT_KEYS = ("sweep", "distributed", "train.devices", "train.progress",
                "train.compile_cache")


class SweepConfig(_Strict):
    """A sweep (`nodekit sweep CONFIG`, `nodekit.sweep`): every combination of the
    `grid`'s values, each trained with `seeds` seeds, each member a run of the config
    with those values set.

    The section belongs to `nodekit sweep`; `nodekit train` refuses a config holding
    it, and `nodekit validate` checks every member.
    """

    grid: dict[str, list[Any]] = Field(
        {}, description="dotted config keys (as `--set` takes them) to lists of values; "
        "every combination is a member, e.g. `{optimizer.learning_rate: [1.0e-3, "
        "3.0e-3], regularisation.kinetic: [0.0, 0.01]}` is 4 members. `nodekit sweep "
        "--grid` adds keys or replaces them. Not sweepable: "
        + ", ".join(f"`{k}`" for k in UNSWEPT_KEYS))
    seeds: PosInt = Field(1, le=MAX_SWEEP_MEMBERS, description="seeds per grid point: the "
                          "config's `seed`, `seed + 1`, ... (`--seeds` overrides it); 1 "
                          "when the grid varies `seed` itself. At most "
                          f"{MAX_SWEEP_MEMBERS} members (grid points x seeds) in all")

    _raw: dict | None = PrivateAttr(None)  # the base config's raw data (members start there)

    @field_validator("grid")
    @classmethod
    def _keys_and_values(cls, v):
        for key, values in v.items():
            parts = key.split(".")
            if not all(p.strip() == p and p for p in parts):
                raise ConfigError(key, "must be a dotted config key, e.g. "
                                                 "optimizer.learning_rate.")
            fixed = next((u for u in UNSWEPT_KEYS if key == u or key.startswith(u + ".")), None)
            if fixed is not None:
                raise ConfigError(key, f"{fixed} cannot be swept: every member of a "
                                                 "sweep shares it; set it for the whole sweep.")
            if not values:
                raise ConfigError(key, "give at least one value.")
            _check_plain_values(values, key)
            dup = next((x for i, x in enumerate(values) if x in values[:i]), None)
            if dup is not None:
                raise ConfigError(key, f"lists {dup!r} twice; give each value once.")
        return v

    @model_validator(mode="after")
    def _size(self):
        if "seed" in self.grid and self.seeds != 1:
            raise ConfigError("seeds", f"got {self.seeds}, and grid.seed lists seeds too; give "
                                       "the seeds in one place.")
        n = self.seeds
        for values in self.grid.values():
            n *= len(values)
        if n > MAX_SWEEP_MEMBERS:
            raise ConfigError("grid", f"{n} members (grid points x seeds): at most "
                                      f"{MAX_SWEEP_MEMBERS}; split the sweep.")
        return self


# ----------------------------------------------------------------- the run


#: Which tasks take which field types, and which tasks integrate regularisers.
_FIELD_TYPES = {
    "trajectory": ("mlp", "second_order", "python"),
    "density": ("mlp", "python"),
    "classification": ("mlp",),
    "latent": ("mlp",),
    "ude": ("mlp", "second_order", "python"),
}
_REGULARISED_TASKS = ("trajectory", "density", "ude")
#: Each task's own model section.
_MODEL_SECTIONS = {"cnf": ("density",), "classifier": ("classification",),
                   "latent": ("latent",), "physics": ("ude",), "sparse_regression": ("ude",)}


class Config(_Strict):
    """A whole training run. Sections: `data`, `model`, `solver`, `regularisation`,
    `optimizer`, `train`, `distributed`, plus `seed`, `task` and `precision`.

    Paths in the config are absolute once validated (resolved against the config
    file's folder; see `nodekit.load_config`); `base_dir` is that folder.

    **Example:**

    ```python
    import nodekit

    cfg = nodekit.load_config("spiral", ["train.steps=100"])
    print(cfg.solver.name, cfg.hash())
    ```
    """

    seed: Seed = Field(0, description="the run's seed: initial weights (unless "
                       "`model.init_seed`), training keys and batches, and the generated "
                       "data and splits (unless `data.seed`)")
    task: _names(TASK_NAMES) = Field(
        "trajectory", description="what is learned: `trajectory` (fit a neural ODE to "
        "observed trajectories), `density` (a continuous normalising flow on samples), "
        "`classification` (ODE-Net, ANODE or a ResNet on labelled examples), `latent` (a "
        "latent ODE on irregular series with missing values), or `ude` (known physics plus "
        "a neural term). It decides which `data` and `model` sections apply")
    precision: Literal["float32", "float64"] = Field(
        "float32", description="floating-point precision of the data, model and solves; "
        "`float64` runs in JAX's 64-bit mode for this run only")
    data: DataConfig = Field(
        default_factory=SpiralData, description="what to train on, chosen by `data.name`: "
        "a generated data set of the task, or `file` for your own (see the tables below); "
        "default the task's own data set")
    model: ModelConfig = Field(ModelConfig(), description="the model: its vector field and "
                               "the task's own sub-section")
    solver: SolverConfig = Field(SolverConfig(), description="how the ODEs are solved and "
                                 "differentiated")
    regularisation: RegularisationConfig = Field(
        RegularisationConfig(), description="penalties on the dynamics (trajectory, density "
        "and ude tasks); all off by default")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="the optimiser, "
                                       "learning rate and schedule")
    train: TrainConfig = Field(TrainConfig(), description="the training loop: steps, batch "
                               "size, cadences, guards, outputs, devices")
    distributed: DistributedConfig = Field(DistributedConfig(), description="multi-host "
                                           "start-up; off by default")

    _base_dir: Path | None = PrivateAttr(None)
    _sweep: SweepConfig | None = PrivateAttr(None)

    @property
    def sweep(self) -> SweepConfig | None:
        """The config's `sweep:` section (for `nodekit sweep`), or `None`. Not part of
        `to_dict()` or the hash: each member's resolved config is a plain run's."""
        return self._sweep

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths were resolved against (the config file's folder,
        or the current directory for a config given as a dict); not part of the hash."""
        return self._base_dir

    def __eq__(self, other) -> bool:
        """Configs are equal when they say the same (their resolved keys); where they
        were read from (`base_dir`) does not count."""
        if not isinstance(other, Config):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable (validate_assignment): not hashable, as pydantic models

    @property
    def data_seed(self) -> int:
        """The seed of the data's random parts: `data.seed` when given, else `seed`."""
        s = getattr(self.data, "seed", None)
        return self.seed if s is None else s

    # -- cross-section rules (each raises ConfigError naming the key path)

    @model_validator(mode="after")
    def _rules(self):
        _check_task_sections(self)
        _check_file_data(self)
        _check_regularisation(self)
        _check_batch_sizes(self)
        _check_batch_order(self)
        _check_devices(self)
        _check_lbfgs_loss(self)
        _check_engine(self)
        return self

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
        if d["model"].get("init_seed") is None:  # (unset: the hash of configs before the key)
            d["model"].pop("init_seed", None)
        if self.train.batch_order == "random":  # (epochs, the default, leaves the hash as it was)
            d["train"]["batch_order"] = "random"
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _set(model: BaseModel, name: str, value) -> None:
    """Fill a field inside an after-validator (no re-validation, no recursion)."""
    object.__setattr__(model, name, value)


def _check_task_sections(cfg: Config) -> None:
    task, m, d = cfg.task, cfg.model, cfg.data
    if d.name not in TASK_DATA[task]:
        raise ConfigError("data.name", f"got {d.name!r}: task {task!r} reads "
                                       f"{' or '.join(map(repr, TASK_DATA[task]))} data.")
    for section, tasks in _MODEL_SECTIONS.items():
        if getattr(m, section) is not None and task not in tasks:
            raise ConfigError(f"model.{section}", f"belongs to task {tasks[0]!r}, but this "
                                                  f"config's task is {task!r}; remove it.")
    defaults = {"density": ("cnf", CNFConfig), "classification": ("classifier", ClassifierConfig),
                "latent": ("latent", LatentConfig)}
    if task in defaults and getattr(m, defaults[task][0]) is None:
        _set(m, defaults[task][0], defaults[task][1]())
    if m.field.type not in _FIELD_TYPES[task]:
        raise ConfigError("model.field.type", f"got {m.field.type!r}: task {task!r} takes "
                                              f"{', '.join(map(repr, _FIELD_TYPES[task]))}.")
    if m.augment_dim:
        anode = task == "classification" and m.classifier.type in ("anode", "auto") and \
            d.name != "digits"
        if not (task == "trajectory" and m.field.type != "python") and not anode:
            raise ConfigError("model.augment_dim", f"got {m.augment_dim}: augmented dimensions "
                                                   "are for the trajectory task's MLP fields and "
                                                   "the classification task's anode model.")
    if task == "classification":
        _check_classifier(cfg)


def _check_classifier(cfg: Config) -> None:
    c, name = cfg.model.classifier, cfg.data.name
    images = name == "digits"
    vectors = name in ("anode_g1d", "concentric_spheres")
    if images and c.type == "anode":
        raise ConfigError("model.classifier.type", "got 'anode': the digits are images; use "
                                                   "'odenet' or 'resnet' (or 'auto').")
    if vectors and c.type in ("odenet", "resnet"):
        raise ConfigError("model.classifier.type", f"got {c.type!r}: {name} holds vectors; "
                                                   "use 'anode' (or 'auto').")
    if c.readout == "none":
        if c.type in ("odenet", "resnet") or images:
            raise ConfigError("model.classifier.readout", "got 'none': only the anode model "
                                                          "on vectors can read its prediction "
                                                          "off the state.")
        if c.loss == "cross_entropy":
            raise ConfigError("model.classifier.readout", "got 'none' with loss "
                                                          "'cross_entropy': the state's first "
                                                          "coordinate is one number; use loss "
                                                          "'mse' (±1 targets).")
    if images and c.loss == "mse":
        raise ConfigError("model.classifier.loss", "got 'mse': the digits have integer "
                                                   "classes; use 'cross_entropy' (or 'auto').")
    if vectors and c.loss == "cross_entropy":
        raise ConfigError("model.classifier.loss", f"got 'cross_entropy': {name} has ±1 "
                                                   "targets; use 'mse' (or 'auto').")


def _check_file_data(cfg: Config) -> None:
    d, task, f = cfg.data, cfg.task, cfg.model.field
    if d.name != "file":
        return
    physics = task == "ude" and cfg.model.physics is not None
    if d.normalise is None:
        _set(d, "normalise", not (f.type == "python" or task == "ude"))
    elif d.normalise and (f.type == "python" or physics):
        what = "model.field.type 'python'" if f.type == "python" else "model.physics"
        raise ConfigError("data.normalise", f"got true, but {what} works in the data's own "
                                            "units; set data.normalise: false.")
    if task == "trajectory":
        if d.batch_time is None:
            _set(d, "batch_time", 10)
    elif d.batch_time is not None:
        raise ConfigError("data.batch_time", f"only for task 'trajectory' (segments of a "
                                             f"trajectory); task {task!r} uses whole series.")
    if task in ("density", "classification") and d.series is not None:
        raise ConfigError("data.series", f"only for trajectories; task {task!r} reads "
                                         f"{'samples' if task == 'density' else 'examples'}.")
    if task == "classification" and Path(d.path).suffix.lower() != ".npz":
        raise ConfigError("data.path", f"got {Path(d.path).name!r}: the classification task "
                                       "reads an .npz file holding x (inputs) and y (labels).")


def _check_regularisation(cfg: Config) -> None:
    reg, task = cfg.regularisation, cfg.task
    if task not in _REGULARISED_TASKS:
        for name in ("kinetic", "jacobian", "taylor", "steer"):
            if getattr(reg, name) is not None:
                raise ConfigError(f"regularisation.{name}", f"task {task!r} does not integrate "
                                                            "regularisers; the trajectory, "
                                                            "density and ude tasks do.")
    if reg.steer is not None:
        if task != "density":
            raise ConfigError("regularisation.steer", "STEER perturbs the end time of a solve, "
                                                      f"but the {task} task's loss uses every "
                                                      "save time; use it with the density task.")
        if reg.steer.width >= cfg.model.cnf.t1:
            raise ConfigError("regularisation.steer.width",
                              f"got {reg.steer.width}: must be below model.cnf.t1 "
                              f"({cfg.model.cnf.t1}) so that every end time is positive.")


def _check_batch_sizes(cfg: Config) -> None:
    """Batch sizes that the generated data sets cannot fill (the user's files are
    checked when the task reads them)."""
    d, bs = cfg.data, cfg.train.batch_size
    if d.name == "spiral" and bs > d.n_points - d.batch_time:
        raise ConfigError("train.batch_size", f"got {bs}: at most n_points - batch_time = "
                                              f"{d.n_points - d.batch_time} distinct segments exist.")
    if d.name == "toy2d" and not d.resample and bs > d.n_train:
        raise ConfigError("train.batch_size", f"got {bs}: at most data.n_train ({d.n_train}).")
    if d.name == "anode_g1d" and bs > 2:
        raise ConfigError("train.batch_size", f"got {bs}: anode_g1d has 2 points.")
    if d.name == "lotka_volterra" and bs > 1:
        raise ConfigError("train.batch_size", f"got {bs}: lotka_volterra is one trajectory; "
                                              "set train.batch_size: 1.")


def _check_batch_order(cfg: Config) -> None:
    if cfg.train.batch_order is not None and cfg.task in ("trajectory", "density"):
        raise ConfigError("train.batch_order", f"task {cfg.task!r} draws each batch at random "
                                               "(segments or samples); batch_order is for the "
                                               "classification, latent and ude tasks: remove it.")


def _check_devices(cfg: Config) -> None:
    """A batch that a count of devices cannot share evenly (the count of devices this
    machine has is checked when the task is built, `nodekit.tasks.make_task`)."""
    n, bs = cfg.train.devices, cfg.train.batch_size
    if isinstance(n, int) and bs % n:
        raise ConfigError("train.batch_size", f"got {bs}: must be divisible by the {n} "
                                              "devices of train.devices.")


def _full_batch(cfg: Config) -> int | None:
    """The whole training set's batch size, where the config alone decides it."""
    d = cfg.data
    return {"spiral": lambda: d.n_points - d.batch_time, "toy2d": lambda: d.n_train,
            "anode_g1d": lambda: 2, "lotka_volterra": lambda: 1}.get(d.name, lambda: None)()


def _check_lbfgs_loss(cfg: Config) -> None:
    """`lbfgs` needs the same deterministic loss at every step: its curvature memory
    pairs gradients of consecutive steps, and its line search assumes the function it
    measured is the one it then minimises. Refuse, naming the key, a run whose loss
    changes from step to step (minibatches, Hutchinson noise, STEER's random end time,
    fresh samples, a posterior sample). Full-batch sizes of the user's files are
    checked when the task reads them."""
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
    if cfg.data.name == "toy2d" and cfg.data.resample:
        raise ConfigError("data.resample", f"got true: {why}, but a fresh batch is drawn "
                          "each step. Set data.resample: false with lbfgs.")
    if cfg.task == "latent" and cfg.model.latent.type == "latent_ode":
        raise ConfigError("optimizer.name", f"got 'lbfgs': {why}, but the latent ODE's "
                          "ELBO draws a posterior sample each step; train it with adam.")
    full = _full_batch(cfg)
    if full is not None and cfg.train.batch_size != full:
        raise ConfigError("train.batch_size", f"got {cfg.train.batch_size}: {why}, so the "
                          f"batch must be the whole training set: set train.batch_size={full} "
                          "(or train with adam on minibatches).")


def _check_engine(cfg: Config) -> None:
    """`solver.engine: nodekit` with settings the engine cannot run is a config error
    (the state-size budget is checked when the model is solved)."""
    s, reg = cfg.solver, cfg.regularisation
    if s.engine != "nodekit":
        return
    import numpy as np

    from .._errors import InputError
    from .._odeint import engine_for

    regularised = any(x is not None for x in (reg.kinetic, reg.jacobian, reg.taylor))
    try:
        engine_for(s.engine, solver=s.name, adjoint=s.adjoint, dt0=s.dt0,
                   integrals="trapezoid" if regularised else None, checkpoints=s.checkpoints,
                   max_steps=s.max_steps, y0=np.zeros((1,), np.float32))
    except InputError as e:
        raise ConfigError("solver.engine", str(e)) from None


# message kinds of the name fields
NAME_KINDS.update({
    ("SolverConfig", "name"): "solver", ("SolverConfig", "adjoint"): "adjoint",
    ("SolverConfig", "engine"): "engine", ("SolverConfig", "batch_mode"): "batch mode",
    ("TrainConfig", "eval_batch_mode"): "batch mode",
    ("OptimizerConfig", "name"): "optimizer", ("OptimizerConfig", "schedule"): "schedule",
    ("FieldConfig", "activation"): "activation", ("Toy2DData", "distribution"): "toy density",
    ("Config", "task"): "task", ("LatentConfig", "encoder"): "encoder",
})
