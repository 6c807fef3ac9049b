"""Creating, training, testing and releasing an experiment: what `init`, `train`, `test` and
`create_release` do.

These functions are the library behind those commands, so that other commands (a
hyperparameter search, say) create and run an experiment exactly as the commands do.
torch is imported inside them, not at module level.
"""

import contextlib
from typing import Any, Callable, Iterator

from torchexp import checkpoints
from torchexp.app import App, check_data_path, check_json_data, class_spec, load_class, record_versions
from torchexp.config import Config
from torchexp.errors import CheckpointError, LockError
from torchexp.experiment import Experiment
from torchexp.experiments import find_best, is_number
from torchexp.storage import remove_quietly
from torchexp.tracking import close_logger, make_logger


def init_experiment(app: App, experiment: Experiment, conf: dict, seed: int, extra: dict | None = None) -> None:
    """Create `experiment` from a validated configuration: run the project's `Data.create`
    and write the folder, all or nothing.

    Args:
        app: the command line's shared object (project classes, data path, verbosity).
        experiment: the experiment to create; its name must be free.
        conf: a configuration from `torchexp.config.build_config`.
        seed: the seed of every random generator.
        extra: more JSON data for config.json beside "seed", "versions", "classes" and
            "config" (a search records its trial there).
    """
    classes = {"data": class_spec(app.data_class), "runner": class_spec(app.runner_class)}
    record = {"seed": seed, "versions": record_versions(), "classes": classes, "config": conf, **(extra or {})}
    check_json_data(record, "the experiment record")
    logger = make_logger(experiment.name, None, app.verbosity)
    try:
        check_data_path(app.data_path)
        data = load_class(app.data_class)(Config(conf), seed, logger)
        state = data.create(app.data_path)
        check_json_data(state, "Data.create")
        experiment.create(record, state)
    finally:
        close_logger(logger)
    logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
    logger.info(f"created experiment {experiment.name!r} in {experiment.path} (seed {seed})")
    close_logger(logger)


def train_experiment(
    app: App,
    experiment: Experiment,
    device: str,
    num_workers: int,
    max_epochs: int | None,
    log_period: int,
    epoch: int | None = None,
    overwrite: bool = False,
    epoch_observers: tuple[Callable, ...] = (),
) -> None:
    """Train `experiment` until `max_epochs` epochs are done (None: its trainer.max_epochs),
    resuming from its furthest checkpoint (or `epoch`). Under torchrun, each process trains
    one shard with DDP.

    Args:
        app: the command line's shared object (project classes, paths, verbosity).
        experiment: the experiment, which must exist.
        device: a --device value.
        num_workers: data loader worker processes.
        max_epochs: epochs to reach; None for the config's trainer.max_epochs.
        log_period: iterations between iteration logs.
        epoch: resume from this standard checkpoint instead of the furthest one.
        overwrite: allow `epoch` to train over later checkpoints, deleting them.
        epoch_observers: added to the runner's `epoch_observers`.

    Raises:
        CheckpointError: `epoch` has no checkpoint, or later ones exist without `overwrite`.
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
        train_held(app, experiment, world, torch_device, num_workers, max_epochs, log_period, epoch, overwrite, epoch_observers)
    except BaseException:
        leave(free_objects=False)
        raise
    leave()


def train_held(
    app: App, experiment: Experiment, world: Any, device: Any, num_workers: int, max_epochs: int | None, log_period: int, epoch: int | None, overwrite: bool,
    epoch_observers: tuple[Callable, ...] = (),
) -> None:
    """The body of `train_experiment` between joining and leaving the process group.

    A function of its own so that the runner, and the DistributedDataParallel module it
    holds, are gone when it returns: `leave` must not find them alive.
    """
    with hold_experiment(experiment, world, device):
        runner = app.make_runner(experiment, experiment.read_record(), num_workers, world)
        try:
            if epoch is not None and overwrite and world.is_main:
                remove_later_checkpoints(experiment, epoch, runner.logger)
            processes = f" in {world.size} processes" if world.distributed else ""
            source = "--max-epochs"
            if max_epochs is None:
                max_epochs, source = runner.get_conf("trainer", "max_epochs"), "trainer.max_epochs"
            runner.logger.info(f"training {experiment.name!r} on {device}{processes} up to epoch {max_epochs} ({source})")
            runner.epoch_observers.extend(epoch_observers)
            runner.train(device, max_epochs, log_period, epoch)
        finally:
            runner.tracker.close()
            close_logger(runner.logger)


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


def evaluate_experiment(app: App, experiment: Experiment, epoch: int | None, release: bool, device: str, num_workers: int) -> dict:
    """Test the weights of `epoch` (default: the latest) on the test set; return the results."""
    from torchexp.devices import resolve_device

    from torchexp.inference import find_weights

    epoch = epoch or find_weights(experiment, "release" if release else None).epoch
    torch_device = resolve_device(device)
    runner = app.make_runner(experiment, experiment.read_record(), num_workers)
    try:
        return runner.run_test(torch_device, epoch, release)
    finally:
        runner.tracker.close()
        close_logger(runner.logger)


def check_no_later_checkpoints(experiment: Experiment, epoch: int) -> None:
    """Refuse to train from `epoch` over later standard checkpoints."""
    later = [info for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",)) if info.epoch > epoch]
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
    checkpoints.verify_checkpoint(start)
    later = [
        info
        for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt"))
        if info.progress > start.progress
    ]
    for info in later:
        remove_quietly(checkpoints.record_path(info.path))
        remove_quietly(info.path)
    if later:
        logger.warning(f"--overwrite: removed the checkpoints of epochs {checkpoints.describe_epochs(later)}")


def choose_release_epoch(experiment: Experiment) -> tuple[int, str]:
    """Return the epoch `create_release` releases by default, and why: the standard checkpoint
    with the lowest validation loss, or the latest one when none was validated.

    Only the checkpoints' JSON records are read, not the checkpoints.

    Raises:
        CheckpointError: the experiment has no standard checkpoint.
    """
    found = checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",))
    if not found:
        raise CheckpointError(f"experiment {experiment.name!r} has no standard checkpoint yet: train it first")
    best = find_best([(info.epoch, loss) for info in found if is_number(loss := validation_loss(info))], "min")
    if best is None:
        return found[-1].epoch, "the latest: no epoch was validated"
    epoch, loss = best
    among = f"epoch{'s' if len(found) > 1 else ''} {checkpoints.describe_epochs(found)}"
    return epoch, f"the lowest validation loss, {loss:.4g}, among {among}"


def validation_loss(info: checkpoints.CheckpointInfo) -> Any:
    """The validation loss a checkpoint's record holds, or None."""
    return (((info.record or {}).get("metrics") or {}).get("validation") or {}).get("loss")
