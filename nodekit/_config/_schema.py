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

    type: Literal["mlp", "second_order", "python"] = "mlp"
    width: PosInt = Field(64, le=65536)
    depth: NonNegInt = Field(2, le=64)
    activation: _names(ACTIVATIONS) = "tanh"
    time_dependent: bool = False
    input_power: PosInt = Field(1, le=9)
    target: str | None = None
    path: str | None = None
    kwargs: dict[str, Any] = {}

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
    """The known physics of a universal differential equation (task `ude`).

    `type: lotka_volterra` is the UDE paper's prey growth and predator decay
    `(alpha x, -delta y)` (`kwargs`: `alpha`, `delta`; default the data's rates);
    `type: python` imports `target` (`"module:Name"`) like `model.field` and calls it
    with `kwargs`: it must return an Equinox module `f(t, y, args)`. With
    `learnable: false` (default) its array fields stay fixed; `true` fits them too.
    """

    type: Literal["lotka_volterra", "python"] = "python"
    target: str | None = None
    path: str | None = None
    kwargs: dict[str, Any] = {}
    learnable: bool = False

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

    degree: PosInt = Field(2, le=5)
    threshold: float = Field(0.1, ge=0)
    iterations: PosInt = Field(10, le=1000)


class CNFConfig(_Strict):
    """The continuous normalising flow of the `density` task (FFJORD)."""

    t1: PosFloat = Field(1.0, le=1e6)
    trace: Literal["exact", "hutchinson"] = "exact"
    noise: Literal["gaussian", "rademacher"] = "gaussian"


class ClassifierConfig(_Strict):
    """The model of the `classification` task.

    - `type`: `odenet` (Chen et al.'s ODE-Net on images: a downsampling stem, one ODE
      block of a convolutional field with `model.field.width` channels, a head),
      `resnet` (the same stem and head with `num_blocks` residual blocks), `anode` (a
      neural ODE on vectors, augmented by `model.augment_dim` zeros, with the MLP field
      of `model.field`), or `auto` (`odenet` for images, `anode` for vectors).
    - `t1`: the ODE block's end time.
    - `readout`: `linear` (a learned map of the final state), or `none` (the first
      coordinate of the final state is the prediction, as Dupont et al.'s 1-D example;
      `anode` with `loss: mse` only).
    - `loss`: `cross_entropy` (integer classes), `mse` (targets of ±1, as Dupont et
      al.), or `auto` (from the labels).
    """

    type: Literal["auto", "odenet", "resnet", "anode"] = "auto"
    t1: PosFloat = Field(1.0, le=1e6)
    num_blocks: PosInt = Field(6, le=1024)
    readout: Literal["linear", "none"] = "linear"
    loss: Literal["auto", "cross_entropy", "mse"] = "auto"


class LatentConfig(_Strict):
    """The model of the `latent` task: a latent ODE (Rubanova et al. 2019) with an
    `ode_rnn` or `gru` encoder, or the `rnn` baseline (a time-aware GRU encoder and
    decoder). The latent field and the ODE-RNN's field are MLPs of `model.field`'s
    width, depth and activation; the RNN's readout has `model.field.width` units. The
    loss is the negative ELBO (the RNN: the Gaussian negative log-likelihood) with
    observation noise `obs_std` and KL weight `kl_weight`."""

    type: Literal["latent_ode", "rnn"] = "latent_ode"
    encoder: _names(ENCODERS) = "ode_rnn"
    latent_size: PosInt = Field(4, le=4096)
    hidden_size: PosInt = Field(25, le=65536)
    decoder_width: PosInt = Field(20, le=65536)
    decoder_depth: NonNegInt = Field(1, le=64)
    obs_std: PosFloat = 0.3
    kl_weight: float = Field(1.0, ge=0)


class ModelConfig(_Strict):
    """The model. `field` and `augment_dim` are shared; `cnf` (density),
    `classifier` (classification), `latent` (latent), `physics` and
    `sparse_regression` (ude) belong to one task each and are filled with their
    defaults for that task. `init_seed` fixes the initial weights on their own: they
    are drawn with `jax.random.PRNGKey(init_seed)` instead of a key split from the
    run's `seed` (which still draws the training keys), e.g. to start from the same
    weights as a model built in Python with that key."""

    field: FieldConfig = FieldConfig()
    augment_dim: NonNegInt = Field(0, le=4096)
    init_seed: Seed | None = Field(
        None, description="seed of the initial weights, jax.random.PRNGKey(init_seed) "
        "(default: a key split from the run's seed)")
    cnf: CNFConfig | None = None
    classifier: ClassifierConfig | None = None
    latent: LatentConfig | None = None
    physics: PhysicsConfig | None = None
    sparse_regression: SparseRegressionConfig | None = None


