"""A training run's state in checkpoints: collecting it, saving it, and restoring it.

Everything needed to resume exactly goes into one dict of tensors and plain data (so that
it loads with `weights_only=True`): model, optimizer, scheduler and gradient scaler states,
every rank's random generators, the counters and metric history, the interrupted epoch's
metric sums, and the project's own `save_states_others`.
"""

from typing import Any

import torch

from torchexp import checkpoints, sharded
from torchexp.budget import describe_count
from torchexp.distributed import all_across, gather_objects
from torchexp.errors import CheckpointError, ProjectError, first_line
from torchexp.precision import Precision
from torchexp.rng import capture_rng_states, restore_rng_states
from torchexp.strategy import FSDP
from torchexp.train_loader import TrainLoader


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module under torch.compile or DistributedDataParallel wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def collect_state(
    runner: Any,
    precision: Precision,
    partial: dict[str, Any] | None,
    feed: TrainLoader | None = None,
    with_tensors: bool = True,
) -> dict[str, Any]:
    """Return everything needed to resume, as tensors and plain data.

    Args:
        runner: the project's Runner, built.
        precision: the run's precision, whose gradient scaler is saved.
        partial: the metric sums since the last point (`MetricSums.to_state`), or None at a point.
        feed: the train loader, whose own state every rank keeps in the middle of an epoch.
        with_tensors: include the model's and optimizer's states; a sharded checkpoint
            keeps them in DCP's shards instead.
    """
    mid_epoch = runner.counters["iteration"] > 0
    loader_state = feed.state_dict() if feed is not None and feed.keeps_state and mid_epoch else None
    others = runner.save_states_others()
    check_plain_data(others, "others", f"{type(runner).__name__}.save_states_others returned")
    check_plain_data(
        loader_state,
        "state",
        f"the train loader's state_dict() ({type(feed.loader).__name__ if feed else ''}) returned",
    )
    tensors = (
        {"model": unwrap_model(runner.model).state_dict(), "optimizer": runner.optimizer.state_dict()}
        if with_tensors
        else {}
    )
    return {
        "format": checkpoints.CHECKPOINT_FORMAT,
        "counters": dict(runner.counters),
        **tensors,
        "scheduler": runner.scheduler.state_dict() if runner.scheduler is not None else None,
        "scaler": precision.state_dict(),
        "world_size": runner.world.size,
        "precision": precision.choice.to_json(),
        "rng_by_rank": gather_objects(capture_rng_states()),
        "history": runner.history,
        "partial": partial,
        "loader_by_rank": gather_objects(loader_state) if loader_state is not None else None,
        "others": others,
    }


