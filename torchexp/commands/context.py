"""What every command shares: the `App` the group callback builds, and `pass_app`.

Nothing here imports torch: `--help`, `info` and the inspection commands answer at once.
"""

import click

from torchexp.folder import Experiment
from torchexp.mirror.target import MlflowTarget
from torchexp.project import ClassSpec, Project
from torchexp.trackers.plugins import TrackerSpec


class App:
    """The group's options, shared by every command: the project and the experiment named.

    Args:
        data_class: the project's Data subclass, or "module:Class" to import it lazily.
        runner_class: the project's Runner subclass, or "module:Class".
        experiment_name: --experiment-name.
        experiments_path: --experiments-path.
        data_path: --data-path.
        verbosity: "quiet", "normal" or "verbose".
        tracking: the MLflow server experiments are mirrored to, or None.
        trackers: the other trackers turned on (`--tracker`).
    """

    def __init__(
        self,
        data_class: ClassSpec,
        runner_class: ClassSpec,
        experiment_name: str | None,
        experiments_path: str,
        data_path: str,
        verbosity: str,
        tracking: MlflowTarget | None = None,
        trackers: tuple[TrackerSpec, ...] = (),
    ):
        mlflow = (
            (TrackerSpec("mlflow", (("uri", tracking.uri), ("experiment_name", tracking.experiment_name or ""))),)
            if tracking
            else ()
        )
        self.project = Project(data_class, runner_class, data_path, verbosity, mlflow + trackers)
        self.tracking = tracking
        self.experiment_name = experiment_name
        self.experiments_path = experiments_path
        self.debug = False  # --debug: an error's traceback above its sentence

    @property
    def data_path(self) -> str:
        return self.project.data_path

    @property
    def verbosity(self) -> str:
        return self.project.verbosity

    def experiment(self) -> Experiment:
        """Return the named experiment, which may not exist yet."""
        return Experiment(self.experiments_path, self.experiment_name)

    def open_experiment(self) -> Experiment:
        """Return the named experiment, which must exist."""
        experiment = self.experiment()
        experiment.check_exists()
        return experiment


pass_app = click.make_pass_decorator(App)
