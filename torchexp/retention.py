"""Retention: which checkpoints stay once an epoch's checkpoint is written.

With trainer.keep_checkpoints K, the last K standard checkpoints stay, and the one with the
lowest validation loss; releases always stay (they are another kind), and so does
whatever a search still needs: a paused ASHA trial's rung checkpoint is its latest. Older
standard checkpoints are removed, crash-safe (`Checkpoint.remove`). Mid-epoch checkpoints go
as soon as their epoch's own checkpoint is written, whatever K.
"""

from typing import Any

from torchexp import checkpoints
from torchexp.metrics import MINIMIZE, find_best, is_number


def retain_checkpoints(runner: Any) -> None:
    """Remove the standard checkpoints trainer.keep_checkpoints does not keep (rank 0)."""
    keep = runner.get_conf("trainer", "keep_checkpoints")
    if keep is None or not runner.world.is_main:
        return
    removed = choose_removals(checkpoints.list_checkpoints(runner.experiment.checkpoints_path, ("standard",)), keep)
    for checkpoint in removed:
        checkpoint.remove()
    if removed:
        runner.logger.debug(f"trainer.keep_checkpoints {keep}: removed the checkpoints of epochs {checkpoints.describe_epochs(removed)}")


def choose_removals(standards: list[checkpoints.Checkpoint], keep: int) -> list[checkpoints.Checkpoint]:
    """The standard checkpoints (oldest first) that keeping the last `keep` and the best by
    validation loss leaves out."""
    kept = {checkpoint.epoch for checkpoint in standards[-keep:]}
    losses = [(checkpoint.epoch, loss) for checkpoint in standards if is_number(loss := (checkpoint.metrics.get("validation") or {}).get("loss"))]
    best = find_best(losses, MINIMIZE)
    if best is not None:
        kept.add(best[0])
    return [checkpoint for checkpoint in standards if checkpoint.epoch not in kept]
