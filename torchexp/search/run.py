"""A search process: check everything, open the study, then pick and train trials until
the study has its trials and none can be promoted, or the timeout has passed.

Several processes (on one machine, or on several sharing the experiments folder and a
database) run the same function on the same study and share its work.
"""

import dataclasses
import logging
import os
import time
from typing import Any

from torchexp.config import load_schema, parse_override
from torchexp.errors import ConfigError, ExperimentError, TorchexpError, TrainingInterrupted
from torchexp.project import Project
from torchexp.search.scheduler import Work, hold_scheduler_lock, pick_work
from torchexp.search.space import SearchSpace, load_space
from torchexp.search.storage import connect_database, describe_storage, open_journal
from torchexp.metrics import normalize_direction, parse_metric
from torchexp.search.study import SearchSettings, StudyFolder, check_rungs, load_study
from torchexp.search.trial import record_outcome, train_trial
from torchexp.search.report import format_parameters
from torchexp.tracking import close_logger, make_logger

POLL_SECONDS = 2.0  # how often a process with nothing to do looks again while others train


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """The `search` command's options that run a search."""

    space_path: str
    trials: int
    config_path: str
    schema_path: str
    overrides: tuple[str, ...] = ()
    metric: str = "validation.loss"
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int = 0
    max_epochs: int | None = None
    min_epochs: int = 1
    reduction_factor: int = 3
    startup_trials: int = 5
    storage: str | None = None
    timeout: float | None = None
    device: str = "auto"
    num_workers: int = 0
    log_period: int = 100


@dataclasses.dataclass
class Search:
    """An open study and what its trials are made from."""

    project: Project
    folder: StudyFolder
    settings: SearchSettings
    space: SearchSpace
    schema: dict
    study: Any
    logger: logging.Logger


