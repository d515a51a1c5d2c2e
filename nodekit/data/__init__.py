"""Data sets generated in code: seeded, deterministic, no downloads.

Every random function takes `seed` (a non-negative integer) and is a pure function of
its arguments. Arrays are NumPy float32 (labels int32, masks bool); containers are
frozen dataclasses. Data sets with a held-out part return a `Split(train, test)`.

- `ode_demo_spiral`: torchdiffeq's `ode_demo` trajectory.
- `latent_spirals`: irregularly observed noisy spirals for latent ODEs.
- `sample_toy2d`, `toy2d_log_density`: FFJORD's toy 2-D densities.
- `anode_g1d`, `concentric_spheres`: ANODE's non-representable functions.
- `lotka_volterra`: the UDE paper's predator–prey data.
- `digits`: scikit-learn's bundled 8x8 digits.
- `split_indices`, `batch_indices`: splits and resumable minibatches.
- `read_trajectories`, `read_samples`, `read_labelled`: the user's own CSV/NPZ files;
  `split_three` (train/validation/test) and `Normalisation` (statistics of the
  training part). Files are read as float64; the tasks cast to the run's precision.
"""

from ._anode import (
    anode_g1d as anode_g1d,
    concentric_spheres as concentric_spheres,
)
from ._digits import digits as digits
from ._latent_spirals import (
    SPIRAL_A as SPIRAL_A,
    SPIRAL_B as SPIRAL_B,
    SPIRAL_START_PHASE as SPIRAL_START_PHASE,
    LatentSpirals as LatentSpirals,
    latent_spirals as latent_spirals,
)
from ._files import (
    Normalisation as Normalisation,
    Trajectories as Trajectories,
    read_labelled as read_labelled,
    read_samples as read_samples,
    read_trajectories as read_trajectories,
    split_three as split_three,
)
from ._lotka_volterra import (
    LotkaVolterra as LotkaVolterra,
    lotka_volterra as lotka_volterra,
)
from ._ode_demo import (
    ODE_DEMO_A as ODE_DEMO_A,
    ODE_DEMO_Y0 as ODE_DEMO_Y0,
    ode_demo_spiral as ode_demo_spiral,
)
from ._split import (
    LabelledData as LabelledData,
    Split as Split,
    batch_indices as batch_indices,
    split_indices as split_indices,
)
from ._toy2d import (
    CIRCLES_RADII as CIRCLES_RADII,
    CIRCLES_STD as CIRCLES_STD,
    EIGHT_GAUSSIANS_RADIUS as EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD as EIGHT_GAUSSIANS_STD,
    TOY2D_DENSITY_NAMES as TOY2D_DENSITY_NAMES,
    TOY2D_NAMES as TOY2D_NAMES,
    eight_gaussians_centres as eight_gaussians_centres,
    sample_toy2d as sample_toy2d,
    toy2d_log_density as toy2d_log_density,
)
