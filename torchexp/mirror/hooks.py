"""Where torchexp's commands call the mirror: around training, after a test, after a release.

Each takes the project's `MlflowTarget`, None when tracking is off, in which case nothing
happens and mlflow is not imported. A server that cannot be reached gives a warning here:
the command's own work is done and kept in the experiment folder, for `sync` to send.
"""

import contextlib
import logging
from typing import Any, Iterator

from torchexp.errors import ConfigError, TorchexpError
from torchexp.folder import Experiment
from torchexp.mirror.target import MlflowTarget
from torchexp.project import Project


@contextlib.contextmanager
def mirroring_training(target: MlflowTarget | None, experiment: Experiment, logger: logging.Logger) -> Iterator[tuple]:
    """Mirror the experiment from a background thread while the block trains it; yield the
    epoch observers to pass to the loop (none when tracking is off). On leaving, the last
    sync sends the status the run ended with.

    Raises:
        MissingExtraError: tracking is on and mlflow is not installed.
    """
    if target is None:
        yield ()
        return
    from torchexp.mirror.background import BackgroundMirror
    from torchexp.mirror.runs import connect
    from torchexp.mirror.studies import make_run_mirror

    client = connect(target)
    mirror = BackgroundMirror(make_run_mirror(client, target, experiment, experiment.read_definition()), logger).start()
    try:
        yield (mirror,)
    finally:
        mirror.close()


def mirror_now(target: MlflowTarget | None, experiment: Experiment, logger: logging.Logger) -> None:
    """Send the experiment's run what it lacks (a test's results), warning when MLflow cannot
    take it."""
    if target is None:
        return
    from torchexp.mirror.runs import connect
    from torchexp.mirror.studies import make_run_mirror

    client = connect(target)
    try:
        make_run_mirror(client, target, experiment, experiment.read_definition()).sync()
    except TorchexpError as error:
        logger.warning(f"{error}; the experiment folder keeps everything, and sync sends it later")


def check_registered_model(target: MlflowTarget | None, experiment: Experiment, epoch: int, asked: str | None) -> str | None:
    """Before a release is written: the registered model it goes to, which MLflow has
    accepted (and created when new); None when tracking is off.

    Raises:
        ConfigError: a name is asked for with tracking off.
        TrackingError: MLflow cannot be reached, or refuses the name.
    """
    if target is None:
        if asked is not None:
            raise ConfigError("--registered-model needs MLflow tracking: pass --mlflow-uri or set MLFLOW_TRACKING_URI")
        return None
    from torchexp.mirror.registry import choose_model_name, ensure_registered_model
    from torchexp.mirror.runs import connect

    name = choose_model_name(experiment, epoch, asked)
    ensure_registered_model(connect(target), target, name)
    return name


def register_release_now(target: MlflowTarget, project: Project, experiment: Experiment, epoch: int, name: str, logger: logging.Logger) -> None:
    """Register the release of `epoch` as a version of `name`, and send its run what it lacks.

    Raises:
        TrackingError: MLflow cannot be reached or refuses the model.
        TorchexpError: the release cannot be exported to ONNX.
    """
    from torchexp.mirror.registry import register_release, remember_model_name
    from torchexp.mirror.runs import connect
    from torchexp.mirror.studies import make_run_mirror
    from torchexp.releases import find_release

    remember_model_name(experiment, epoch, name)
    client = connect(target)
    mirror = make_run_mirror(client, target, experiment, experiment.read_definition())
    version, _ = register_release(client, mirror, project, find_release(experiment, epoch), name, logger)
    mirror.sync()
    logger.info(f"registered the release of epoch {epoch} in MLflow as {name!r} version {version.version}")


class SearchMirror:
    """Mirrors a search from its process: the study's run, and each trial's state as the
    search records it (the trials' epochs are mirrored by their own `train`).

    Args:
        target: the MLflow server, or None (then every call does nothing).
        study_path: the study's folder.
        logger: the search's logger; a server that cannot be reached is said once.
    """

    def __init__(self, target: MlflowTarget | None, study_path: str, logger: logging.Logger):
        self.target = target
        self.study_path = study_path
        self.logger = logger
        self.warned = False
        self.mirror = None
        if target is not None:
            from torchexp.mirror.runs import connect
            from torchexp.mirror.studies import StudyMirror

            self.mirror = StudyMirror(connect(target), target, study_path)

    def sync(self, study: Any, settings: dict, status: str | None = None, trials: tuple[int, ...] | None = None) -> None:
        """Send the study's run and the runs of `trials` (None: all) what they lack."""
        if self.mirror is None:
            return
        try:
            self.mirror.sync(study, settings, status, trials)
        except TorchexpError as error:
            if not self.warned:
                self.logger.warning(f"{error}; the search goes on, and sync sends the study later")
            self.warned = True
