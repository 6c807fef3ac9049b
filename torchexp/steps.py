"""What the loops do with each batch: its memory layout, its size, and its metrics, summed
by sample (or by the weight a step returns) so that an epoch's metrics are per-sample means
whatever the batch sizes."""

from typing import Any

import torch

from torchexp.distributed import World, average_metrics, gather_objects, sum_metrics
from torchexp.errors import ProjectError


def prepare_batch(batch: Any, channels_last: bool) -> Any:
    """Put the 4-D tensors of a tuple or list batch in channels-last memory format when asked."""
    if not channels_last or not isinstance(batch, (tuple, list)):
        return batch
    return type(batch)(
        item.contiguous(memory_format=torch.channels_last)
        if isinstance(item, torch.Tensor) and item.dim() == 4
        else item
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


def as_metrics(output: Any, runner: object, hook: str, needs_grad: bool = False) -> dict[str, torch.Tensor]:
    """Turn a step's return value into a dict of tensors holding "loss", each one number.

    Args:
        output: what the hook returned.
        runner: the project's Runner, whose class names the hook in a message.
        hook: "train_step" or "validation_step".
        needs_grad: the loss is to be backpropagated (train_step's).

    Raises:
        ProjectError: the hook returned neither the loss nor a dict holding it, a metric of
            more than one number, or (`needs_grad`) a loss backward cannot use; the
            sentence names the hook and what it returned.
    """
    if isinstance(output, torch.Tensor):
        metrics = {"loss": output}
    elif isinstance(output, dict) and "loss" in output:
        metrics = {name: as_metric_tensor(value, runner, hook, name) for name, value in output.items()}
    else:
        raise ProjectError(
            f"{type(runner).__name__}.{hook} returned {describe_output(output)}: "
            "return the loss (a 0-dim tensor) or a dict of metrics holding it under 'loss'"
        )
    for name, value in metrics.items():
        if value.numel() != 1:
            raise ProjectError(
                f"{type(runner).__name__}.{hook} returned {describe_metric(name)} of shape {list(value.shape)}: "
                f"return a scalar (a 0-dim tensor), e.g. {name}.{'sum' if name == 'weight' else 'mean'}()"
            )
    if needs_grad and not metrics["loss"].requires_grad:
        raise ProjectError(
            f"{type(runner).__name__}.{hook} returned a loss that does not require grad, so backward cannot use it: "
            "return the tensor computed from the model's output, not its .item() nor one computed under torch.no_grad()"
        )
    return metrics


def as_metric_tensor(value: Any, runner: object, hook: str, name: str) -> torch.Tensor:
    """A metric a step returned in its dict, as a tensor.

    Raises:
        ProjectError: it is not a number nor a tensor.
    """
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        sentence = f"{type(runner).__name__}.{hook} returned {describe_metric(name)} as {value!r:.40}"
        raise ProjectError(f"{sentence}: return a number or a tensor") from None


def describe_output(output: Any) -> str:
    """What a step returned instead of the loss, in words: None, a dict without 'loss', a list."""
    if output is None:
        return "None"
    if isinstance(output, dict):
        return f"a dict without 'loss' (its keys: {', '.join(map(str, output)) or 'none'})"
    return f"a {type(output).__name__}"


def describe_metric(name: str) -> str:
    return "a loss" if name == "loss" else f"the metric {name!r}"


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
        own = {
            "sums": {name: torch.as_tensor(value).cpu() for name, value in self.sums.items()},
            "count": torch.as_tensor(self.count).cpu(),
        }
        return {"sums": sums, "count": count, "by_rank": gather_objects(own)}
