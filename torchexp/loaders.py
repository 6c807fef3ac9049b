"""Batch loaders whose order is a pure function of (seed, epoch), so resume is exact.

`TensorLoader` is the fast path for data sets that fit in memory: the tensors are held
whole (on the training device once `to` is called) and batches are taken by index, with
the per-batch `transform` (e.g. uint8 to normalized float) applied where the data lives.
`SeededDataLoader` is a `torch.utils.data.DataLoader` with the same epoch-seeded order
and the same interface, for data sets that need worker processes.

Both implement what the training loop relies on:
    set_epoch(epoch)    choose the order of that epoch
    set_start(batch)    begin the next iteration at this batch (mid-epoch resume)
    shard(rank, world, even)  take this rank's part of every epoch (distributed training)
    to(device)          deliver batches on this device
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from torchexp.errors import CheckpointError
from torchexp.rng import mix_seed, seed_globals

Batch = tuple[torch.Tensor, ...]


def make_generator(seed: int, epoch: int) -> torch.Generator:
    """Return a CPU generator seeded from (seed, epoch) alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


def order_indexes(
    size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1, even: bool = True
) -> torch.Tensor:
    """Return this rank's sample order for an epoch.

    Every rank computes the same permutation and takes every `world`-th index from
    `rank`. With `even`, shards are trimmed to the same length so that ranks step
    together (training); without, every sample belongs to exactly one shard (evaluation).
    """
    order = torch.randperm(size, generator=make_generator(seed, epoch)) if shuffle else torch.arange(size)
    return order[rank::world][: shard_length(size, rank, world, even)]


def shard_length(size: int, rank: int, world: int, even: bool) -> int:
    """Return how many of `size` samples rank `rank` of `world` takes."""
    return size // world if even else (size - rank + world - 1) // world


class TensorLoader:
    """Batches of in-memory tensors taken by index.

    Args:
        tensors: tensors of equal length along dimension 0, e.g. (images, labels).
        batch_size: samples per batch.
        shuffle: draw a new order every epoch from (seed, epoch).
        seed: the experiment's seed.
        transform: applied to each batch tuple on the device, e.g. normalization.
        drop_last: drop the last incomplete batch.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        transform: Callable[[Batch], Batch] | None = None,
        drop_last: bool = False,
    ):
        sizes = {len(tensor) for tensor in tensors}
        if len(sizes) != 1:
            raise ValueError(f"tensors must have the same length, got lengths {sorted(sizes)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.drop_last = drop_last
        self.epoch = 1
        self.start = 0
        self.rank, self.world, self.even = 0, 1, True

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return shard_length(len(self.tensors[0]), self.rank, self.world, self.even)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, batch: int) -> None:
        self.start = batch

    def shard(self, rank: int, world: int, even: bool = True) -> None:
        self.rank, self.world, self.even = rank, world, even

    def to(self, device: torch.device) -> "TensorLoader":
        self.tensors = tuple(tensor.to(device) for tensor in self.tensors)
        return self

    def __iter__(self) -> Iterator[Batch]:
        device = self.tensors[0].device
        order = order_indexes(
            len(self.tensors[0]), self.shuffle, self.seed, self.epoch, self.rank, self.world, self.even
        )
        order = order.to(device)
        for batch in range(self.start, len(self)):
            indexes = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            items = tuple(tensor[indexes] for tensor in self.tensors)
            yield self.transform(items) if self.transform else items
        self.start = 0


class SeededSamples(Dataset):
    """A map-style data set read by (epoch, index) keys, each sample's random draws fixed.

    In a DataLoader worker, Python's, NumPy's and torch's global generators are seeded from
    (seed, epoch, index) before `dataset[index]`: random crops, flips and noise drawn in
    `__getitem__` are the same in every run and after every resume, whichever worker reads
    the sample, for about 11 microseconds a sample (`benchmarks/sample_seeds.py`). Without
    workers the sample is read in the training process, between two steps, and draws from
    its generators, whose state every checkpoint keeps: exact too, and free. (So a run with
    workers and one without draw different augmentations.)
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        # A map-style data set has a length, which torch's Dataset class does not declare.
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if get_worker_info() is not None:
            seed_globals(mix_seed(self.seed, epoch, index))
        return self.dataset[index]


