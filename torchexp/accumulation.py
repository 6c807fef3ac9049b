"""Gradient accumulation: a group of trainer.grad_accumulation batches, one optimizer step.

The accumulated gradient is the full group's: each batch's loss counts by the weight
`train_step` returns beside it (`"weight"`: its tokens, its unmasked samples), or equally
when it returns none. Under DistributedDataParallel, the gradients are all-reduced once
per group: every batch but the group's last runs under `no_sync`. Under FSDP2, likewise,
every batch but the group's last runs with `set_requires_gradient_sync(False)`, except in
a stream of unknown length, where every batch's gradients are reduce-scattered, as a batch
not known to be the last of its group cannot be left unsynchronised with sharded
gradients.

With weights, each batch's backward gets `loss * weight`, and at the step the gradients
are divided by the group's total weight over every rank (one all-reduce of a number).
Without, each batch's loss is divided by the group's size, as plain accumulation does. A
stream of unknown length may end in the middle of a group: its gradients, accumulated
without synchronisation, are then averaged over the ranks here, and rescaled to the
group's real size.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from torchexp.distributed import World, average_gradients, sum_across
from torchexp.precision import Precision
from torchexp.strategy import is_sharded


class Accumulator:
    """The current group of batches, and the optimizer step that closes it.

    Args:
        model: the model being trained, DistributedDataParallel when distributed.
        size: trainer.grad_accumulation.
        world: this process's place among the training processes.
    """

    def __init__(self, model: torch.nn.Module, size: int, world: World):
        self.ddp = find_ddp(model)
        self.fsdp = find_fsdp(model)
        self.size = size
        self.world = world
        self.count = 0  # batches in the group so far
        self.divisor = 1  # what their losses were divided by, unweighted: the group's size as foreseen
        self.weight: Any = 0.0  # their summed weights (a tensor once weighted)
        self.weighted: bool | None = None  # decided by the run's first batch

    def closes_group(self, index: int, total: int | None) -> bool:
        """Whether batch `index` (from 0) of an epoch of `total` batches (None: unknown) is
        its group's last; groups do not cross epochs, and the last may be shorter."""
        return index + 1 == self.group_end(index, total)

    def group_end(self, index: int, total: int | None) -> int:
        end = index - index % self.size + self.size
        return end if total is None else min(end, total)

    @contextlib.contextmanager
    def syncing(self, last: bool, total: int | None) -> Iterator[None]:
        """Forward and backward of one batch of an epoch of `total` batches (None:
        unknown): under DDP and FSDP, gradients are reduced only for the group's last."""
        if self.fsdp is not None:
            self.fsdp.set_requires_gradient_sync(last or total is None)
            yield
        elif self.ddp is None or last:
            yield
        else:
            with self.ddp.no_sync():
                yield

    def loss_to_backward(
        self, loss: torch.Tensor, weight: torch.Tensor | None, index: int, total: int | None
    ) -> torch.Tensor:
        """What to run backward on for batch `index`'s loss (and weight, if it gave one).

        Raises:
            TypeError: some batches gave a weight and others did not.
        """
        weighted = weight is not None
        if self.weighted is None:
            self.weighted = weighted
        if weighted != self.weighted:
            raise TypeError(
                "train_step must return a 'weight' for every batch or for none: "
                + ("this one has none" if self.weighted else "this one has one")
            )
        self.count += 1
        if weight is not None:
            weight = weight.detach().to(loss.device, torch.float32)
            self.weight = self.weight + weight
            return loss * weight
        self.divisor = self.group_end(index, total) - (index - index % self.size)
        return loss / self.divisor if self.divisor > 1 else loss

    def step(
        self,
        precision: Precision,
        optimizer: torch.optim.Optimizer,
        parameters: Any,
        clip_norm: float | None,
        synced: bool = True,
    ) -> None:
        """Close the group: scale the accumulated gradients to the group's mean, step the
        optimizer and clear the gradients.

        Args:
            synced: False when the group's last batch was not known to be its last (a
                stream's end), so that its gradients were never all-reduced.
        """
        parameters = list(parameters)
        if not synced and self.ddp is not None:
            average_gradients(parameters)
        factor = self.scale_factor()
        if factor is not None:
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad.mul_(factor)
        precision.step(optimizer, parameters, clip_norm)
        optimizer.zero_grad(set_to_none=True)
        self.count, self.weight = 0, 0.0

    def scale_factor(self) -> Any:
        """What the accumulated gradients are multiplied by (None: nothing to do)."""
        if self.weighted:
            # DDP averaged the ranks' sums of weighted gradients: times the ranks, over the total weight.
            return self.world.size / sum_across(torch.as_tensor(self.weight, dtype=torch.float32)).clamp(
                min=torch.finfo(torch.float32).tiny
            )
        if self.count != self.divisor:  # a stream ended before the group it foresaw was full
            return self.divisor / self.count
        return None

    @property
    def pending(self) -> bool:
        """Whether batches were accumulated since the last step."""
        return self.count > 0


def find_fsdp(model: torch.nn.Module) -> Any:
    """The FSDP2 root module of a (possibly compiled) model, or None."""
    return getattr(model, "_orig_mod", model) if is_sharded(model) else None


def find_ddp(model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel module of a (possibly compiled) model, or None."""
    model = getattr(model, "_orig_mod", model)
    return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