class SolverConfig(_Strict):
    name: _names(SOLVERS) = "tsit5"
    rtol: PosFloat = 1e-6
    atol: PosFloat = 1e-8
    dt0: PosFloat | None = None
    adjoint: _names(ADJOINTS) = "recursive"
    max_steps: PosInt = Field(4096, le=10_000_000)
    batch_mode: _names(BATCH_MODES) = "vmap"
    checkpoints: Union[PosInt, Literal["auto"], None] = Field(
        "auto", description="solver steps the recursive adjoint stores: 'auto' (the "
        "engine's ~2 sqrt(max_steps) states; on Diffrax every step when they fit in 16 MiB), "
        "null (Diffrax's log2(max_steps)), or a count (Diffrax)")
    engine: _names(ENGINES) = Field(
        "auto", description="who integrates: 'auto' (nodekit's Runge-Kutta engine for "
        "adaptive dopri5/tsit5 with the recursive adjoint, else Diffrax), 'diffrax' (opt "
        "out), or 'nodekit' (refuse settings the engine cannot run)")

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
    terms in the loss (see `Config`).
    """

    name: _names(OPTIMIZERS) = "adam"
    learning_rate: PosFloat = 1e-3
    schedule: _names(SCHEDULES) = "constant"
    warmup_steps: NonNegInt = 0
    decay_rate: float = Field(0.1, gt=0, le=1)
    clip_norm: PosFloat | None = None
    weight_decay: float = Field(0.0, ge=0)
    kwargs: dict[str, float] = {}

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
    steps: PosInt = Field(1000, le=100_000_000)
    batch_size: PosInt = Field(32, le=1_000_000)
    log_every: PosInt = Field(1, le=100_000_000)
    eval_every: PosInt = Field(100, le=100_000_000)
    eval_batch_mode: _names(BATCH_MODES) | None = Field(
        None, description="batch mode of the evaluation solves (default solver.batch_mode)")
    checkpoint_every: PosInt = Field(100, le=100_000_000)
    batch_order: Literal["epochs", "random"] | None = Field(
        None, description="how a classification, latent or ude task draws batches from its "
        "training set: epochs (default: each epoch a random permutation, every item once) "
        "or random (each step's batch drawn anew, without replacement, by "
        "numpy.random.default_rng(seed * 2**32 + step))")
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


# ----------------------------------------------------------------- data


class SpiralData(_Strict):
    """The torchdiffeq `ode_demo` spiral: dy/dt = (y**3) A (task `trajectory`)."""

    name: Literal["spiral"] = "spiral"
    n_points: PosInt = Field(1000, ge=20, le=1_000_000)
    t1: float = Field(25.0, ge=1e-3, le=1e4)
    batch_time: PosInt = Field(10, ge=2)
    noise: float = Field(0.0, ge=0, le=1e6)

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
    """FFJORD's toy 2-D densities (`nodekit.data.sample_toy2d`), for the `density` task.

    `n_train` samples are drawn once (seed `seed`, default the run's seed), or, with
    `resample: true`, a fresh batch is drawn every step (as FFJORD's toy runs; step
    `s` draws with seed `seed * 1000003 + s`). The test set has `n_test` samples drawn
    with `test_seed` (default the run's seed + 10007).
    """

    name: Literal["toy2d"] = "toy2d"
    distribution: _names(_toy2d_names()) = "8gaussians"
    n_train: PosInt = Field(10_000, ge=16, le=10_000_000)
    n_test: PosInt = Field(2_000, ge=16, le=1_000_000)
    resample: bool = False
    seed: Seed | None = None
    test_seed: Seed | None = None


class DigitsData(_Strict):
    """scikit-learn's 8x8 digits (`nodekit.data.digits`; task `classification`),
    split stratified with `test_fraction` by `seed` (default the run's seed)."""

    name: Literal["digits"] = "digits"
    test_fraction: Fraction = 0.2
    seed: Seed | None = None


class AnodeG1DData(_Strict):
    """ANODE's 1-D map `g(1) = -1`, `g(-1) = 1` (`nodekit.data.anode_g1d`): two points,
    trained and evaluated on both (task `classification`)."""

    name: Literal["anode_g1d"] = "anode_g1d"


class ConcentricSpheresData(_Strict):
    """ANODE's concentric spheres (`nodekit.data.concentric_spheres`; task
    `classification`): `n` points, labels -1 inside radius `r1` and +1 between `r2`
    and `r3`, split stratified with `test_fraction`; `seed` (default the run's seed)
    draws the points and the split."""

    name: Literal["concentric_spheres"] = "concentric_spheres"
    n: PosInt = Field(1000, ge=2, le=10_000_000)
    dim: PosInt = Field(2, le=4096)
    r1: PosFloat = Field(0.5, le=1e6)
    r2: PosFloat = Field(1.0, le=1e6)
    r3: PosFloat = Field(1.5, le=1e6)
    test_fraction: Fraction = 0.2
    seed: Seed | None = None

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

    name: Literal["latent_spirals"] = "latent_spirals"
    n_samples: PosInt = Field(1000, ge=2, le=10_000_000)
    n_points: PosInt = Field(100, ge=2, le=100_000)
    n_obs: PosInt = 30
    noise_std: float = Field(0.1, ge=0, le=1e6)
    t_max: float = Field(2 * math.pi, ge=1e-3, le=1e4)
    obs_fraction: float = Field(0.5, gt=0, le=1)
    test_fraction: Fraction = 0.2
    seed: Seed | None = None

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

    name: Literal["lotka_volterra"] = "lotka_volterra"
    alpha: PosFloat = Field(1.3, le=1e3)
    beta: PosFloat = Field(0.9, le=1e3)
    gamma: PosFloat = Field(0.8, le=1e3)
    delta: PosFloat = Field(1.8, le=1e3)
    y0: list[PosFloat] = Field(default_factory=lambda: [0.44249296, 4.6280594])
    t1: float = Field(3.0, ge=1e-3, le=1e3)
    n_obs: PosInt = Field(31, ge=2, le=100_000)
    noise: float = Field(0.05, ge=0, le=1e3)
    seed: Seed | None = None

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

    Series (or samples, or examples) are split at random by `seed` (default the run's
    seed): `test_fraction` and `val_fraction` are held out. Periodic evaluation uses
    the validation part if any, else the test part, else the training data; the test
    metrics then also go into `summary.json` at the end. With `normalise`, each state
    coordinate (or input feature) is standardised by the training part's mean and
    standard deviation (default: on, except for a `python` field or a UDE, whose
    physics works in the data's own units). `batch_time` (task `trajectory`): points
    per training segment (default 10).
    """

    name: Literal["file"] = "file"
    path: str
    time: str = "t"
    state: list[str] | None = None
    series: str | None = None
    batch_time: int | None = Field(None, ge=2, le=1_000_000)
    val_fraction: Fraction = 0.0
    test_fraction: Fraction = 0.0
    seed: Seed | None = None
    normalise: bool | None = None

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

    weight: float = Field(ge=0)


class JacobianConfig(_Strict):
    """Jacobian Frobenius penalty: weight * integral of ||df/dy||_F^2 dt (RNODE)."""

    weight: float = Field(ge=0)
    estimator: Literal["exact", "hutchinson"] = "hutchinson"
    noise: Literal["gaussian", "rademacher"] = "gaussian"


class TaylorConfig(_Strict):
    """Taylor-mode penalty R_K: weight * integral of ||d^K y/dt^K||^2 dt (TayNODE)."""

    weight: float = Field(ge=0)
    order: int = Field(2, ge=2, le=8)
    method: Literal["jet", "jvp"] = "jet"


class SteerConfig(_Strict):
    """STEER: each training solve ends at a time drawn uniformly from [T - width, T + width]."""

    width: PosFloat


class RegularisationConfig(_Strict):
    """Penalties that keep learned dynamics easy to solve; each is off unless given.

    `quadrature` says how the penalties' integrals are taken along the solve:
    `trapezoid` (default: the integrands once per solver step, the steps those of the
    unregularised solve; kinetic energy alone rides on the stages' field values for
    free) or `augmented` (running integrals in the ODE state, evaluated
    at every stage and under error control, as RNODE's and TayNODE's code do; several
    times dearer). See `nodekit.regularised_odeint`. The `trajectory`, `density` and
    `ude` tasks integrate them; STEER applies to `density` only.
    """

    kinetic: KineticConfig | None = None
    jacobian: JacobianConfig | None = None
    taylor: TaylorConfig | None = None
    steer: SteerConfig | None = None
    quadrature: Literal["trapezoid", "augmented"] = "trapezoid"

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
    `grid`'s values, each trained with `seeds` seeds (the config's `seed`, `seed + 1`,
    ...), each member a run of the config with those values set.

    - `grid`: dotted config keys (as `--set` takes them) to lists of values, e.g.
      `{"optimizer.learning_rate": [1e-3, 3e-3], "regularisation.kinetic": [0, 0.01]}`.
    - `seeds`: seeds per grid point (a grid over `seed` itself takes 1 here).

    The section belongs to `nodekit sweep`; `nodekit train` refuses a config holding
    it, and `nodekit validate` checks every member.
    """

    grid: dict[str, list[Any]] = {}
    seeds: PosInt = Field(1, le=MAX_SWEEP_MEMBERS)

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

    seed: Seed = 0
    task: _names(TASK_NAMES) = "trajectory"
    precision: Literal["float32", "float64"] = "float32"
    data: DataConfig = Field(default_factory=SpiralData)
    model: ModelConfig = ModelConfig()
    solver: SolverConfig = SolverConfig()
    regularisation: RegularisationConfig = RegularisationConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

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
