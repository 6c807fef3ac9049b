"""verify: re-run a stored epoch and compare every tensor with the stored outcome.

To verify checkpoint N (the end of epoch N, or a mid-epoch checkpoint of epoch N at
iteration k; step N of an experiment trained by steps), torchexp copies the experiment's
definition, its data state and the standard checkpoint before it (epoch N - 1's; none
before the first point: training starts from the seed) into a scratch folder, trains
there to the same point, and compares every tensor and value of the
model, optimizer, scheduler, gradient scaler, random generators, counters and logged
metrics with the stored checkpoint N. The experiment itself gets nothing but an appended
line in verifications.jsonl.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from torchexp import checkpoints
from torchexp.distributed import World, barrier, gather_objects
from torchexp.errors import CheckpointError
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import close_logger
from torchexp.project import Project
from torchexp.provenance import collect, describe_changes


@dataclasses.dataclass
class Verification:
    """What re-running one checkpoint's training found."""

    epoch: int
    iteration: int  # 0 for the end of the epoch
    checkpoint: str
    identical: bool
    tensors: int
    difference: str  # "" when identical: "first at fc1.weight, max |diff| 3.1e-07 in 812 of 1,199,882 values"
    provenance_changes: list[str]
    device: str
    seconds: float
    unit: str = "epoch"  # what `epoch` counts: "step" for an experiment trained by steps

    def describe(self) -> str:
        """`epoch 3: bit-identical (14 tensors)`, or `epoch 3: differs: first at ...`."""
        where = f"{self.unit} {self.epoch}" + (
            f", iteration {self.iteration}" if self.iteration and self.unit == "epoch" else ""
        )
        verdict = f"bit-identical ({self.tensors:,} tensors)" if self.identical else f"differs: {self.difference}"
        lines = [f"{where}: {verdict}"]
        lines += [f"  provenance: {change}" for change in self.provenance_changes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dataclasses.asdict(self)}


def choose_targets(
    experiment: Experiment, epoch: int | None, last: int | None, every: bool
) -> list[checkpoints.Checkpoint]:
    """The checkpoints to verify: the one of `epoch`, the last `last`, every one, or by
    default the latest; epoch ends and mid-epoch checkpoints alike, in training order.

    Raises:
        CheckpointError: `epoch` has no training checkpoint (only a release, or none).
    """
    found = sorted(
        checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt")),
        key=lambda item: item.progress,
    )
    if epoch is not None:
        for kind in ("standard", "interrupt"):
            matching = [item for item in found if item.epoch == epoch and item.kind == kind]
            if matching:
                return matching
        checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)  # raises, naming what there is
    if not found:
        raise CheckpointError(f"experiment {experiment.name!r} has no checkpoint to verify yet: train it first")
    return found if every else found[-(last or 1) :]


def find_start(
    experiment: Experiment, target: checkpoints.Checkpoint, points_before: int
) -> checkpoints.Checkpoint | None:
    """The checkpoint training to `target` starts from: the last standard checkpoint before
    it (epoch N - 1's, for an experiment trained by epochs), or None when `target` comes
    before the first point and training starts from the seed.

    Args:
        experiment: the experiment.
        target: the checkpoint to verify.
        points_before: the points (epoch ends, validation steps) the run had passed before
            the part that produced `target`: its history's length, less its own point.

    Raises:
        CheckpointError: the starting checkpoint is not there (trainer.keep_checkpoints
            removed it, say).
    """
    standards = checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",))
    before = [item for item in standards if item.progress < target.progress]
    if target.unit == "epoch":
        before = [item for item in before if item.epoch == target.epoch - 1]
    if before:
        return before[-1]
    if points_before == 0:
        return None
    kept = checkpoints.describe_epochs(standards)
    where = (
        f"the checkpoint of epoch {target.epoch - 1}" if target.unit == "epoch" else "the standard checkpoint before it"
    )
    raise CheckpointError(
        f"{target.unit} {target.epoch} cannot be verified: training to it starts from {where}, "
        f"which is not there (standard checkpoints: {kept})"
    )


