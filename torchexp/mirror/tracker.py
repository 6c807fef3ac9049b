"""MLflow's tracker: the mirror behind the tracker interface (`torchexp.trackers.base`).

The mirror sends MLflow what the experiment folder holds and MLflow lacks, so most events
only ask for a sync: while training, from a thread of its own (`background`); after a test
or a release, at once. A server that cannot be reached gives a warning: the command's own
work is kept in the folder, for `sync` to send.
"""

import logging
from typing import Any

from torchexp.errors import TorchexpError
from torchexp.mirror.background import BackgroundMirror
from torchexp.mirror.registry import choose_model_name, register_release
from torchexp.mirror.runs import RunMirror, connect
from torchexp.mirror.studies import StudyMirror, make_run_mirror
from torchexp.mirror.target import MlflowTarget
from torchexp.project import Project
from torchexp.trackers.base import RunInfo, Tracker


class MlflowTracker(Tracker):
    """Mirrors each experiment to one MLflow run, and a search's study to a parent run.

    Args:
        logger: the command's logger.
        uri: the tracking URI (`torchexp.mirror.target`).
        experiment_name: the MLflow experiment; "" for the experiments folder's name.

    Raises:
        MissingExtraError: mlflow is not installed.
    """

    name = "mlflow"

    def __init__(self, logger: logging.Logger, uri: str, experiment_name: str = ""):
        super().__init__(logger, uri=uri, experiment_name=experiment_name)
        self.target = MlflowTarget(uri, experiment_name or None)
        self.client = connect(self.target)
        self.run: RunInfo | None = None
        self.background: BackgroundMirror | None = None
        self.study: StudyMirror | None = None
        self.warned = False

    def start(self, run: RunInfo) -> None:
        """Training syncs from a thread at once (the run shows RUNNING) and at every checkpoint."""
        self.run = run
        if run.command == "train":
            self.background = BackgroundMirror(self.open_mirror(), self.logger).start()

    def open_mirror(self) -> RunMirror:
        assert self.run is not None, "start comes first"
        return make_run_mirror(self.client, self.target, self.run.experiment, self.run.definition)

    def log_checkpoint(self, step: int, epoch: int) -> None:
        if self.background is not None:
            self.background.request()

    def finish(self, status: str) -> None:
        """The last sync sends the status metrics.jsonl's stop line gives the run."""
        self.close()

    def log_test(self, epoch: int, checkpoint: str, results: dict[str, Any]) -> None:
        self.sync_now("the experiment folder keeps everything, and sync sends it later")

    def log_release(self, epoch: int, path: str) -> None:
        """Register the release as a version of the model asked for (kept in mlflow.json by
        `create_release`), from its ONNX export, and send the run what it lacks."""
        assert self.run is not None, "start comes first"
        from torchexp.releases import find_release

        experiment = self.run.experiment
        name = choose_model_name(experiment, epoch, None)
        mirror = self.open_mirror()
        project = Project(self.run.definition["classes"]["data"], self.run.definition["classes"]["runner"])
        version, _ = register_release(self.client, mirror, project, find_release(experiment, epoch), name, self.logger)
        mirror.sync()
        self.logger.info(f"registered the release of epoch {epoch} in MLflow as {name!r} version {version.version}")

    def sync_study(self, path: str, study: Any, settings: dict, status: str, trials: tuple[int, ...] | None) -> None:
        """Send the study's run and its trials' runs what they lack; a server that cannot be
        reached is said once, and the search goes on."""
        if self.study is None:
            self.study = StudyMirror(self.client, self.target, path)
        try:
            self.study.sync(study, settings, status, trials)
        except TorchexpError as error:
            self.warn_once(f"{error}; the search goes on, and sync sends the study later")

    def sync_now(self, consequence: str) -> None:
        try:
            self.open_mirror().sync()
        except TorchexpError as error:
            self.warn_once(f"{error}; {consequence}")

    def warn_once(self, message: str) -> None:
        if not self.warned:
            self.logger.warning(message)
        self.warned = True

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
            self.background = None
