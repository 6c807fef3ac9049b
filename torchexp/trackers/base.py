"""The tracker interface: what a service that follows experiments (MLflow, Weights & Biases,
a team's own) receives from torchexp, and when.

TensorBoard with metrics.jsonl is always on and kept in the experiment folder; the others
are turned on per command line (`torchexp.trackers.plugins`) and receive the same events.
A tracker overrides what it uses: every method here does nothing.

The events of one command, in order:

- `train`: `start`, `log_hyperparameters`, `resume` (when it resumes), then any number of
  `log_metrics` and `log_checkpoint`, then `finish`, then `close`;
- `test`: `start`, `log_test`, `log_artifact` (the confusion matrix image, with
  matplotlib), `close`;
- `create_release`: `start`, `log_release`, `close`;
- `search`: `sync_study` whenever the study changes, then `close` (each trial is a `train`).

A tracker's run is the experiment: its identity must survive a resume, also after a
SIGKILL, so a tracker keeps its run's id in the experiment folder (`RunInfo.folder`).
Only what a checkpoint covers is final: a run killed after `log_metrics` of step 12 and
resumed from the checkpoint of step 10 logs steps 11 and 12 again. A tracker that cannot
take a step twice sends a step once `log_checkpoint` covers it (see `is_covered`).
"""

import dataclasses
import json
import os
from typing import Any

from torchexp.folder import Experiment

# A run's final status, as MLflow names them (and W&B's exit codes follow).
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
COMMANDS = ("train", "test", "create_release", "search")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The run a tracker follows: one experiment, across every command and resume.

    Args:
        experiment: the experiment; its folder is where a tracker keeps its run's id.
        definition: the experiment's config.json (its config, seed and project classes).
        command: the command that runs: one of `COMMANDS`.
    """

    experiment: Experiment
    definition: dict
    command: str

    @property
    def folder(self) -> str:
        return self.experiment.path

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def group(self) -> str:
        """The experiments folder's name: the study, for a search's trial."""
        return os.path.basename(self.experiment.experiments_path)


class Tracker:
    """A service that follows experiments. Subclass it, override the events you use, and
    register the class under the `torchexp.trackers` entry point group; `--tracker NAME`
    turns it on. It is built with the command's logger (`self.logger`), and only in the
    process that writes the experiment (rank 0 under torchrun).

    An exception a tracker raises is logged as a warning (once per tracker) and the
    command goes on: the experiment folder keeps everything.
    """

    name = "tracker"

    def __init__(self, logger: Any, **options: str):
        self.logger = logger
        self.options = options

    def start(self, run: RunInfo) -> None:
        """A command begins on the experiment of `run`."""

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        """The experiment's config, flattened to "section.key" names, with its seed."""

    def resume(self, step: int, epoch: int) -> None:
        """Training resumes from the checkpoint of optimizer step `step`, `epoch` epochs done:
        what was logged after it will be logged again."""

    def log_metrics(self, kind: str, step: int, metrics: dict[str, float], where: dict[str, Any]) -> None:
        """Numbers of `kind` ("iteration", "train", "validation", a project's own) at `step`:
        the optimizer step for iterations, else the epoch (or the step, for an experiment
        trained by steps). `where` holds what metrics.jsonl records beside: epoch, unit, seconds."""

    def log_checkpoint(self, step: int, epoch: int) -> None:
        """A checkpoint at optimizer step `step`, `epoch` epochs done, is on disk: whatever
        was logged up to it will not be logged again."""

    def finish(self, status: str) -> None:
        """`train` ended: FINISHED (its budget done, early stopping), KILLED (a stop signal)
        or FAILED (an error)."""

    def log_test(self, epoch: int, checkpoint: str, results: dict[str, Any]) -> None:
        """`test` of the weights of `epoch` (a checkpoint's name) gave `results` (JSON data)."""

    def log_artifact(self, path: str, name: str) -> None:
        """A file the command wrote, to keep beside the run as `name`."""

    def log_release(self, epoch: int, path: str) -> None:
        """A release checkpoint of `epoch` was written at `path`."""

    def sync_study(self, path: str, study: Any, settings: dict, status: str, trials: tuple[int, ...] | None) -> None:
        """A search's study (an Optuna study, its folder at `path`) changed: its `status`,
        and the trials numbered `trials` (None: all)."""

    def close(self) -> None:
        """The command is over: send what is pending and let go of the service."""


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} as {"optimizer.lr": 0.1}; lists as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def is_covered(kind: str, step: int, where: dict[str, Any], checkpoint_step: int, checkpoint_epoch: int) -> bool:
    """Whether a `log_metrics` event is covered by the checkpoint of (`checkpoint_step`,
    `checkpoint_epoch`): a run resumed from it will not log it again."""
    if kind == "iteration" or where.get("unit") == "step":
        return step <= checkpoint_step
    if "epoch" in where:
        return where["epoch"] <= checkpoint_epoch
    return True
