"""What the loops do with each batch: its memory layout, its size, and its metrics, summed
by sample (or by the weight a step returns) so that an epoch's metrics are per-sample means
whatever the batch sizes."""

from typing import Any

import torch

from torchexp.distributed import World, average_metrics, gather_objects, sum_metrics


def prepare_batch(batch: Any, channels_last: bool) -> Any:
    """Put the 4-D tensors of a tuple or list batch in channels-last memory format when asked."""
    if not channels_last or not isinstance(batch, (tuple, list)):
        return batch
    return type(batch)(
        item.contiguous(memory_format=torch.channels_last) if isinstance(item, torch.Tensor) and item.dim() == 4 else item
        for item in batch
    )


def batch_size_of(batch: Any) -> int:
    """Return the number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch
    for item in items:
        if isinstance(item, torch.Tensor):
            return item.shape[0]
    raise TypeError("a batch must contain at least one tensor")


def as_metrics(output: Any, step: str) -> dict[str, torch.Tensor]:
    """Turn a step's return value into a dict of tensors holding "loss"."""
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if not isinstance(output, dict) or "loss" not in output:
        raise TypeError(f"{step} must return the loss or a dict of metrics with 'loss', not {type(output).__name__}")
    return {name: torch.as_tensor(value) for name, value in output.items()}


class MetricSums:
    """Metrics summed over samples (each batch's means times its size), and the sample count.

    Args:
        state: an interrupted epoch's sums as its checkpoint keeps them, {"sums", "count"}:
            their totals over every rank, and under "by_rank" each rank's own. Each rank
            resumes from its own when as many ranks resume, so that every sum is added in
            the order of a run without a stop, bit for bit; otherwise rank 0 resumes from
            the totals and the others from zero, so that the epoch's sum comes out whole.
        world: this process's place among the training processes.
    """

    def __init__(self, state: dict[str, Any] | None = None, world: World = World()):
        own = (state or {}).get("by_rank")
        if own is not None and len(own) == world.size:
            state = own[world.rank]
        elif not world.is_main:
            state = None
        self.sums: dict[str, Any] = dict(state["sums"]) if state is not None else {}
        self.count: Any = state["count"] if state is not None else 0

    def add(self, metrics: dict[str, torch.Tensor], size: Any) -> None:
        """Add a batch's metrics, weighted by its `size`: its samples, or the weight
        `train_step` returned (its tokens, say)."""
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.float() * size
        self.count += size

    def average(self, world: World, device: torch.device) -> dict[str, float]:
        """Per-sample means over every rank's samples."""
        return average_metrics(self.sums, self.count, world, device)

    def to_state(self, world: World, device: torch.device) -> dict[str, Any]:
        """The sums so far over every rank, for a mid-epoch checkpoint."""
        if not world.distributed:
            return {"sums": self.sums, "count": self.count}
        sums, count = sum_metrics(self.sums, self.count, device)
        own = {"sums": {name: torch.as_tensor(value).cpu() for name, value in self.sums.items()}, "count": torch.as_tensor(self.count).cpu()}
        return {"sums": sums, "count": count, "by_rank": gather_objects(own)}