def verify_checkpoint(
    project: Project,
    experiment: Experiment,
    target: checkpoints.Checkpoint,
    device: torch.device,
    quiet: bool,
    world: World = World(),
) -> Verification:
    """Re-run the training that produced `target` in a scratch folder and compare. Under
    torchrun, every rank re-runs its part, as many ranks as trained it.

    Raises:
        CheckpointError: the target or its starting checkpoint is missing or corrupt, or it
            was trained by another number of processes.
    """
    from torchexp.budget import read_budget
    from torchexp.config import Config, fill_trainer_defaults
    from torchexp.loop import train

    started = time.perf_counter()
    expected = target.load()
    assert target.sidecar is not None, "load() verified the checkpoint against its sidecar"
    check_world_size(target, int(expected.get("world_size", 1)), world)
    points_before = len(expected["history"]["train"]) - (target.kind == "standard")
    start = find_start(experiment, target, points_before)
    if start is not None:
        start.verify()
    definition = experiment.read_definition()
    counters = expected["counters"]
    # A mid-epoch checkpoint of a run by steps lies between points: the re-run must not end at its step.
    limit = target.epoch + (target.kind == "interrupt" and target.unit == "step")
    budget = read_budget(Config(fill_trainer_defaults(definition["config"])), limit, None)[0]
    with scratch_folder(world) as scratch:
        if world.is_main:
            make_scratch_copy(experiment, scratch, start)
        barrier()
        copy = Experiment(scratch, experiment.name)
        # The re-run's own logs stay in the scratch folder; its progress bar shows.
        workers = int(target.sidecar.get("num_workers", 0))
        runner = dataclasses.replace(project, verbosity="quiet").make_runner(
            copy, definition, num_workers=workers, world=world
        )
        runner.quiet = quiet
        try:
            stop_at = (counters["epoch"] + 1, counters["iteration"]) if target.kind == "interrupt" else None
            with project_errors(runner.logger):
                train(
                    runner,
                    device,
                    budget,
                    log_period=2**62,
                    epoch=None if start is None else start.epoch,
                    stop_at=stop_at,
                )
            provenance = collect(
                definition, runner.data.read_files, project.data_path, device, target.sidecar.get("provenance")
            )
        finally:
            runner.tracker.close()
            close_logger(runner.logger)
        found = None
        if world.is_main:
            produced = checkpoints.find_checkpoint(copy.checkpoints_path, target.epoch, (target.kind,))
            found = compare_states(produced.load(), expected)
        tensors, difference = gather_objects(found)[0]
    return Verification(
        epoch=target.epoch,
        iteration=int(target.sidecar.get("iteration", 0)) if target.kind == "interrupt" else 0,
        checkpoint=target.name,
        identical=not difference,
        tensors=tensors,
        difference=difference,
        provenance_changes=describe_changes(target.sidecar.get("provenance"), provenance),
        device=str(device),
        seconds=round(time.perf_counter() - started, 3),
        unit=target.unit,
    )


def check_world_size(target: checkpoints.Checkpoint, trained_by: int, world: World) -> None:
    """Raise CheckpointError unless as many processes re-run `target` as trained it."""
    if trained_by == world.size:
        return
    how = f"under torchrun --nproc-per-node {trained_by}" if trained_by > 1 else "in one process, without torchrun"
    raise CheckpointError(
        f"checkpoint {target.name} was trained by {trained_by} process{'es' if trained_by > 1 else ''}, "
        f"and {world.size} verify it: verify it {how}"
    )


@contextlib.contextmanager
def scratch_folder(world: World) -> Iterator[str]:
    """A temporary folder that rank 0 makes and removes, its path given to every rank."""
    path = tempfile.mkdtemp(prefix="torchexp-verify-") if world.is_main else None
    path = gather_objects(path)[0]
    try:
        yield path
    finally:
        barrier()
        if world.is_main:
            shutil.rmtree(path, ignore_errors=True)


