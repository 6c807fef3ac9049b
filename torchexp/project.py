"""A project: its Data and Runner classes, and how torchexp builds them for an experiment.

The command line, the search, serving, export and the Python API all build a project's
objects here, so that each gets them the same way. Nothing here imports torch: the
classes are imported from "module:Class" on first use.
"""

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
from typing import Any

from torchexp.config import Config, fill_trainer_defaults
from torchexp.errors import DataError, ProjectError, first_line
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import close_logger, make_logger
from torchexp.provenance import watching_reads
from torchexp.trackers.fanout import RunTrackers
from torchexp.trackers.plugins import TrackerSpec
from torchexp.version import __version__

ClassSpec = type | str  # a class, or "module:Class" to import it on first use


@dataclasses.dataclass(frozen=True)
class Project:
    """A project's classes, where its data lives, and how much its commands say.

    Args:
        data_class: the project's Data subclass, or "module:Class".
        runner_class: the project's Runner subclass, or "module:Class".
        data_path: the folder holding (or receiving) the data sets.
        verbosity: "quiet", "normal" or "verbose" on the console.
        trackers: the trackers its commands send runs to, beside TensorBoard (`torchexp.trackers`).
    """

    data_class: ClassSpec
    runner_class: ClassSpec
    data_path: str = "data"
    verbosity: str = "normal"
    trackers: tuple[TrackerSpec, ...] = ()

    def classes(self) -> dict[str, str]:
        """{"data": "module:Class", "runner": "module:Class"}, as config.json records them."""
        return {"data": class_spec(self.data_class), "runner": class_spec(self.runner_class)}

    def make_data(self, experiment: Experiment, definition: dict, logger: Any) -> Any:
        """Build the project's Data with the state `init` saved and its data sets loaded.

        Args:
            experiment: the experiment, which must exist.
            definition: its config.json.
            logger: the experiment's logger.
        """
        data = import_project_class(self.data_class)(Config(definition["config"]), definition["seed"], logger)
        data.state = experiment.read_data_state()
        check_data_path(self.data_path)
        with watching_reads() as reads:
            data.load_datasets(self.data_path)
        data.read_files = data.data_files(self.data_path) or reads
        return data

    def make_runner(self, experiment: Experiment, definition: dict, num_workers: int, world: Any = None) -> Any:
        """Build the project's Runner with its Data (data sets and loaders loaded), logger
        and tracker.

        Args:
            experiment: the experiment, which must exist.
            definition: its config.json.
            num_workers: data loader worker processes.
            world: a torchexp.distributed.World; ranks other than 0 log only warnings
                to the console and write no file.
        """
        from torchexp.distributed import World

        world = world or World()
        log_path, verbosity = (experiment.log_path, self.verbosity) if world.is_main else (None, "quiet")
        logger = make_logger(experiment.name, log_path, verbosity)
        try:
            with project_errors(logger):
                data = self.make_data(experiment, definition, logger)
                data.num_workers = num_workers
                data.load_loaders(self.data_path, num_workers)
                tracker = RunTrackers(experiment.tensorboard_path, experiment.metrics_path, enabled=world.is_main)
                config = Config(fill_trainer_defaults(definition["config"]))
                runner_class = import_project_class(self.runner_class)
                return runner_class(
                    experiment, config, definition["seed"], data, logger, tracker, verbosity == "quiet", world=world
                )
        except BaseException:
            # The caller only closes the logger of a runner it got.
            close_logger(logger)
            raise


def load_class(spec: ClassSpec) -> type:
    """Return a class, importing it from "module:Class" on first use."""
    if isinstance(spec, type):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def import_project_class(spec: ClassSpec) -> type:
    """Return a project's class, importing it from "module:Class" on first use.

    Raises:
        ProjectError: the project's module fails to import (a syntax error, a missing
            dependency), or has no such class; the message names both.
    """
    try:
        return load_class(spec)
    except Exception as error:  # a module's top-level code may raise anything
        raise ProjectError(
            f"the project's class {class_spec(spec)} cannot be imported: {type(error).__name__}: {first_line(error)}"
        ) from error


def class_spec(spec: ClassSpec) -> str:
    """Return "module:Class" for a class or a spec, as config.json and releases record it."""
    if isinstance(spec, str):
        return spec
    return f"{spec.__module__}:{spec.__qualname__}"


def project_name(spec: ClassSpec) -> str:
    """The top-level package of a project's class: `mnist_classifier`, the project's name."""
    return class_spec(spec).partition(":")[0].split(".")[0]


def find_project_root(spec: ClassSpec) -> str | None:
    """The folder that holds the top-level package of a class's module: the project's root
    (where its pyproject.toml is, for a project `torchexp create` wrote), or None when
    Python cannot find it. The package is located, not imported."""
    module = spec.__module__ if isinstance(spec, type) else spec.partition(":")[0]
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    path = locations[0] if locations else getattr(found, "origin", None)
    if not path or not os.path.exists(path):
        return None
    return os.path.dirname(os.path.abspath(path))


def describe_import_failure(spec: str, project_root: str | None, error: Exception) -> str:
    """Why a project's class cannot be imported, and what to do, in one sentence.

    Args:
        spec: the class, "module:Class".
        project_root: where the project was at init (`find_project_root`), if known.
        error: the ImportError or AttributeError.
    """
    top = spec.partition(":")[0].split(".")[0]
    reason = f"{spec} cannot be imported ({error})"
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.origin is None and found.submodule_search_locations:
        # A folder named like the package, without __init__.py, is taken for a namespace
        # package: the project's own root, when a script runs from the folder above it.
        shadow = list(found.submodule_search_locations)[0]
        reason += f": Python took the folder {shadow} for the package {top!r}"
    if project_root:
        return (
            f"{reason}; the project is in {project_root}: "
            f"install it with pip install -e {project_root}, or run from that folder"
        )
    return f"{reason}: install the project's package, or run from the folder that holds it"


def check_data_path(data_path: str) -> None:
    """Raise DataError when the data path exists but is not a folder."""
    if os.path.exists(data_path) and not os.path.isdir(data_path):
        raise DataError(f"data path {data_path} is a file, not a folder")


def record_versions() -> dict[str, str]:
    """Return the versions worth keeping with an experiment, without importing torch."""
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
