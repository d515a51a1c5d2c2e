"""nodekit: neural ordinary differential equations on JAX."""

from ._errors import (
    CheckpointError as CheckpointError,
    ConfigError as ConfigError,
    InputError as InputError,
    NodekitError as NodekitError,
    SolverError as SolverError,
    TrainingFault as TrainingFault,
)
from ._odeint import (
    ADJOINTS as ADJOINTS,
    RK4 as RK4,
    SOLVERS as SOLVERS,
    SolveStats as SolveStats,
    odeint as odeint,
)
from ._version import __version__ as __version__
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
from ._config import (
    Config as Config,
    load_config as load_config,
    validate as validate_config,
)
from ._train import make_optimizer as make_optimizer, make_step as make_step, train as train
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

# Subpackages, imported on use: `nodekit.data`, `nodekit.models`, `nodekit.experiments`.
