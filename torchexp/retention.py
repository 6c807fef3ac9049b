"""Retention: which checkpoints stay once an epoch's checkpoint is written.

With trainer.keep_checkpoints K, the last K standard checkpoints stay, and the best by
trainer.monitor (the lowest validation loss by default; better as the Runner declares, else
by the metric's name: `torchexp.directions`); releases always stay (they are another kind),
and so does whatever a search still needs: a paused ASHA trial's rung checkpoint is its
latest. Older standard checkpoints are removed, crash-safe (`Checkpoint.remove`). Mid-epoch
checkpoints go as soon as their epoch's own checkpoint is written, whatever K.
"""

from typing import Any

from torchexp import checkpoints
from torchexp.directions import declared_directions, direction_of
from torchexp.metrics import find_best, parse_metric, recorded_series


def retain_checkpoints(runner: Any) -> None:
    """Remove the standard checkpoints trainer.keep_checkpoints does not keep (rank 0)."""
    keep = runner.get_conf("trainer", "keep_checkpoints")
    if keep is None or not runner.world.is_main:
        return
    monitor = runner.get_conf("trainer", "monitor")
    direction = direction_of(parse_metric(monitor)[1], declared_directions(type(runner)))
    standards = checkpoints.list_checkpoints(runner.experiment.checkpoints_path, ("standard",))
    removed = choose_removals(standards, keep, monitor, direction)
    for checkpoint in removed:
        checkpoint.remove()
    if removed:
        runner.logger.debug(
            f"trainer.keep_checkpoints {keep}: removed the checkpoints of epochs {checkpoints.describe_epochs(removed)}"
        )


def choose_removals(
    standards: list[checkpoints.Checkpoint], keep: int, monitor: str, direction: str
) -> list[checkpoints.Checkpoint]:
    """The standard checkpoints (oldest first) that keeping the last `keep` and the best by
    `monitor` (split.name) in `direction` leaves out."""
    kept = {checkpoint.epoch for checkpoint in standards[-keep:]}
    records = ((checkpoint.epoch, checkpoint.metrics) for checkpoint in standards)
    best = find_best(recorded_series(records, *parse_metric(monitor)), direction)
    if best is not None:
        kept.add(best[0])
    return [checkpoint for checkpoint in standards if checkpoint.epoch not in kept]
