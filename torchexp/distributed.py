"""Distributed training on torch.distributed, launched by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; torchexp reads them, joins
the process group (NCCL on GPUs, Gloo on CPUs) and otherwise stays a single process.
Rank 0 writes every file; metrics are reduced over all ranks before anyone logs them.
"""

import contextlib
import dataclasses
import datetime
import gc
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from torchexp.errors import DeviceError, DistributedError, first_line

DEFAULT_TIMEOUT_S = 300  # seconds a collective waits for a dead or stuck rank; TORCHEXP_TIMEOUT_S overrides


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and results."""
        return self.rank == 0


def read_world() -> World:
    """Return the world torchrun describes in the environment, or a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)


def map_device(spec: str, world: World) -> str:
    """Map `--device` onto this rank: cuda (or auto with GPUs) becomes cuda:LOCAL_RANK.

    Raises:
        DeviceError: a single GPU (cuda:N) is named while several processes train.
    """
    if not world.distributed:
        return spec
    if spec.startswith("cuda:"):
        raise DeviceError(f"device {spec!r} names one GPU, but {world.size} processes train: use --device cuda")
    if spec == "cuda" or (spec == "auto" and torch.cuda.is_available()):
        return f"cuda:{world.local_rank}"
    return spec


def join(world: World, device: torch.device) -> None:
    """Join the process group of `world` (no-op for a single process).

    Collectives fail after TORCHEXP_TIMEOUT_S seconds (default 300) instead of waiting
    forever for a rank that died.
    """
    if not world.distributed or dist.is_initialized():
        return
    timeout_s = float(os.environ.get("TORCHEXP_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps its store across the restarts of --max-restarts: without a prefix of
        # its own, a restarted group would read the dead group's addresses and fail to connect.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"torchexp/attempt-{attempt}", store),
            rank=rank,
            world_size=size,
            timeout=timeout,
        )
    except RuntimeError as error:  # DistStoreError and Gloo's connection errors among them
        raise DistributedError(
            f"rank {world.rank} could not join the other {world.size - 1} training processes "
            f"within {timeout_s:g} s: {first_line(error)}"
        ) from error


def leave(free_objects: bool = True) -> None:
    """Leave the process group, if one was joined.

    Objects that hold the group, such as a DistributedDataParallel module, can outlive
    their owner in reference cycles (torch's lazy imports keep the frames they ran in).
    Freed during interpreter shutdown instead, they abort the process ("terminate called
    without an active exception"), so by default they are collected first, while Python
    is alive. After a failure, `free_objects=False` leaves at once: torchrun stops the
    surviving ranks within a tenth of a second of a death, and the error must be said first.
    """
    if dist.is_initialized():
        if free_objects:
            gc.collect()
        dist.destroy_process_group()


def sum_across(value: torch.Tensor) -> torch.Tensor:
    """Return the sum of `value` over all ranks (itself when not distributed)."""
    if not dist.is_initialized():
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total


def any_across(flag: bool, device: torch.device) -> bool:
    """Return True when `flag` is True on any rank."""
    if not dist.is_initialized():
        return flag
    return bool(sum_across(torch.tensor(float(flag), device=device)).item() > 0)


def gather_objects(value: Any, group: Any = None) -> list[Any]:
    """Return every rank's `value` (plain data and tensors), in rank order, over `group`
    (None: every training process)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks, as DDP's all-reduce does."""
    if not dist.is_initialized():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(dist.get_world_size())


def all_across(flag: bool, device: torch.device) -> bool:
    """Return True when `flag` is True on every rank."""
    if not dist.is_initialized():
        return flag
    return bool(sum_across(torch.tensor(float(flag), device=device)).item() == dist.get_world_size())


def barrier() -> None:
    """Wait for every rank."""
    if dist.is_initialized():
        dist.barrier()


def sum_metrics(sums: dict[str, Any], count: Any, device: torch.device) -> tuple[dict[str, torch.Tensor], float]:
    """Return metric sums and their sample count (or total weight) totalled over every rank."""
    total = sum_across(torch.tensor(float(count), device=device)).item()
    return {name: sum_across(torch.as_tensor(value, device=device)) for name, value in sums.items()}, total


def average_metrics(sums: dict[str, Any], count: float, world: World, device: torch.device) -> dict[str, float]:
    """Return the per-sample means of summed metrics, over every rank's samples."""
    if world.distributed:
        sums, count = sum_metrics(sums, count, device)
    return {name: (value / max(count, 1)).item() for name, value in sums.items()}


def mean_across(metrics: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Return the mean of each metric over the ranks (their batches are of equal size)."""
    if not world.distributed:
        return metrics
    return {name: sum_across(value.float()) / world.size for name, value in metrics.items()}


@contextlib.contextmanager
def reporting_lost_ranks(world: World) -> Iterator[None]:
    """Turn a collective that fails because another rank died or hung into a
    DistributedError that says so."""
    try:
        yield
    except RuntimeError as error:
        if not world.distributed or not is_lost_contact(error):
            raise
        raise DistributedError(
            f"rank {world.rank} lost contact with the other training processes "
            f"(one died or hung for over the timeout): {first_line(error)}"
        ) from error


def is_lost_contact(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank died or hung.

    Gloo reports a dead peer as a plain RuntimeError, so its message is all there is.
    """
    markers = ("Connection closed by peer", "Connection reset by peer", "timed out", "Timed out", "NCCL")
    return isinstance(error, dist.DistError) or any(marker in str(error) for marker in markers)
