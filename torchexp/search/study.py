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
import os
from typing import Any

import optuna

from torchexp.errors import ConfigError, ExperimentError
from torchexp.folder import Experiment, validate_name
from torchexp.search.asha import make_rungs
from torchexp.files import read_json, write_json_atomic

SETTINGS_FILE = "study.json"
SETTINGS_FORMAT = 1
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "median", "none")
# How each setting is named on the command line, for messages about a changed one.
OPTION_NAMES = {
    "space": "--space",
    "metric": "--metric",
    "direction": "--direction",
    "sampler": "--sampler",
    "pruner": "--pruner",
    "seed": "--seed",
    "max_epochs": "--max-epochs",
    "min_epochs": "--min-epochs",
    "reduction_factor": "--reduction-factor",
    "startup_trials": "--startup-trials",
    "storage": "--storage",
}


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """What a study is: fixed when it is created, checked on every later run.

    Attributes:
        name: the study's name (its folder, and its name in the storage).
        space: the space's record (`SearchSpace.as_record`).
        metric: "split.name", e.g. "validation.loss".
        direction: "minimize" or "maximize".
        sampler: "tpe", "random" or "grid".
        pruner: "asha", "median" or "none".
        seed: the seed of every trial and of the sampler.
        max_epochs: epochs a trial trains at most.
        min_epochs: the first ASHA rung; epochs before the median pruner may stop a trial.
        reduction_factor: ASHA's eta: a rung promotes its best 1/eta.
        startup_trials: trials the median pruner lets finish before it prunes any.
        storage: `torchexp.search.storage.describe_storage`'s record.
    """

    name: str
    space: dict
    metric: str
    direction: str
    sampler: str
    pruner: str
    seed: int
    max_epochs: int
    min_epochs: int
    reduction_factor: int
    startup_trials: int
    storage: dict

    @property
    def rungs(self) -> list[int]:
        """Epochs at which ASHA pauses a trial, the last being max_epochs."""
        return make_rungs(self.min_epochs, self.reduction_factor, self.max_epochs)

    def as_record(self) -> dict[str, Any]:
        """study.json's content, less its creation time."""
        return {"format": SETTINGS_FORMAT, **dataclasses.asdict(self)}


def check_rungs(min_epochs: int, max_epochs: int) -> None:
    """Raise ConfigError when the first rung lies beyond the last epoch."""
    if min_epochs > max_epochs:
        raise ConfigError(f"--min-epochs {min_epochs} is more than --max-epochs {max_epochs}")


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
                f"study {self.name!r} does not exist in {self.experiments_path}: start it with search --space FILE --trials N"
            )

    def check_usable(self) -> None:
        """Raise ExperimentError when the name holds something other than a study."""
        if self.exists() or not os.path.lexists(self.path):
            return
        if os.path.isfile(os.path.join(self.path, "config.json")):
            raise ExperimentError(f"{self.name!r} in {self.experiments_path} is an experiment, not a study; choose another --experiment-name")
        if not os.path.isdir(self.path) or os.listdir(self.path):
            raise ExperimentError(f"{self.path} exists and is not a study; choose another --experiment-name")

    def trial_name(self, number: int) -> str:
        """The experiment name of trial `number`: trial-0003."""
        return f"trial-{number:04d}"

    def trial_experiment(self, number: int) -> Experiment:
        """The experiment of trial `number` (it may not exist yet)."""
        return Experiment(self.path, self.trial_name(number))

    def trial_address(self, number: int) -> str:
        """The global options that address trial `number`, as the user typed the experiments path."""
        return f"--experiments-path {os.path.join(self.experiments_path, self.name)} --experiment-name {self.trial_name(number)}"

    def read_settings(self) -> dict[str, Any]:
        """study.json's content."""
        return read_json(self.settings_path, f"settings of study {self.name!r}", ExperimentError)

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
        for field, option in OPTION_NAMES.items():
            old, new = recorded.get(field), getattr(settings, field)
            if field == "space":
                old, new = comparable_space(old), comparable_space(new)
            if old != new:
                raise ConfigError(
                    f"study {self.name!r} was created with {describe_setting(field, recorded.get(field))}, not "
                    f"{describe_setting(field, getattr(settings, field))}: run it with the same {option}, or choose another --experiment-name"
                )


def comparable_space(record: Any) -> Any:
    """A space record without its file paths: the same space read from elsewhere is the same."""
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in ("file", "config")}


def describe_setting(field: str, value: Any) -> str:
    """A setting as a phrase: `--metric validation.loss`, `another search space (configs/a.json)`."""
    if field == "space":
        return f"the search space of {value.get('file') if isinstance(value, dict) else value}"
    if field == "storage":
        storage = value or {}
        return f"the database {storage['url']}" if storage.get("kind") == "database" else "its journal file"
    return f"{OPTION_NAMES[field]} {value}"


def derive_seed(seed: int, count: int) -> int:
    """The sampler's seed for the study's trial number `count`: every trial draws from its
    own generator, so that workers sharing one seed do not draw the same values, and a
    study's draws do not depend on which process made them."""
    return (seed * 1_000_003 + count) % 2**32


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, except that telling the grid's last trial does not call
    `study.stop()`, which only works inside `optimize()`: the search caps --trials at the
    grid's size instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


def make_sampler(settings: SearchSettings, space: Any, count: int) -> Any:
    """The Optuna sampler that draws trial number `count`."""
    if settings.sampler == "grid":
        return GridSampler(space.grid(), seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=derive_seed(settings.seed, count))
    return optuna.samplers.TPESampler(seed=derive_seed(settings.seed, count))


def make_pruner(settings: SearchSettings) -> Any:
    """Optuna's MedianPruner for "median"; ASHA is the scheduler's, so Optuna's pruner stays idle."""
    if settings.pruner == "median":
        # Steps are epochs from 1: a trial may be stopped from epoch min_epochs on.
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=settings.min_epochs)
    return optuna.pruners.NopPruner()


def load_study(storage: Any, settings: SearchSettings, space: Any) -> Any:
    """Create the Optuna study, or load it when another run created it.

    Raises:
        ConfigError: the storage holds a study of that name with the other direction.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=settings.name,
        direction=settings.direction,
        sampler=make_sampler(settings, space, 0),
        pruner=make_pruner(settings),
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != settings.direction:
        raise ConfigError(f"the storage already holds a study {settings.name!r} that is to {stored}, not {settings.direction}: choose another --experiment-name")
    return study
