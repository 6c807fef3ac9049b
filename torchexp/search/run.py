"""A search process: check everything, open the study, then pick and train trials until
the study has its trials and none can be promoted, or the timeout has passed.

Several processes (on one machine, or on several sharing the experiments folder and a
database) run the same function on the same study and share its work.
"""

import dataclasses
import os
import time
from typing import Any

from torchexp.budget import unit_of
from torchexp.config import load_schema, parse_overrides
from torchexp.directions import declared_directions, direction_of, normalize_direction
from torchexp.errors import ConfigError, ExperimentError, TorchexpError, TrainingInterrupted
from torchexp.logs import close_logger, make_logger
from torchexp.metrics import parse_metric
from torchexp.project import Project, import_project_class
from torchexp.search.metric_check import check_metric_reported
from torchexp.search.options import RunOptions, StudyOptions, flag
from torchexp.search.pruners import make_trial_pruner
from torchexp.search.report import format_parameters
from torchexp.search.scheduler import Work, hold_scheduler_lock, pick_work
from torchexp.search.space import SearchSpace, load_space
from torchexp.search.storage import connect_database, describe_storage, open_journal
from torchexp.search.study import (
    Search,
    SearchSettings,
    StudyFolder,
    check_rungs,
    load_study,
)
from torchexp.search.trial import record_outcome, train_trial
from torchexp.trackers.base import FINISHED, KILLED, RUNNING
from torchexp.trackers.fanout import Trackers

POLL_SECONDS = 2.0  # how often a process with nothing to do looks again while others train


def run_search(
    project: Project, experiments_path: str, study_name: str | None, options: StudyOptions, run: RunOptions
) -> Search:
    """Validate the options, create or continue the study, and work on it until done.

    Everything is checked before anything is written: the space against the schema, the
    storage by connecting to it, a new study's metric on one batch of the project's step
    (`torchexp.search.metric_check`), and a continued study's settings against study.json.

    Args:
        project: the project whose experiments the trials are.
        experiments_path: the folder holding the study.
        study_name: the study's name.
        options: the options that define the study.
        run: this process's options; `space` and `trials` are required.

    Returns:
        The search, for its summary; its logger is closed.

    Raises:
        ConfigError: a missing space or trials, a bad space, metric or option, a metric the
            project does not report, or settings that differ from the study's.
        ProjectError: the project's hooks failed in the metric's check.
        StorageError: the storage cannot be reached.
        TrainingInterrupted: Ctrl-C or SIGTERM; the trial in progress is saved.
    """
    import optuna

    if run.space is None or run.trials is None:
        raise ConfigError(
            f"pass {flag('space')} FILE and {flag('trials')} N "
            "to run a search (or --status, --dashboard to look at one)"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = StudyFolder(experiments_path, study_name)
    folder.check_usable()
    schema = load_schema(run.schema_path)
    space = load_space(run.space, run.config_path, schema, parse_overrides(list(run.overrides)))
    declared = declared_directions(import_project_class(project.runner_class))
    settings = make_settings(folder.name, space, schema, options, run.storage, declared)
    total = count_trials(settings, space, run.trials)
    database = connect_database(run.storage) if run.storage else None
    if not folder.exists():  # a study's metric was checked when it was created
        check_metric_reported(project, space.build_config(schema, {}), settings.seed, settings.metric, run.device)
    os.makedirs(folder.path, exist_ok=True)
    with hold_scheduler_lock(folder):
        folder.write_or_check_settings(settings)
    logger = make_logger(f"search.{folder.name}", folder.log_path, project.verbosity)
    search = None
    try:
        pruner = make_trial_pruner(settings)
        study = load_study(database or open_journal(folder.path), settings, space, pruner)
        search = Search(
            project,
            folder,
            settings,
            pruner,
            space,
            schema,
            study,
            run,
            logger,
            Trackers.open(project.trackers, None, logger),
        )
        if total < run.trials:
            logger.info(f"the grid has {total} points: {flag('trials')} {run.trials} is capped at {total}")
        logger.info(
            f"search {folder.name!r} (pid {os.getpid()}): {total} trials, {settings.sampler} sampler, "
            f"{settings.pruner} pruner, {settings.direction} {settings.metric}"
        )
        search.sync_study(RUNNING, trials=())
        try:
            done = work_until_done(search, total)
        except BaseException:
            search.sync_study(KILLED)
            raise
        search.sync_study(FINISHED if done else KILLED)
        return search
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            "search stopped by SIGINT between trials; nothing was lost: run the same command to continue"
        ) from None
    finally:
        if search is not None:
            search.trackers.close()
        close_logger(logger)


