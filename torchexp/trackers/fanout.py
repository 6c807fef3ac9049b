"""What a command logs to: `Trackers` passes each event to every tracker turned on, and
`RunTrackers`, a Runner's `tracker`, writes TensorBoard and metrics.jsonl first.

A tracker that fails is warned of once and the command goes on: the experiment folder
keeps everything, and a tracker that mirrors it (MLflow's `sync`) can catch up later.
"""

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torchexp import metrics
from torchexp.errors import first_line
from torchexp.trackers.base import FAILED, FINISHED, KILLED, RunInfo, Tracker, flatten
from torchexp.trackers.plugins import TrackerSpec, open_trackers
from torchexp.trackers.tensorboard import TensorBoardTracker

# How a `torchexp.metrics.Stop`'s reason ends a run; any other reason is a finished run.
STOP_STATUS = {metrics.INTERRUPTED: KILLED, metrics.FAILED: FAILED}


class Trackers:
    """The trackers of one command, each event passed to each in turn.

    Args:
        trackers: the trackers, built.
        logger: where a failing tracker is warned of.
    """

    def __init__(self, trackers: Sequence[Tracker] = (), logger: logging.Logger | None = None):
        self.trackers = list(trackers)
        self.logger = logger
        self.warned: set[str] = set()

    @classmethod
    def open(cls, specs: Iterable[TrackerSpec], run: RunInfo | None, logger: logging.Logger) -> "Trackers":
        """Build the trackers of `specs` and start them on `run` (None for a search).

        Raises:
            ProjectError: a tracker's class cannot be imported or built.
            MissingExtraError: a tracker's package is not installed.
        """
        trackers = cls(open_trackers(specs, logger), logger)
        if run is not None:
            trackers.send("start", run)
            if run.command == "train":
                trackers.send(
                    "log_hyperparameters", {**flatten(run.definition["config"]), "seed": run.definition["seed"]}
                )
        return trackers

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def send(self, event: str, *args: Any) -> None:
        """Call `event` on every tracker; one that raises is warned of (once) and skipped."""
        for tracker in self.trackers:
            try:
                getattr(tracker, event)(*args)
            except Exception as error:  # a tracker's service may fail in any way
                self.warn(tracker, event, error)

    def warn(self, tracker: Tracker, event: str, error: Exception) -> None:
        if self.logger is None or tracker.name in self.warned:
            return
        self.warned.add(tracker.name)
        self.logger.warning(
            f"tracker {tracker.name!r} failed at {event}: {type(error).__name__}: {first_line(error)}; "
            "the command goes on and the experiment folder keeps everything"
        )

    def close(self) -> None:
        """Close every tracker, then forget them: closing twice does nothing."""
        self.send("close")
        self.trackers = []


class RunTrackers:
    """A Runner's `tracker`: TensorBoard and metrics.jsonl, then the trackers a command
    turned on (`open`), which receive the same numbers.

    Args:
        tensorboard_path: the experiment's tensorboard folder.
        metrics_path: the experiment's metrics.jsonl.
        enabled: False on distributed ranks other than 0, which write nothing.
    """

    def __init__(self, tensorboard_path: str, metrics_path: str, enabled: bool = True):
        self.tensorboard = TensorBoardTracker(tensorboard_path, metrics_path, enabled)
        self.others = Trackers()

    @property
    def enabled(self) -> bool:
        return self.tensorboard.enabled

    @property
    def writer(self) -> Any:
        """The TensorBoard SummaryWriter, for users' own figures and text; on ranks other
        than 0, a writer that ignores every call."""
        return self.tensorboard.writer

    def open(self, specs: Iterable[TrackerSpec], run: RunInfo, logger: logging.Logger) -> None:
        """Start the trackers of `specs` on `run`; nothing on ranks other than 0.

        Raises:
            ProjectError: a tracker's class cannot be imported or built.
            MissingExtraError: a tracker's package is not installed.
        """
        if self.enabled:
            self.others = Trackers.open(specs, run, logger)

    def log_scalars(self, kind: str, step: int, metrics: dict[str, float], **extra: Any) -> None:
        """Log `metrics` as `<kind>/<name>` at `step` everywhere.

        Args:
            kind: e.g. "iteration", "train", "validation", "test".
            step: the global step or epoch on the x axis.
            metrics: finite numbers; others are kept in JSON as null.
            extra: more fields for metrics.jsonl's line, e.g. epoch=3.
        """
        self.tensorboard.log_scalars(kind, step, metrics, **extra)
        self.others.send("log_metrics", kind, step, metrics, extra)

    def log_checkpoint(self, step: int, epoch: int) -> None:
        """A checkpoint at optimizer step `step`, `epoch` epochs done, is on disk."""
        self.others.send("log_checkpoint", step, epoch)

    def log_stop(self, stop: Any) -> None:
        """Record why a `train` ended (a `torchexp.metrics.Stop`), and finish the run."""
        self.tensorboard.log_stop(stop)
        self.others.send("finish", STOP_STATUS.get(stop.reason, FINISHED))

    def log_test(self, epoch: int, checkpoint: str, results: dict[str, Any]) -> None:
        """Log a test's numbers at `epoch`, and send its results to the other trackers."""
        numbers = {key: float(value) for key, value in results.items() if isinstance(value, (int, float))}
        self.tensorboard.log_scalars("test", epoch, numbers, epoch=epoch, checkpoint=checkpoint)
        self.others.send("log_test", epoch, checkpoint, results)

    def log_artifact(self, path: str, name: str) -> None:
        self.others.send("log_artifact", path, name)

    def discard_after(self, step: int, epoch: int) -> int:
        """A resume: drop from metrics.jsonl and TensorBoard what comes after the checkpoint
        of (`step`, `epoch`), and tell the other trackers; return the lines dropped."""
        self.others.send("resume", step, epoch)
        return self.tensorboard.discard_after(step, epoch)

    def flush(self) -> None:
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()
        self.others.close()
