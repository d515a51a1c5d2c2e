"""Tasks: what a config's `task` means — its data, model, loss, evaluation and plots.

A task is a host-side object built from a validated `Config`; the training loop talks
only to the `AbstractTask` interface. One file per task, registered in `TASKS` by its
config name.
"""

from ._base import AbstractTask as AbstractTask
from ._density import DensityTask as DensityTask
from ._trajectory import TrajectoryTask as TrajectoryTask

#: Tasks by config name.
TASKS: dict[str, type[AbstractTask]] = {"trajectory": TrajectoryTask, "density": DensityTask}


def make_task(config) -> AbstractTask:
    """The task a validated config names."""
    return TASKS[config.task](config)
