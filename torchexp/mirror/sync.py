"""`sync`: send MLflow whatever the experiment folders hold and it lacks.

Runs trained while no server was reachable, epochs logged while it was down, tests,
statuses, studies and their trials, and releases (registered from their ONNX export).
Everything is compared with what the server holds first, so running it twice sends
nothing the second time.
"""

import logging
import os
from collections.abc import Iterator

from torchexp import checkpoints
from torchexp.errors import ConfigError, ExperimentError
from torchexp.folder import Experiment
from torchexp.locks import is_locked
from torchexp.mirror.records import RUNNING
from torchexp.mirror.registry import choose_model_name, register_release
from torchexp.mirror.runs import connect
from torchexp.mirror.studies import StudyMirror, make_run_mirror
from torchexp.mirror.target import MlflowTarget
from torchexp.project import Project

STUDY_FILE = "study.json"  # what makes a folder a study (torchexp.search.study)


def sync_folders(
    target: MlflowTarget | None,
    project: Project,
    experiments_path: str,
    name: str | None,
    storage_url: str | None,
    logger: logging.Logger,
) -> Iterator[str]:
    """Sync the experiment or study `name`, or every one under `experiments_path` when None;
    yield one line per folder saying what was sent.

    Raises:
        ConfigError: tracking is off.
        ExperimentError: `name` is neither an experiment nor a study, or there is none.
        TrackingError: MLflow cannot be reached or refuses what is sent.
    """
    if target is None:
        raise ConfigError("sync needs an MLflow server: pass --mlflow-uri or set MLFLOW_TRACKING_URI")
    client = connect(target)  # mlflow must be installed; nothing is sent yet
    names = [name] if name is not None else list_folders(experiments_path)
    for found in names:
        if kind_of(experiments_path, found) is None:
            raise ExperimentError(
                f"{found!r} in {os.path.abspath(experiments_path)} is neither an experiment nor a study: "
                "there is nothing to sync"
            )
    if not names:
        raise ExperimentError(f"{os.path.abspath(experiments_path)} holds no experiment or study to sync")
    for found in names:
        if kind_of(experiments_path, found) == "study":
            yield f"study {found}: {sync_study(client, target, experiments_path, found, storage_url)}"
        else:
            summary = sync_experiment(client, target, project, Experiment(experiments_path, found), logger)
            yield f"experiment {found}: {summary}"


def list_folders(experiments_path: str) -> list[str]:
    """The experiments and studies directly under `experiments_path`, by name."""
    if not os.path.isdir(experiments_path):
        return []
    return sorted(
        name
        for name in os.listdir(experiments_path)
        if not name.startswith(".") and kind_of(experiments_path, name) is not None
    )


def kind_of(experiments_path: str, name: str) -> str | None:
    """ "experiment", "study", or None for a folder that is neither."""
    folder = os.path.join(experiments_path, name)
    if os.path.isfile(os.path.join(folder, "config.json")):
        return "experiment"
    if os.path.isfile(os.path.join(folder, STUDY_FILE)):
        return "study"
    return None


def sync_experiment(
    client: object, target: MlflowTarget, project: Project, experiment: Experiment, logger: logging.Logger
) -> str:
    """Sync one experiment's run and register its releases; say what was sent."""
    mirror = make_run_mirror(client, target, experiment, experiment.read_definition())
    said = [mirror.sync().describe()]
    for release in checkpoints.list_checkpoints(experiment.checkpoints_path, ("release",)):
        model_name = choose_model_name(experiment, release.epoch, None)
        version, new = register_release(client, mirror, project, release, model_name, logger)
        if new:
            said.append(f"registered the release of epoch {release.epoch} as {model_name!r} version {version.version}")
    return "; ".join(said)


def sync_study(client: object, target: MlflowTarget, experiments_path: str, name: str, storage_url: str | None) -> str:
    """Sync a study's run and its trials' runs; say what was sent."""
    from torchexp.search.run import open_study

    folder, settings, _, study = open_study(experiments_path, name, storage_url)
    # A search process holds the claim of each trial it trains: then the study is running.
    claims = (
        [os.path.join(folder.claims_path, claim) for claim in os.listdir(folder.claims_path)]
        if os.path.isdir(folder.claims_path)
        else []
    )
    status = RUNNING if any(is_locked(claim) for claim in claims) else None
    changed = StudyMirror(client, target, folder.path).sync(study, settings.as_record(), status)
    return f"{changed} trial runs updated" if changed else "nothing new in its trials"
