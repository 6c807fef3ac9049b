"""Training an experiment, as `train` does: join the other ranks, take the lock, build the
project's Runner and run the loop.

A search trains its trials here too, so that resume, locks, checkpoints and Ctrl-C behave
exactly as they do for `train`. torch is imported inside the functions, not at module level.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torchexp import checkpoints
from torchexp.budget import Budget, read_budget
from torchexp.cores import keeping_torch_threads, share_cores_with_workers
from torchexp.directions import declared_directions, record_directions
from torchexp.errors import CheckpointError, LockError, TrainingInterrupted, first_line
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import close_logger
from torchexp.metrics import FAILED, INTERRUPTED, Stop
from torchexp.project import Project
from torchexp.provenance import append_record, collect, describe_changes, read_last
from torchexp.trackers.base import RunInfo


def train_experiment(
    project: Project,
    experiment: Experiment,
    device: str,
    num_workers: int,
    max_epochs: int | None,
    log_period: int,
    epoch: int | None = None,
    overwrite: bool = False,
    epoch_observers: tuple[Callable, ...] = (),
    max_steps: int | None = None,
) -> Stop:
    """Train `experiment` until `max_epochs` epochs are done (None: its trainer.max_epochs),
    or `max_steps` steps for an experiment trained by steps, resuming from its furthest
    checkpoint (or `epoch`). Under torchrun, each process trains one shard with DDP.

    Args:
        project: the project's classes, data path and verbosity.
        experiment: the experiment, which must exist.
        device: a --device value.
        num_workers: data loader worker processes.
        max_epochs: epochs to reach; None for the config's trainer.max_epochs.
        log_period: optimizer steps between iteration logs.
        epoch: resume from this standard checkpoint (an epoch, or a step) instead of the furthest one.
        overwrite: allow `epoch` to train over later checkpoints, deleting them.
        epoch_observers: called at each point, after its checkpoint (`torchexp.loop.EpochObserver`);
            one that returns a reason stops training there.
        max_steps: steps to reach, for an experiment trained by steps; None for its trainer.max_steps.

    Returns:
        Why training stopped, as metrics.jsonl records it.

    Raises:
        CheckpointError: `epoch` has no checkpoint, or later ones exist without `overwrite`.
        ConfigError: `max_epochs` for an experiment trained by steps, or `max_steps` for one
            trained by epochs.
        TrainingInterrupted: a stop signal arrived; an interrupt checkpoint was saved.
    """
    from torchexp.devices import resolve_device
    from torchexp.distributed import join, leave, map_device, read_world

    experiment.check_exists()
    world = read_world()
    # Check what can be checked before the lock and the log, so that a mistake
    # leaves the experiment as it was.
    if epoch is not None:
        checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)
        if not overwrite:
            check_no_later_checkpoints(experiment, epoch)
    torch_device = resolve_device(map_device(device, world))
    join(world, torch_device)
    try:
        limit = (
            (max_epochs, "--max-epochs")
            if max_epochs is not None
            else (max_steps, "--max-steps" if max_steps is not None else None)
        )
        stop = train_held(
            project, experiment, world, torch_device, num_workers, limit, log_period, epoch, overwrite, epoch_observers
        )
    except BaseException:
        leave(free_objects=False)
        raise
    leave()
    return stop


def train_held(
    project: Project,
    experiment: Experiment,
    world: Any,
    device: Any,
    num_workers: int,
    limit: tuple[int | None, str | None],
    log_period: int,
    epoch: int | None,
    overwrite: bool,
    epoch_observers: tuple[Callable, ...] = (),
) -> Stop:
    """The body of `train_experiment` between joining and leaving the process group;
    `limit` is (--max-epochs or --max-steps, which of the two), or (None, None).

    A function of its own so that the runner, and the DistributedDataParallel module it
    holds, are gone when it returns: `leave` must not find them alive.
    """
    with hold_experiment(experiment, world, device), keeping_torch_threads():
        runner = project.make_runner(experiment, experiment.read_definition(), num_workers, world)
        try:
            if epoch is not None and overwrite and world.is_main:
                remove_later_checkpoints(experiment, epoch, runner.logger)
            processes = f" in {world.size} processes" if world.distributed else ""
            share_cores_with_workers(num_workers, runner.logger)
            if world.is_main:  # for what reads the experiment without the project's classes: compare, create_release
                record_directions(experiment, declared_directions(type(runner)))
            budget, source = read_budget(runner.config, *limit)
            runner.logger.info(
                f"training {experiment.name!r} on {device}{processes} up to {budget.unit} {budget.limit} ({source})"
            )
            provenance = record_provenance(runner, project.data_path, device)
            runner.tracker.open(
                project.trackers, RunInfo(experiment, experiment.read_definition(), "train"), runner.logger
            )
            stop = train_recording_stop(runner, device, budget, log_period, epoch, epoch_observers, provenance)
        finally:
            runner.tracker.close()
            close_logger(runner.logger)
    return stop


def record_provenance(runner: Any, data_path: str, device: Any) -> dict | None:
    """Append this run's provenance to provenance.jsonl (rank 0 only, which returns it for
    the checkpoints' sidecars); a resume whose provenance differs from the last run's warns
    once, naming what changed."""
    if not runner.world.is_main:
        return None
    experiment = runner.experiment
    known = read_last(experiment.provenance_path)
    provenance = collect(experiment.read_definition(), runner.data.read_files, data_path, device, known)
    changes = describe_changes(known, provenance)
    if changes and checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt")):
        runner.logger.warning("this run's provenance differs from the last one's: " + "; ".join(changes))
    append_record(experiment.provenance_path, "train", provenance)
    return provenance


def train_recording_stop(
    runner: Any,
    device: Any,
    budget: Budget,
    log_period: int,
    epoch: int | None,
    observers: tuple[Callable, ...],
    provenance: dict | None,
) -> Stop:
    """Run the loop and record in metrics.jsonl why it ended: its own `Stop`, an interrupt,
    or the error that ended it (which is raised on)."""
    from torchexp.loop import train

    try:
        with project_errors(runner.logger):
            stop = train(runner, device, budget, log_period, epoch, observers, provenance)
    except TrainingInterrupted as error:
        runner.tracker.log_stop(Stop(INTERRUPTED, budget.done(runner.counters), budget.limit, str(error), budget.unit))
        raise
    except Exception as error:
        # It may fail before the checkpoint is restored: the epochs (or steps) done are on disk.
        done = max(
            (found.epoch for found in checkpoints.list_checkpoints(runner.experiment.checkpoints_path, ("standard",))),
            default=0,
        )
        runner.tracker.log_stop(
            Stop(FAILED, done, budget.limit, f"{type(error).__name__}: {first_line(error)}", budget.unit)
        )
        raise
    runner.tracker.log_stop(stop)
    return stop


@contextlib.contextmanager
def hold_experiment(experiment: Experiment, world: Any, device: Any) -> Iterator[None]:
    """Take the experiment's lock in rank 0 (the only writer); every rank fails if it cannot."""
    from torchexp.distributed import any_across

    with contextlib.ExitStack() as stack:
        failure = None
        if world.is_main:
            try:
                stack.enter_context(experiment.lock())
            except LockError as error:
                failure = error
        if any_across(failure is not None, device):
            raise failure or LockError(f"experiment {experiment.name!r} is in use: rank 0 could not take its lock")
        yield


def check_no_later_checkpoints(experiment: Experiment, epoch: int) -> None:
    """Refuse to train from `epoch` over later standard checkpoints."""
    later = [
        info for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",)) if info.epoch > epoch
    ]
    if later:
        raise CheckpointError(
            f"epochs {checkpoints.describe_epochs(later)} have checkpoints that training from epoch {epoch} "
            "would overwrite: pass --overwrite to allow it"
        )


def remove_later_checkpoints(experiment: Experiment, epoch: int, logger: Any) -> None:
    """Delete the standard and interrupt checkpoints after `epoch` (train --epoch --overwrite).

    Left in place, the furthest of them would be what the next plain `train` resumes
    from, mixing two histories. The checkpoint of `epoch` is verified first, so that a
    corrupt starting point costs nothing. Release checkpoints stay: they stand alone.
    """
    start = checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)
    start.verify()
    later = [
        info
        for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt"))
        if info.progress > start.progress
    ]
    for info in later:
        info.remove()
    if later:
        logger.warning(f"--overwrite: removed the checkpoints of epochs {checkpoints.describe_epochs(later)}")