def make_settings(
    name: str,
    space: SearchSpace,
    schema: dict,
    options: StudyOptions,
    storage_url: str | None,
    declared: dict[str, str] | None = None,
) -> SearchSettings:
    """The study's settings from its options; max_epochs defaults to the space's
    trainer.max_epochs, or to its trainer.max_steps when it trains by steps (the study's
    epochs, rungs and reports then count steps), and the direction to the metric's: as
    `declared` (the Runner's metric_directions, normalized) says, else by its name.

    Raises:
        ConfigError: a malformed metric or direction, or min_epochs beyond max_epochs.
    """
    metric = parse_metric(options.metric)[1]
    base = space.build_config(schema, {})
    unit = unit_of(base)
    max_epochs = options.max_epochs or base["trainer"][f"max_{unit}s"]
    check_rungs(options.min_epochs, max_epochs)
    given = options.direction
    direction = normalize_direction(given) if given is not None else direction_of(metric, declared or {})
    resolved = dataclasses.replace(options, max_epochs=max_epochs, direction=direction)
    return SearchSettings(
        **dataclasses.asdict(resolved),
        name=name,
        space=space.as_record(),
        storage=describe_storage(storage_url),
        unit=unit,
    )


def count_trials(settings: SearchSettings, space: SearchSpace, trials: int) -> int:
    """The trials the study is to have: `trials`, capped by the grid's size for a grid.

    Raises:
        ConfigError: a grid over a float range.
    """
    if settings.sampler != "grid":
        return trials
    return min(trials, space.grid_size())


def work_until_done(search: Search, total: int) -> bool:
    """Pick and train trials until the scheduler says the search is done (True) or the
    timeout passes (False)."""
    timeout = search.run.timeout
    started = time.monotonic()
    waiting = False
    while True:
        if timeout is not None and time.monotonic() - started >= timeout:
            search.logger.info(
                f"{flag('timeout')} {timeout:g} s reached: starting nothing more (the same command continues the study)"
            )
            return False
        with hold_scheduler_lock(search.folder):
            work = pick_work(search, total)
        if work == "done":
            return True
        if work == "wait":
            if not waiting:
                search.logger.info("every trial is taken: waiting for the other search processes")
            waiting = True
            time.sleep(POLL_SECONDS)
            continue
        waiting = False
        do_work(search, work)


def do_work(search: Search, work: Work) -> None:
    """Train one claimed trial and record how it ended, then give its claim up."""
    params = search.study.get_trials(deepcopy=False)[work.number].params
    search.logger.info(
        f"trial {work.number} ({work.kind}): {format_parameters(params)}; "
        f"training to {search.settings.unit} {work.target_epochs}"
    )
    try:
        try:
            outcome = train_trial(search, work)
        except TrainingInterrupted as error:
            raise TrainingInterrupted(
                f"search stopped in trial {work.number}: {error}; the same search command continues it"
            ) from error
        except TorchexpError as error:
            search.logger.info(f"trial {work.number} stopped the search: {error}")
            raise
        with hold_scheduler_lock(search.folder):
            message = record_outcome(search, work, outcome)
            work.claim.release()
        search.logger.info(f"trial {work.number} {message}")
        search.sync_study(RUNNING, trials=(work.number,))
    finally:
        work.claim.release()


def open_study(
    experiments_path: str, study_name: str | None, storage_url: str | None
) -> tuple[StudyFolder, SearchSettings, Any, Any]:
    """Open an existing study for --status or --dashboard: its folder, settings, Optuna
    storage and Optuna study.

    Raises:
        ExperimentError: no such study, or its study.json lacks a setting.
        ConfigError: the study lives in a database and no storage URL names it.
        StorageError: the database cannot be reached.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = StudyFolder(experiments_path, study_name)
    folder.check_exists()
    settings = folder.read_settings()
    if settings.storage["kind"] == "database" and storage_url is None:
        raise ConfigError(
            f"study {folder.name!r} lives in the database {settings.storage['url']}: "
            f"pass {flag('storage')} with its URL"
        )
    storage = connect_database(storage_url) if storage_url else open_journal(folder.path)
    try:
        return folder, settings, storage, optuna.load_study(study_name=settings.name, storage=storage)
    except KeyError:
        raise ExperimentError(
            f"the storage of study {folder.name!r} holds no study of that name: "
            f"is {flag('storage')} the one it was created with?"
        ) from None
