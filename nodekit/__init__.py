"""nodekit: neural ordinary differential equations on JAX."""

# The public names are imported on first use (PEP 562 `__getattr__`): `import nodekit`
# then costs next to nothing, and a run that never touches, say, the regularisers does
# not import them. `nodekit.<name>` and `from nodekit import <name>` work as before;
# the block below is what type checkers and readers see.
from typing import TYPE_CHECKING

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._config import (
        Config as Config,
        builtin_configs as builtin_configs,
        load_config as load_config,
        validate as validate_config,
    )
    from ._errors import (
        CheckpointError as CheckpointError,
        ConfigError as ConfigError,
        InputError as InputError,
        NodekitError as NodekitError,
        SolverError as SolverError,
        TrainingFault as TrainingFault,
    )
    from ._fields import (
        ACTIVATIONS as ACTIVATIONS,
        AbstractVectorField as AbstractVectorField,
        FunctionField as FunctionField,
        MLPField as MLPField,
        SecondOrderField as SecondOrderField,
    )
    from ._neural_ode import (
        BATCH_MODES as BATCH_MODES,
        NeuralODE as NeuralODE,
        Solution as Solution,
    )
    from ._diffrax_solve import RK4 as RK4
    from ._odeint import (
        ADJOINTS as ADJOINTS,
        SOLVERS as SOLVERS,
        SolveStats as SolveStats,
        odeint as odeint,
    )
    from ._settings import SolveSettings as SolveSettings
    from ._regularisers import (
        AbstractRegulariser as AbstractRegulariser,
        JacobianFrobenius as JacobianFrobenius,
        KineticEnergy as KineticEnergy,
        TaylorRK as TaylorRK,
        augmented_field as augmented_field,
        regularised_odeint as regularised_odeint,
        regularised_odeint_batch as regularised_odeint_batch,
        sample_noise as sample_noise,
        steer_end_time as steer_end_time,
        total_penalty as total_penalty,
    )
    from ._build import enable_compile_cache as enable_compile_cache
    from ._load_run import Run as Run, load as load
    from ._loop import train as train
    from ._sweep import sweep as sweep
    from ._signals import Stopped as Stopped
    from ._optim import make_optimizer as make_optimizer
    from ._step import make_step as make_step

# public name -> (module, attribute in it)
_LAZY = {
    **{n: ("._errors", n) for n in ("CheckpointError", "ConfigError", "InputError", "NodekitError",
                                     "SolverError", "TrainingFault")},
    **{n: ("._odeint", n) for n in ("ADJOINTS", "SOLVERS", "SolveStats", "odeint")},
    "SolveSettings": ("._settings", "SolveSettings"),
    "RK4": ("._diffrax_solve", "RK4"),
    **{n: ("._fields", n) for n in ("ACTIVATIONS", "AbstractVectorField", "FunctionField", "MLPField",
                                     "SecondOrderField")},
    **{n: ("._neural_ode", n) for n in ("BATCH_MODES", "NeuralODE", "Solution")},
    "Config": ("._config", "Config"),
    "load_config": ("._config", "load_config"),
    "builtin_configs": ("._config", "builtin_configs"),
    "validate_config": ("._config", "validate"),
    "make_optimizer": ("._optim", "make_optimizer"),
    "make_step": ("._step", "make_step"),
    "train": ("._loop", "train"),
    "sweep": ("._sweep", "sweep"),
    "load": ("._load_run", "load"),
    "Run": ("._load_run", "Run"),
    "Stopped": ("._signals", "Stopped"),
    "enable_compile_cache": ("._build", "enable_compile_cache"),
    **{n: ("._regularisers", n) for n in (
        "AbstractRegulariser", "JacobianFrobenius", "KineticEnergy", "TaylorRK", "augmented_field",
        "regularised_odeint", "regularised_odeint_batch", "sample_noise", "steer_end_time",
        "total_penalty")},
}

# Subpackages, imported on use: `nodekit.data`, `nodekit.models`, `nodekit.experiments`.
_SUBPACKAGES = ("data", "models", "experiments")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES or (name.startswith("_") and not name.startswith("__")
                                and name[1:].isidentifier() and _is_submodule(name)):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_submodule(name: str) -> bool:
    from pathlib import Path

    here = Path(__file__).parent
    return (here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file()


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
