"""The model zoo: one file per model family, every model solving through
`nodekit.odeint`/`nodekit.NeuralODE` (solver, tolerances and adjoint by name) and
returning `SolveStats` (NFE) beside its output.

- ODE-Net classifier and its ResNet baseline (Chen et al. 2018):
  `ODENetClassifier`, `ResNetClassifier`, `ConvField`, `count_params`,
  `classification_loss`.
- Latent ODE with an ODE-RNN encoder (Rubanova et al. 2019) and a GRU baseline:
  `LatentODE`, `RNNBaseline`, `elbo`, `rnn_loss`, `predict`.
- Continuous normalising flow, FFJORD (Grathwohl et al. 2019): `CNF`, `CNFDynamics`,
  `nll`.
- Universal differential equations (Rackauckas et al. 2020): `UDE`,
  `LotkaVolterraUDE`, `trajectory_loss`.
- Augmented neural ODE readout (Dupont et al. 2019): `ANODEClassifier`, `anode_loss`.

Every loss has the form `loss_fn(model, *batch, ...) -> (scalar loss, aux)` where `aux`
holds scalars including `nfe` (mean forward NFE per sample), `solver_steps` and
`failures` (solves that failed; losses default to `throw=False`).
"""

from ._anode import ANODEClassifier as ANODEClassifier, anode_loss as anode_loss
from ._classifier import (
    ConvField as ConvField,
    ODENetClassifier as ODENetClassifier,
    ResNetClassifier as ResNetClassifier,
    classification_loss as classification_loss,
    count_params as count_params,
)
from ._cnf import (
    CNF as CNF,
    CNFDynamics as CNFDynamics,
    NOISES as NOISES,
    TRACES as TRACES,
    nll as nll,
    standard_normal_log_prob as standard_normal_log_prob,
)
from ._latent import (
    ENCODERS as ENCODERS,
    LatentODE as LatentODE,
    RNNBaseline as RNNBaseline,
    elbo as elbo,
    predict as predict,
    rnn_loss as rnn_loss,
)
from ._ude import (
    AbstractUDE as AbstractUDE,
    LotkaVolterraInteraction as LotkaVolterraInteraction,
    LotkaVolterraKnown as LotkaVolterraKnown,
    LotkaVolterraUDE as LotkaVolterraUDE,
    UDE as UDE,
    UDEField as UDEField,
    trajectory_loss as trajectory_loss,
)