class EpochSampler(Sampler[tuple[int, int]]):
    """Sample (epoch, index) keys of `SeededSamples` in the order `order_indexes` gives,
    from a start position."""

    def __init__(self, size: int, shuffle: bool, seed: int):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch, self.start = 1, 0
        self.rank, self.world, self.even = 0, 1, True

    def __len__(self) -> int:
        return shard_length(self.size, self.rank, self.world, self.even) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = order_indexes(self.size, self.shuffle, self.seed, self.epoch, self.rank, self.world, self.even)
        return ((self.epoch, index) for index in order[self.start :].tolist())


class SeededDataLoader(DataLoader):
    """A DataLoader with an epoch-seeded order and the TensorLoader interface.

    The data set is read through `SeededSamples`: random draws in its `__getitem__` are
    fixed by (seed, epoch, index), in whichever worker, so they repeat across runs and
    across resumes, in the middle of an epoch too. `transform` runs in this process and
    stays exact.

    Args:
        dataset: a map-style data set.
        batch_size: samples per batch.
        shuffle: draw a new order every epoch from (seed, epoch).
        seed: the experiment's seed.
        transform: applied to each batch tuple on the device.
        num_workers: worker processes; see torch.utils.data.DataLoader.
    """

    batch_size: int  # always given: DataLoader's None (no automatic batching) is never used here

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        transform: Callable[[Batch], Batch] | None = None,
        num_workers: int = 0,
    ):
        self.epoch_sampler = EpochSampler(len(dataset), shuffle, seed)  # type: ignore[arg-type]  # as in SeededSamples
        super().__init__(
            SeededSamples(dataset, seed),
            batch_size=batch_size,
            sampler=self.epoch_sampler,
            num_workers=num_workers,
            persistent_workers=False,
            generator=make_generator(seed, 1),
        )
        self.seed = seed
        self.transform = transform
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        sampler = self.epoch_sampler
        start = sampler.start
        sampler.start = 0
        total = -(-len(sampler) // self.batch_size)
        sampler.start = start
        return total

    def set_epoch(self, epoch: int) -> None:
        self.epoch_sampler.epoch = epoch
        self.epoch_sampler.start = 0
        self.generator = make_generator(self.seed, epoch)

    def set_start(self, batch: int) -> None:
        self.epoch_sampler.start = batch * self.batch_size

    def shard(self, rank: int, world: int, even: bool = True) -> None:
        sampler = self.epoch_sampler
        sampler.rank, sampler.world, sampler.even = rank, world, even

    def to(self, device: torch.device) -> "SeededDataLoader":
        self.device = torch.device(device)
        return self

    # Yields the batches moved and transformed, where DataLoader returns its iterator object.
    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for items in super().__iter__():
            items = tuple(item.to(self.device, non_blocking=True) for item in items)
            yield self.transform(items) if self.transform else items
        self.epoch_sampler.start = 0


def prepare_loaders(loaders: dict[str, Any], device: torch.device, rank: int, world: int) -> None:
    """Send the loaders that support it to `device`, and shard them among `world` ranks.

    Training shards are of equal length so that ranks step together; validation shards
    cover every sample once; the test set is not sharded.
    """
    for split, loader in loaders.items():
        if hasattr(loader, "to"):
            loader.to(device)
        if world > 1 and split in ("train", "validation") and hasattr(loader, "shard"):
            loader.shard(rank, world, even=split == "train")


def position_loader(loader: Any, epoch: int, start: int) -> None:
    """Set a loader's epoch order and starting batch, when it supports them.

    Raises:
        CheckpointError: resuming mid-epoch on a loader that cannot start mid-way.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if start and not hasattr(loader, "set_start"):
        raise CheckpointError("the train loader cannot resume mid-epoch: use torchexp.loaders")
    if hasattr(loader, "set_start"):
        loader.set_start(start)
