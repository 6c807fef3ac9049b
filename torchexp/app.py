"""What every command shares: the `App` built by the group callback, and the project's classes.

Nothing here imports torch: `--help`, `info` and the inspection commands answer at once.
"""

import importlib
import importlib.metadata
import json
import os
import platform
from typing import Any

import click

from torchexp.config import Config, fill_trainer_defaults
from torchexp.errors import DataError
from torchexp.experiment import Experiment
from torchexp.tracking import Tracker, close_logger, make_logger

__version__ = "0.1.0"


class App:
    """The options of the group and the project's classes, shared by every command.

    Args:
        data_class: the project's Data subclass, or "module:Class" to import it lazily.
        runner_class: the project's Runner subclass, or "module:Class".
        experiment_name: --experiment-name.
        experiments_path: --experiments-path.
        data_path: --data-path.
        verbosity: "quiet", "normal" or "verbose".
    """

    def __init__(
        self,
        data_class: type | str,
        runner_class: type | str,
        experiment_name: str | None,
        experiments_path: str,
        data_path: str,
        verbosity: str,
    ):
        self.data_class = data_class
        self.runner_class = runner_class
        self.experiment_name = experiment_name
        self.experiments_path = experiments_path
        self.data_path = data_path
        self.verbosity = verbosity

    def experiment(self) -> Experiment:
        """Return the named experiment, which may not exist yet."""
        return Experiment(self.experiments_path, self.experiment_name)

    def open_experiment(self) -> Experiment:
        """Return the named experiment, which must exist."""
        experiment = self.experiment()
        experiment.check_exists()
        return experiment

    def make_data(self, experiment: Experiment, record: dict, logger: Any) -> Any:
        """Build the project's Data with its saved state, data sets and loaders loaded."""
        data = load_class(self.data_class)(Config(record["config"]), record["seed"], logger)
        data.state = experiment.read_data_state()
        check_data_path(self.data_path)
        data.load_datasets(self.data_path)
        return data

    def make_runner(self, experiment: Experiment, record: dict, num_workers: int, world: Any = None) -> Any:
        """Build the project's Runner with its Data, logger and tracker.

        Args:
            experiment: the experiment, which must exist.
            record: its config.json.
            num_workers: data loader worker processes.
            world: a torchexp.distributed.World; ranks other than 0 log only warnings
                to the console and write no file.
        """
        from torchexp.distributed import World

        world = world or World()
        log_path, verbosity = (experiment.log_path, self.verbosity) if world.is_main else (None, "quiet")
        logger = make_logger(experiment.name, log_path, verbosity)
        try:
            data = self.make_data(experiment, record, logger)
            data.load_loaders(self.data_path, num_workers)
            tracker = Tracker(experiment.tensorboard_path, experiment.metrics_path, enabled=world.is_main)
            runner_class = load_class(self.runner_class)
            config = Config(fill_trainer_defaults(record["config"]))
            return runner_class(experiment, config, record["seed"], data, logger, tracker, verbosity == "quiet", world=world)
        except BaseException:
            # The caller only closes the logger of a runner it got.
            close_logger(logger)
            raise


pass_app = click.make_pass_decorator(App)


def load_class(spec: type | str) -> type:
    """Return a class, importing it from "module:Class" on first use."""
    if isinstance(spec, type):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def class_spec(spec: type | str) -> str:
    """Return "module:Class" for a class or a spec, as config.json and releases record it."""
    if isinstance(spec, str):
        return spec
    return f"{spec.__module__}:{spec.__qualname__}"


def check_data_path(data_path: str) -> None:
    """Raise DataError when the data path exists but is not a folder."""
    if os.path.exists(data_path) and not os.path.isdir(data_path):
        raise DataError(f"data path {data_path} is a file, not a folder")


def record_versions() -> dict[str, str]:
    """Return the versions worth recording with an experiment, without importing torch."""
    versions = {"torchexp": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def check_json_data(value: Any, source: str) -> None:
    """Raise TypeError when `value` is not JSON data (a programming error in the project)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{source} must return JSON data: {error}") from error