# What torch.load(weights_only=True) reads back: a checkpoint holds nothing else.
PLAIN_TYPES = (torch.Tensor, int, float, complex, bool, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def check_plain_data(value: Any, path: str, source: str) -> None:
    """Refuse, before anything is written, a value a checkpoint could not be loaded back with.

    Raises:
        ProjectError: `value` holds an object other than tensors, numbers, strings, lists,
            tuples and dicts; the sentence names `source` and where in it.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain_data(key, f"{path} key {key!r}", source)
            check_plain_data(item, f"{path}[{key!r}]", source)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain_data(item, f"{path}[{index}]", source)
    elif not isinstance(value, PLAIN_TYPES):
        raise ProjectError(
            f"{source} a {type(value).__name__} at {path}: "
            "a checkpoint holds tensors, numbers, strings, lists and dicts only, "
            "which torch.load(weights_only=True) reads back"
        )


def restore_training(
    runner: Any, precision: Precision, epoch: int | None, feed: TrainLoader | None = None
) -> dict[str, Any] | None:
    """Load the furthest checkpoint that verifies (and that the train loader can resume
    from), or the standard one of `epoch`; return the metric sums since the last point it
    holds (None at a point).

    Raises:
        CheckpointError: `epoch` has no standard checkpoint, or it does not load or fit.
    """
    folder = runner.experiment.checkpoints_path
    if runner.world.is_main:
        for name in checkpoints.remove_temporaries(folder):
            runner.logger.info(f"removed {name}, left by a save that was killed")
    if epoch is None:
        mid_epoch = feed is None or feed.resumes_mid_epoch
        part = (runner.world.rank, runner.world.size)
        checkpoint, skipped = checkpoints.find_resume_checkpoint(
            folder, mid_epoch, part, lambda ok: all_across(ok, runner.device)
        )
        for _, reason in skipped:
            runner.logger.warning(f"skipping {reason}")
    else:
        checkpoint = checkpoints.find_training_checkpoint(folder, epoch)
    partial = None
    if checkpoint is None:
        runner.logger.info("no checkpoint to resume from: training from scratch")
    else:
        state = load_training_state(runner, checkpoint)
        partial = restore_state(runner, precision, state, checkpoint.name)
        if feed is not None and runner.counters["iteration"] > 0:
            restore_loader(runner.world, feed, state.get("loader_by_rank"), checkpoint.name)
        counters = runner.counters
        inside = (
            f"; in epoch {counters['epoch'] + 1} after batch {counters['iteration']}" if counters["iteration"] else ""
        )
        runner.logger.info(
            f"resumed from {checkpoint.name}: {describe_count(counters[checkpoint.unit], checkpoint.unit)} done{inside}"
        )
    dropped = runner.tracker.discard_after(runner.counters["step"], runner.counters["epoch"])
    if dropped:
        runner.logger.info(
            f"removed {dropped} lines from metrics.jsonl, logged after this point by a run that did not finish"
        )
    return partial


def load_training_state(runner: Any, checkpoint: checkpoints.Checkpoint) -> dict[str, Any]:
    """Load a checkpoint to resume from; a sharded one's model and optimizer states go
    straight into the runner's, each rank reading its own shards, the rest is returned.

    Raises:
        CheckpointError: it does not load, or it was saved under another trainer.strategy.
    """
    strategy = runner.get_conf("trainer", "strategy")
    if checkpoint.sharded != (strategy == FSDP):
        saved = "fsdp, a folder of shards" if checkpoint.sharded else "ddp, one file"
        raise CheckpointError(
            f"checkpoint {checkpoint.name} was saved under trainer.strategy {saved}, "
            f"and this run trains under {strategy}: train with the strategy it was saved under"
        )
    if not checkpoint.sharded:
        return checkpoint.load()
    if not checkpoint.hashed:  # each rank checks its share of the files
        problem = checkpoint.check((runner.world.rank, runner.world.size))
        if not all_across(problem is None, runner.device):
            raise CheckpointError(
                problem or f"checkpoint {checkpoint.name}: another rank found one of its files corrupt"
            )
    state = sharded.load_plain(checkpoint.path, checkpoint.name)
    sharded.load_shards(checkpoint.path, unwrap_model(runner.model), runner.optimizer, checkpoint.name)
    return state


def restore_state(runner: Any, precision: Precision, state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Restore everything `collect_state` saved; return the interrupted epoch's metric sums.

    Raises:
        CheckpointError: the checkpoint does not fit this model, optimizer or scheduler.
    """
    try:
        if "model" in state:  # a sharded checkpoint's are loaded already
            unwrap_model(runner.model).load_state_dict(state["model"])
            runner.optimizer.load_state_dict(state["optimizer"])
        if runner.scheduler is not None and state["scheduler"] is not None:
            runner.scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state["scaler"])
        warnings = restore_rng_by_rank(runner.world, state["rng_by_rank"])
        warnings += compare_precision(state.get("precision"), precision)
        runner.counters = dict(state["counters"])
        runner.history = state["history"]
        runner.load_states_others(state["others"])
        partial = state["partial"]
    except KeyError as error:
        raise CheckpointError(f"checkpoint {name} does not fit this runner: it has no {error}") from error
    except (RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {name} does not fit this runner: {first_line(error)}") from error
    for warning in warnings:
        runner.logger.warning(warning)
    return partial


def restore_loader(world: Any, feed: TrainLoader, states: list[Any] | None, name: str) -> None:
    """Give the train loader this rank's state from a mid-epoch checkpoint, if it keeps one.

    Raises:
        CheckpointError: the checkpoint holds no state for a loader that needs one, or the
            states of another number of ranks.
    """
    if not feed.keeps_state:
        return
    if states is None:
        raise CheckpointError(
            f"checkpoint {name} holds no state of the train loader, which needs one to resume mid-epoch: "
            "resume from an epoch's end with --epoch"
        )
    if len(states) != world.size:
        raise CheckpointError(
            f"checkpoint {name} holds the train loader's state of {len(states)} processes, and {world.size} resume it: "
            f"resume it with {len(states)}, or from an epoch's end with --epoch"
        )
    feed.load_state_dict(states[world.rank])


def compare_precision(saved: dict[str, str] | None, precision: Precision) -> list[str]:
    """Return a warning when the checkpoint was trained in another precision than this run's."""
    if saved is None or saved["used"] == precision.choice.used:
        return []
    return [f"checkpoint trained in {saved['used']} ({saved['reason']}); this run continues in {precision.choice.used}"]


def restore_rng_by_rank(world: Any, states: list[dict[str, Any]]) -> list[str]:
    """Restore this rank's generators; return warnings (e.g. a changed world size)."""
    if len(states) == world.size:
        return restore_rng_states(states[world.rank])
    warning = (
        f"checkpoint saved by {plural(len(states))}, resumed by {plural(world.size)}: training goes on, but the data "
        "order changes and the run is no longer bit-identical to a straight one, "
        "which holds only for the same number of processes"
    )
    return [warning, *restore_rng_states(states[world.rank % len(states)])]


def plural(processes: int) -> str:
    return f"{processes} process{'es' if processes != 1 else ''}"


def load_weights(runner: Any, device: torch.device, state: dict[str, Any], name: str) -> None:
    """Build the runner's model with `init_model` on `device` and load a checkpoint's weights
    into it; the model is left in eval mode.

    Raises:
        CheckpointError: the checkpoint `name` does not fit the model.
    """
    runner.device = device
    build_model(runner, device)
    try:
        runner.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {name} does not fit this model: {first_line(error)}") from error
    runner.model.eval()


def build_model(runner: Any, device: torch.device) -> None:
    """Call `init_model` and check that it set `runner.model`."""
    runner.init_model(device)
    if not isinstance(runner.model, torch.nn.Module):
        raise TypeError(f"init_model must set self.model to a torch.nn.Module, not {type(runner.model).__name__}")
