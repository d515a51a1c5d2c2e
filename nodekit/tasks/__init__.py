"""Tasks: what a config's `task` means — its data, model, loss, evaluation and plots.

A task is a host-side object built from a validated `Config`; the training loop talks
only to the `AbstractTask` interface. One file per task, registered in `TASKS` by its
config name (the names the schema allows, `nodekit._config.TASK_NAMES`).
"""

from .._config import TASK_NAMES
from ._base import AbstractTask as AbstractTask
from ._classification import ClassificationTask as ClassificationTask
from ._density import DensityTask as DensityTask
from ._latent import LatentTask as LatentTask
from ._trajectory import TrajectoryTask as TrajectoryTask
from ._ude import UDETask as UDETask

#: Tasks by config name.
TASKS: dict[str, type[AbstractTask]] = {
    "trajectory": TrajectoryTask,
    "density": DensityTask,
    "classification": ClassificationTask,
    "latent": LatentTask,
    "ude": UDETask,
}
assert tuple(TASKS) == TASK_NAMES, "the schema's task names and the registry must agree"


def make_task(config) -> AbstractTask:
    """The task a validated config names, with its data read and checked.

    This is the second half of the gate (after `nodekit.validate_config`/
    `nodekit.load_config`): it reads or generates the data and checks what depends on
    it or on this machine (the user's data file, batch sizes, the user's `python`
    field, the devices `train.devices` asks for), so a config it accepts will train.
    `nodekit validate` calls it too.

    **Arguments:**

    - `config`: a validated `Config`.

    **Returns:** the task (an `AbstractTask`).

    **Raises:** `ConfigError` (naming the key) or `InputError` (naming the data file,
    its line or array, or the user's module).

    **Example:**

    ```python
    import nodekit
    from nodekit.tasks import make_task

    task = make_task(nodekit.load_config("tiny"))
    print(type(task).__name__, task.n_train)     # TrajectoryTask 95
    ```
    """
    _check_devices(config)
    return TASKS[config.task](config)


def _check_devices(config) -> None:
    """The devices `train.devices` asks for, against the devices this machine has (as
    the training loop will find them; a multi-host run counts them after start-up)."""
    if config.distributed.enabled:
        return
    import jax

    from .._build import device_count

    device_count(config, jax.devices())