def run_search(project: Project, experiments_path: str, study_name: str | None, request: SearchRequest) -> Search:
    """Validate the request, create or continue the study, and work on it until done.

    Everything is checked before anything is written: the space against the schema, the
    storage by connecting to it, and a continued study's settings against study.json.

    Returns:
        The search, for its summary; its logger is closed.

    Raises:
        ConfigError: a bad space, metric or option, or settings that differ from the study's.
        StorageError: the storage cannot be reached.
        TrainingInterrupted: Ctrl-C or SIGTERM; the trial in progress is saved.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = StudyFolder(experiments_path, study_name)
    folder.check_usable()
    schema = load_schema(request.schema_path)
    space = load_space(request.space_path, request.config_path, schema, parse_fixed(request.overrides))
    settings = make_settings(folder.name, space, schema, request)
    total = count_trials(settings, space, request.trials)
    database = connect_database(request.storage) if request.storage else None
    os.makedirs(folder.path, exist_ok=True)
    with hold_scheduler_lock(folder):
        folder.write_or_check_settings(settings)
    logger = make_logger(f"search.{folder.name}", folder.log_path, project.verbosity)
    try:
        study = load_study(database or open_journal(folder.path), settings, space)
        search = Search(project, folder, settings, space, schema, study, logger)
        if total < request.trials:
            logger.info(f"the grid has {total} points: --trials {request.trials} is capped at {total}")
        logger.info(f"search {folder.name!r} (pid {os.getpid()}): {total} trials, {settings.sampler} sampler, {settings.pruner} pruner, {settings.direction} {settings.metric}")
        work_until_done(search, request, total)
        return search
    except KeyboardInterrupt:
        raise TrainingInterrupted("search stopped by SIGINT between trials; nothing was lost: run the same command to continue") from None
    finally:
        close_logger(logger)


def parse_fixed(overrides: tuple[str, ...]) -> dict[str, Any]:
    """Turn `--set key=value` options into fixed values of the space."""
    fixed = {}
    for text in overrides:
        keys, value = parse_override(text)
        fixed[".".join(keys)] = value
    return fixed


def make_settings(name: str, space: SearchSpace, schema: dict, request: SearchRequest) -> SearchSettings:
    """The study's settings from the request; --max-epochs defaults to the space's trainer.max_epochs.

    Raises:
        ConfigError: a malformed metric, or --min-epochs beyond --max-epochs.
    """
    parse_metric(request.metric)
    max_epochs = request.max_epochs or space.build_config(schema, {})["trainer"]["max_epochs"]
    check_rungs(request.min_epochs, max_epochs)
    return SearchSettings(
        name=name,
        space=space.as_record(),
        metric=request.metric,
        direction=normalize_direction(request.direction),
        sampler=request.sampler,
        pruner=request.pruner,
        seed=request.seed,
        max_epochs=max_epochs,
        min_epochs=request.min_epochs,
        reduction_factor=request.reduction_factor,
        startup_trials=request.startup_trials,
        storage=describe_storage(request.storage),
    )


def count_trials(settings: SearchSettings, space: SearchSpace, trials: int) -> int:
    """The trials the study is to have: --trials, capped by the grid's size for a grid.

    Raises:
        ConfigError: a grid over a float range.
    """
    if settings.sampler != "grid":
        return trials
    return min(trials, space.grid_size())


def work_until_done(search: Search, request: SearchRequest, total: int) -> None:
    """Pick and train trials until the scheduler says the search is done or the timeout passes."""
    started = time.monotonic()
    waiting = False
    while True:
        if request.timeout is not None and time.monotonic() - started >= request.timeout:
            search.logger.info(f"--timeout {request.timeout:g} s reached: starting nothing more (the same command continues the study)")
            return
        with hold_scheduler_lock(search.folder):
            work = pick_work(search.study, search.folder, search.settings, search.space, total)
        if work == "done":
            return
        if work == "wait":
            if not waiting:
                search.logger.info("every trial is taken: waiting for the other search processes")
            waiting = True
            time.sleep(POLL_SECONDS)
            continue
        waiting = False
        do_work(search, request, work)


def do_work(search: Search, request: SearchRequest, work: Work) -> None:
    """Train one claimed trial and record how it ended, then give its claim up."""
    training = {"device": request.device, "num_workers": request.num_workers, "log_period": request.log_period}
    params = search.study.get_trials(deepcopy=False)[work.number].params
    search.logger.info(f"trial {work.number} ({work.kind}): {format_parameters(params)}; training to epoch {work.target_epochs}")
    try:
        try:
            outcome = train_trial(search.project, search.folder, search.study, search.settings, search.space, search.schema, work, training, search.logger)
        except TrainingInterrupted as error:
            raise TrainingInterrupted(f"search stopped in trial {work.number}: {error}; the same search command continues it") from error
        except TorchexpError as error:
            search.logger.info(f"trial {work.number} stopped the search: {error}")
            raise
        with hold_scheduler_lock(search.folder):
            message = record_outcome(search.study, search.folder, search.settings, work, outcome)
            work.claim.release()
        search.logger.info(f"trial {work.number} {message}")
    finally:
        work.claim.release()


def open_study(experiments_path: str, study_name: str | None, storage_url: str | None) -> tuple[StudyFolder, SearchSettings, Any, Any]:
    """Open an existing study for --status or --dashboard: its folder, settings, Optuna
    storage and Optuna study.

    Raises:
        ExperimentError: no such study.
        ConfigError: the study lives in a database and no --storage names it.
        StorageError: the database cannot be reached.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = StudyFolder(experiments_path, study_name)
    folder.check_exists()
    recorded = folder.read_settings()
    settings = SearchSettings(**{field.name: recorded[field.name] for field in dataclasses.fields(SearchSettings)})
    if settings.storage["kind"] == "database" and storage_url is None:
        raise ConfigError(f"study {folder.name!r} lives in the database {settings.storage['url']}: pass --storage with its URL")
    storage = connect_database(storage_url) if storage_url else open_journal(folder.path)
    try:
        return folder, settings, storage, optuna.load_study(study_name=settings.name, storage=storage)
    except KeyError:
        raise ExperimentError(f"the storage of study {folder.name!r} holds no study of that name: is --storage the one it was created with?") from None
