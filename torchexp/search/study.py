"""A study on disk and in Optuna: its folder, the settings study.json records, and the
Optuna study with its sampler and pruner.

```
<experiments>/<study>/
  study.json          the search's settings: space, metric, direction, sampler, pruner, ...
  journal.log         Optuna's journal (unless --storage names a database)
  search.log          what every search process on this study did
  .scheduler.lock     held while a process picks its next piece of work
  .claims/            trial-NNNN.lock, held while a process trains that trial
  trial-0000/ ...     one ordinary experiment per trial
```
"""

import dataclasses
import datetime
import logging
import os
from typing import Any

import optuna

from torchexp import checkpoints
from torchexp.errors import ConfigError, ExperimentError
from torchexp.files import read_json, write_json_atomic
from torchexp.folder import Experiment, validate_name
from torchexp.metrics import Stop
from torchexp.project import Project
from torchexp.search.options import RunOptions, StudyOptions, declared_fields, flag, resolved_option
from torchexp.search.pruners import TrialPruner
from torchexp.search.samplers import make_sampler
from torchexp.trackers.fanout import Trackers
from torchexp.trackers.tensorboard import TensorBoardTracker

SETTINGS_FILE = "study.json"
SETTINGS_FORMAT = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings(StudyOptions):
    """What a study is: its `StudyOptions` resolved (max_epochs set, direction "minimize" or
    "maximize"), with its name, space and storage. Fixed when the study is created, checked
    on every later run; study.json records them as flat keys.

    Attributes:
        name: the study's name (its folder, and its name in the storage).
        space: the space's record (`SearchSpace.as_record`).
        storage: `torchexp.search.storage.describe_storage`'s record.
        unit: what max_epochs, min_epochs and rungs count: "epoch", or "step" when the
            space's configuration trains by steps (trainer.max_steps); the space decides it.
    """

    name: str
    space: dict
    storage: dict
    unit: str = "epoch"
    # Resolved, so never None: the options' own fields, required here, in their places.
    direction: str = resolved_option("direction")
    max_epochs: int = resolved_option("max_epochs")

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> "SearchSettings":
        """The settings study.json records.

        Raises:
            ExperimentError: a setting is missing; `where` names the file.
        """
        # A study created before budgets in steps has no unit: it counts epochs.
        missing = [field.name for field in dataclasses.fields(cls) if field.name not in record and field.name != "unit"]
        if missing:
            raise ExperimentError(f"{where} lacks the setting {missing[0]!r}: it was not written by torchexp's search")
        return cls(**{field.name: record[field.name] for field in dataclasses.fields(cls) if field.name in record})

    def as_record(self) -> dict[str, Any]:
        """study.json's content, less its creation time, its keys in the order of earlier versions."""
        record = dataclasses.asdict(self)
        return {"format": SETTINGS_FORMAT, "name": record.pop("name"), "space": record.pop("space"), **record}


# The settings a later run must repeat, in the order a changed one is looked for.
CHECKED_SETTINGS = ("space", *(field.name for field in declared_fields(StudyOptions)), "storage")


def check_rungs(min_epochs: int, max_epochs: int) -> None:
    """Raise ConfigError when the first rung lies beyond the last epoch."""
    if min_epochs > max_epochs:
        raise ConfigError(f"{flag('min_epochs')} {min_epochs} is more than {flag('max_epochs')} {max_epochs}")