def make_scratch_copy(experiment: Experiment, scratch: str, start: checkpoints.Checkpoint | None) -> Experiment:
    """An experiment in `scratch` with the definition, data state and starting checkpoint
    of `experiment`, and nothing else."""
    copy = Experiment(scratch, experiment.name)
    os.makedirs(copy.checkpoints_path)
    for folder in (copy.tensorboard_path, copy.results_path):
        os.makedirs(folder)
    shutil.copy(experiment.config_path, copy.config_path)
    shutil.copy(experiment.data_state_path, copy.data_state_path)
    if start is not None:
        if start.sharded:
            shutil.copytree(start.path, os.path.join(copy.checkpoints_path, start.name))
        else:
            shutil.copy(start.path, copy.checkpoints_path)
        shutil.copy(start.path + ".json", copy.checkpoints_path)
    return copy


def compare_states(actual: Any, expected: Any) -> tuple[int, str]:
    """Compare two checkpoint states bit for bit; return the tensors compared and "" when
    equal, else where they first differ and by how much."""
    tensors = 0
    for path, first, second in walk_pairs(actual, expected, "state"):
        if isinstance(second, torch.Tensor):
            tensors += 1
            difference = describe_tensor_difference(path, first, second)
        else:
            same = first == second or (
                isinstance(first, float) and isinstance(second, float) and math.isnan(first) and math.isnan(second)
            )
            difference = "" if same else f"first at {path}: {short(first)} where the checkpoint has {short(second)}"
        if difference:
            return tensors, difference
    return tensors, ""


def walk_pairs(first: Any, second: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, value, expected value) of every leaf of two nested structures, in order; a
    structure that differs in its keys or length is one leaf pair."""
    if isinstance(second, dict) and isinstance(first, dict) and first.keys() == second.keys():
        for key in second:
            yield from walk_pairs(first[key], second[key], f"{path}[{key!r}]" if path != "state" else str(key))
    elif isinstance(second, (list, tuple)) and isinstance(first, (list, tuple)) and len(first) == len(second):
        for index, (item, expected) in enumerate(zip(first, second, strict=True)):
            yield from walk_pairs(item, expected, f"{path}[{index}]")
    else:
        yield path, first, second


def describe_tensor_difference(path: str, actual: Any, expected: torch.Tensor) -> str:
    """ "" when two tensors are equal bit for bit (NaN equal to NaN), else how they differ."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape or actual.dtype != expected.dtype:
        return (
            f"first at {path}: {short(actual)} "
            f"where the checkpoint has a tensor of shape {list(expected.shape)}, {expected.dtype}"
        )
    if torch.equal(actual, expected):
        return ""
    if (
        actual.is_floating_point()
        and torch.equal(actual.isnan(), expected.isnan())
        and torch.equal(actual[~actual.isnan()], expected[~expected.isnan()])
    ):
        return ""  # NaN where the checkpoint has NaN: a diverged run reproduced
    differing = actual != expected
    if actual.is_floating_point() or actual.is_complex():
        gap = (actual.double() - expected.double()).abs()
        size = f"max |diff| {float(gap.max()):.2g} "
    else:
        size = ""
    return f"first at {path}, {size}in {int(differing.sum()):,} of {expected.numel():,} values"


def short(value: Any) -> str:
    """A value for a message, cut to a readable length."""
    text = (
        json.dumps(value)
        if isinstance(value, (dict, list, str, int, float, bool, type(None)))
        else type(value).__name__
    )
    return text if len(text) <= 60 else text[:57] + "..."


def append_verification(experiment: Experiment, verification: Verification) -> None:
    """Append what verify found to the experiment's verifications.jsonl: the only thing
    verify writes into an experiment."""
    with open(experiment.verifications_path, "a", encoding="utf-8") as file:
        file.write(json.dumps(verification.to_json()) + "\n")
