"""Run under torchrun with 2 Gloo processes by tests/test_accumulation.py: gradient
accumulation under DistributedDataParallel and under FSDP2, with micro-batches of unequal
weight.

Each rank accumulates groups of 3 micro-batches of unequal sizes through torchexp's
Accumulator; a communication hook counts DDP's all-reduces, and a wrapper of
`reduce_scatter_single` FSDP's reduce-scatters; the gradient at each step is compared with
the full batch's (every micro-batch of every rank of the group, its mean loss weighted by
unmasked samples) computed on one unsharded model, clipped to the same global norm under
FSDP. Rank 0 writes what it found as JSON to the file named by argv[1].
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from torchexp.accumulation import Accumulator
from torchexp.distributed import World, leave
from torchexp.precision import Precision, PrecisionChoice
from torchexp.strategy import wrap_model

GROUPS, SIZE = 2, 3
CLIP = 0.05  # under FSDP: below every step's gradient norm, so that each step clips
SIZES = (5, 2, 7)  # samples in each micro-batch of a group


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it steps with."""

    def __init__(self, parameters):
        super().__init__(parameters, lr=0.1)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([whole(parameter.grad).clone() for group in self.param_groups for parameter in group["params"]])
        return super().step(closure)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor, gathered from every rank's shards when FSDP sharded it."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def micro_batch(rank: int, group: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask) of one micro-batch, the same wherever it is made."""
    generator = torch.Generator().manual_seed(1000 * rank + 10 * group + index)
    size = SIZES[index]
    inputs, targets = torch.randn(size, 4, generator=generator), torch.randn(size, 1, generator=generator)
    mask = torch.rand(size, generator=generator) > 0.3
    mask[0] = True  # never empty
    return inputs, targets, mask


def masked_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    errors = (model(inputs) - targets).pow(2).squeeze(1)
    return errors[mask].mean()


def main() -> None:
    dist.init_process_group("gloo")
    found = {"ddp": accumulate(dist.get_rank(), dist.get_world_size()), "fsdp": accumulate_sharded(dist.get_rank(), dist.get_world_size())}
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w", encoding="utf-8") as file:
            json.dump(found, file)
    # The DDP module is gone with accumulate's frame: freed at exit without its process
    # group, it would abort the process ("terminate called without an active exception").
    leave()


def accumulate(rank: int, world: int) -> dict:
    """Accumulate GROUPS groups under DDP; return what was found."""
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    model.module.load_state_dict(reference.state_dict())
    all_reduces = []

    def count(state, bucket):
        all_reduces.append(1)
        return allreduce_hook(state, bucket)

    model.register_comm_hook(dist.group.WORLD, count)
    worst = train_groups(model, reference, rank, world, None)
    return {"all_reduces": len(all_reduces), "groups": GROUPS, "worst_difference": worst}


def accumulate_sharded(rank: int, world: int) -> dict:
    """Accumulate GROUPS groups under FSDP2 (a unit per Linear), clipping each step to
    CLIP; return what was found."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.load_state_dict(reference.state_dict())
    model = wrap_model(model, "fsdp", None, World(rank, rank, world), torch.device("cpu"), None)
    reduce_scatters = []
    reduce_scatter = dist.reduce_scatter_single

    def count(*args, **kwargs):
        reduce_scatters.append(1)
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = count
    try:
        worst = train_groups(model, reference, rank, world, CLIP)
    finally:
        dist.reduce_scatter_single = reduce_scatter
    return {"reduce_scatters": len(reduce_scatters), "units": 2, "groups": GROUPS, "worst_difference": worst}


def train_groups(model: torch.nn.Module, reference: torch.nn.Module, rank: int, world: int, clip: float | None) -> float:
    """Train `model` GROUPS steps of SIZE micro-batches through torchexp's Accumulator, and
    `reference` alike on each step's full batch; return the largest difference between
    their gradients (each clipped to `clip`'s global norm, if any)."""
    optimizer = RecordingSGD(model.parameters())
    accumulator = Accumulator(model, SIZE, World(rank, rank, world))
    precision = Precision(PrecisionChoice("fp32", "fp32", "test"), torch.device("cpu"))
    worst = 0.0
    for group in range(GROUPS):
        for index in range(SIZE):
            inputs, targets, mask = micro_batch(rank, group, index)
            with accumulator.syncing(accumulator.closes_group(index, SIZE), SIZE):
                loss = masked_loss(model, inputs, targets, mask)
                precision.backward(accumulator.loss_to_backward(loss, mask.sum(), index, SIZE))
        accumulator.step(precision, optimizer, model.parameters(), clip)
        # The full batch: every rank's micro-batches of this group, as one weighted mean.
        reference.zero_grad()
        batches = [micro_batch(other, group, index) for other in range(world) for index in range(SIZE)]
        inputs, targets, mask = (torch.cat(parts) for parts in zip(*batches))
        masked_loss(reference, inputs, targets, mask).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
        expected = [parameter.grad for parameter in reference.parameters()]
        worst = max(worst, *(float((got - want).abs().max()) for got, want in zip(optimizer.seen[-1], expected)))
        with torch.no_grad():  # step the reference as the model stepped
            for parameter, gradient in zip(reference.parameters(), optimizer.seen[-1]):
                parameter -= 0.1 * gradient
    return worst


if __name__ == "__main__":
    main()