class StudyFolder:
    """Paths of a study folder and of its trials.

    Args:
        experiments_path: the folder holding experiments and studies.
        name: the study's name, a plain folder name.
    """

    def __init__(self, experiments_path: str, name: str | None):
        self.name = validate_name(name)
        self.experiments_path = experiments_path
        self.path = os.path.join(os.path.abspath(experiments_path), self.name)
        self.settings_path = os.path.join(self.path, SETTINGS_FILE)
        self.log_path = os.path.join(self.path, "search.log")
        self.scheduler_lock_path = os.path.join(self.path, ".scheduler.lock")
        self.claims_path = os.path.join(self.path, ".claims")

    def exists(self) -> bool:
        return os.path.isfile(self.settings_path)

    def check_exists(self) -> None:
        """Raise ExperimentError when no search has created this study yet."""
        if not self.exists():
            raise ExperimentError(
                f"study {self.name!r} does not exist in {self.experiments_path}: "
                f"start it with search {flag('space')} FILE {flag('trials')} N"
            )

    def check_usable(self) -> None:
        """Raise ExperimentError when the name holds something other than a study."""
        if self.exists() or not os.path.lexists(self.path):
            return
        if os.path.isfile(os.path.join(self.path, "config.json")):
            raise ExperimentError(
                f"{self.name!r} in {self.experiments_path} is an experiment, not a study; "
                "choose another --experiment-name"
            )
        # The scheduler lock alone is a study being created: its creator writes study.json
        # holding that lock, and a process starting beside it waits for the lock, then joins.
        if not os.path.isdir(self.path) or set(os.listdir(self.path)) - {os.path.basename(self.scheduler_lock_path)}:
            raise ExperimentError(f"{self.path} exists and is not a study; choose another --experiment-name")

    def trial_name(self, number: int) -> str:
        """The experiment name of trial `number`: trial-0003."""
        return f"trial-{number:04d}"

    def trial_experiment(self, number: int) -> Experiment:
        """The experiment of trial `number` (it may not exist yet)."""
        return Experiment(self.path, self.trial_name(number))

    def trial_address(self, number: int) -> str:
        """The global options that address trial `number`, as the user typed the experiments path."""
        return (
            f"--experiments-path {os.path.join(self.experiments_path, self.name)} "
            f"--experiment-name {self.trial_name(number)}"
        )

    def read_settings(self) -> SearchSettings:
        """The settings study.json records.

        Raises:
            ExperimentError: study.json is unreadable or lacks a setting.
        """
        where = f"settings of study {self.name!r}"
        return SearchSettings.from_record(
            read_json(self.settings_path, where, ExperimentError), f"{where} ({self.settings_path})"
        )

    def write_or_check_settings(self, settings: SearchSettings) -> None:
        """Record `settings` in a new study, or check that they are the existing study's.

        Call it holding the scheduler lock, so that two processes starting together agree.

        Raises:
            ConfigError: the study exists with other settings; the message names the first.
        """
        if not self.exists():
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(self.settings_path, {**settings.as_record(), "created_at": created})
            return
        recorded = self.read_settings()
        for field in CHECKED_SETTINGS:
            old, new = getattr(recorded, field), getattr(settings, field)
            if field == "space":
                old, new = comparable_space(old), comparable_space(new)
            if old != new:
                raise ConfigError(
                    f"study {self.name!r} was created with {describe_setting(field, getattr(recorded, field))}, not "
                    f"{describe_setting(field, getattr(settings, field))}: run it with the same {flag(field)}, "
                    "or choose another --experiment-name"
                )


@dataclasses.dataclass
class Search:
    """An open study, what its trials are made from, and the options of this process.

    Attributes:
        project: the project whose experiments the trials are.
        folder: the study's folder.
        settings: its settings.
        pruner: the pruner its settings name.
        space: the SearchSpace trials are drawn from.
        schema: the project's schema.
        study: the Optuna study.
        run: this process's options.
        logger: the search's logger.
        trackers: the trackers the study is sent to (MLflow's, when tracking is on).
    """

    project: Project
    folder: StudyFolder
    settings: SearchSettings
    pruner: TrialPruner
    space: Any
    schema: dict
    study: Any
    run: RunOptions
    logger: logging.Logger
    trackers: Trackers

    def sync_study(self, status: str, trials: tuple[int, ...] | None = None) -> None:
        """Send the trackers the study's `status` and its trials numbered `trials` (None: all)."""
        self.trackers.send("sync_study", self.folder.path, self.study, self.settings.as_record(), status, trials)


def comparable_space(record: Any) -> Any:
    """A space record without its file paths: the same space read from elsewhere is the same."""
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in ("file", "config")}


def describe_setting(field: str, value: Any) -> str:
    """A setting as a phrase: `--metric validation.loss`, `the search space of configs/a.json`."""
    if field == "space":
        return f"the search space of {value.get('file') if isinstance(value, dict) else value}"
    if field == "storage":
        storage = value or {}
        return f"the database {storage['url']}" if storage.get("kind") == "database" else "its journal file"
    return f"{flag(field)} {value}"


def load_study(storage: Any, settings: SearchSettings, space: Any, pruner: TrialPruner) -> Any:
    """Create the Optuna study, or load it when another run created it.

    Raises:
        ConfigError: the storage holds a study of that name with the other direction.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=settings.name,
        direction=optuna.study.StudyDirection[settings.direction.upper()],
        sampler=make_sampler(settings, space, 0),
        pruner=pruner.optuna_pruner(),
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != settings.direction:
        raise ConfigError(
            f"the storage already holds a study {settings.name!r} that is to {stored}, not {settings.direction}: "
            "choose another --experiment-name"
        )
    return study


def trained_epochs(experiment: Experiment) -> int:
    """Epochs an experiment has trained: its latest standard checkpoint's epoch, or 0."""
    if not experiment.exists():
        return 0
    found = checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",))
    return found[-1].epoch if found else 0


def record_stop(experiment: Experiment, reason: str, detail: str, settings: SearchSettings) -> None:
    """Append to a trial's metrics.jsonl how the study ended it (`torchexp.metrics.PRUNED`,
    or FAILED for a metric that was not finite) as a "stop" line after its last `train`'s,
    so that `compare` and `ExperimentView.state` say so rather than how training ended."""
    if experiment.exists():
        stop = Stop(reason, trained_epochs(experiment), settings.max_epochs, detail, settings.unit)
        TensorBoardTracker(experiment.tensorboard_path, experiment.metrics_path).log_stop(stop)
