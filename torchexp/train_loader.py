"""The train loader a project returns, whatever its kind, as the loop uses it: an epoch
begun at any batch, and what of it a checkpoint keeps.

Each kind resumes exactly in the middle of an epoch, without replaying the batches seen,
or is refused for mid-epoch checkpoints in one sentence (`refusal`):

- torchexp's loaders (`TensorLoader`, `SeededDataLoader`), and any loader with
  `set_epoch(epoch)` and `set_start(batch)`: positioned by torchexp's counters.
- a `torch.utils.data.DataLoader` (or torchdata's `StatefulDataLoader`) over a map-style
  data set, any sampler, any workers: torchexp draws each epoch's batches of indexes from
  the loader's own sampler with every generator seeded by (seed, epoch), and starts the
  epoch at a batch by index, never by loading what was seen. Its data set is read through
  `SeededSamples`, so that random augmentation in workers is fixed per sample.
- a loader with `state_dict()` and `load_state_dict()` (torchdata's `StatefulDataLoader`
  over an `IterableDataset`): its own state goes into the checkpoint.
- anything else (a plain DataLoader over an `IterableDataset`, a list of batches): whole
  epochs only.

A loader may have no length (a stream): an epoch is then one pass.
"""

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from torchexp.errors import CheckpointError, ProjectError, TorchexpError, first_line
from torchexp.loaders import SeededSamples, make_generator, shard_length
from torchexp.rng import mix_seed, seeded_globals

# The keyword arguments of DataLoader that a rebuilt loader takes over from the project's.
KEPT_OPTIONS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)
STATEFUL_LOADER = "StatefulDataLoader"  # torchdata's, recognised by name: torchdata is an extra


class TrainLoader:
    """The loop's view of the train loader.

    Attributes:
        loader: the project's loader.
        resumes_mid_epoch: whether a checkpoint may be taken in the middle of an epoch.
        refusal: when it may not, the sentence that says so and names what to use.
        keeps_state: whether a mid-epoch checkpoint keeps the loader's own `state_dict()`.
    """

    resumes_mid_epoch = True
    refusal = ""
    keeps_state = False

    def __init__(self, loader: Any):
        self.loader = loader

    def begin(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        """The batches of `epoch` (from 1) from batch `start` on, and how many batches the
        whole epoch has (None for a stream of unknown length)."""
        raise NotImplementedError

    def state_dict(self) -> Any:
        """What a mid-epoch checkpoint must keep besides torchexp's counters (None: nothing)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Take what `state_dict` returned, before the epoch is begun again."""


class PositionedLoader(TrainLoader):
    """torchexp's loaders, and any with `set_epoch` and `set_start`: the epoch's order is
    theirs, from (seed, epoch); torchexp's counters say where to start."""

    def begin(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        self.loader.set_epoch(epoch)
        self.loader.set_start(start)
        return self.loader, length_of(self.loader)


class MapStyleLoader(TrainLoader):
    """A DataLoader over a map-style data set, rebuilt once with the same options around an
    epoch's batches of keys that torchexp draws and starts where it likes.

    The project's sampler (or batch sampler) still decides the order: it is run once per
    epoch, in this process, with Python's, NumPy's and torch's generators (and its own) seeded
    from (seed, epoch), so a resumed epoch has the order of the uninterrupted one. The
    loader's generator is seeded likewise, so that starting an epoch never draws from the
    training process's generators.

    Args:
        loader: the project's DataLoader (or StatefulDataLoader) over a map-style data set.
        seed: the experiment's seed.
        rank: this rank.
        world: how many ranks take every epoch between them.
    """

    def __init__(self, loader: DataLoader, seed: int, rank: int = 0, world: int = 1):
        super().__init__(loader)
        self.seed, self.rank, self.world = seed, rank, world
        self.keys = EpochKeys()
        options = {
            name: getattr(loader, name) for name in KEPT_OPTIONS if name in inspect.signature(DataLoader).parameters
        }
        if loader.num_workers == 0:
            options.pop("prefetch_factor", None)
        dataset = SeededSamples(loader.dataset, seed)
        if loader.batch_sampler is None:  # batch_size=None: the data set returns whole batches
            self.loader = DataLoader(dataset, batch_size=None, sampler=self.keys, **options)
        else:
            self.loader = DataLoader(dataset, batch_sampler=self.keys, **options)
        self.source = loader

    def begin(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        batches = draw_batches(self.source, self.seed, epoch, self.rank, self.world)
        self.keys.batches = [
            [(epoch, index) for index in batch] if isinstance(batch, list) else (epoch, batch) for batch in batches
        ]
        self.keys.start = start
        self.loader.generator = make_generator(self.seed, epoch)
        return self.loader, len(batches)


class StatefulLoader(TrainLoader):
    """A loader that keeps its own position (torchdata's StatefulDataLoader over a stream):
    its `state_dict()` goes into mid-epoch checkpoints, and comes back before the epoch
    resumes. Starting an epoch draws from generators seeded by (seed, epoch)
    (`begin_seeded`), never from the training process's."""

    keeps_state = True

    def __init__(self, loader: Any, seed: int):
        super().__init__(loader)
        self.seed = seed
        self.resumed_state: Any = None

    def begin(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        if start == 0:
            set_epoch_everywhere(self.loader, epoch)
        elif self.resumed_state is None:
            raise CheckpointError(f"the train loader has no saved state to resume batch {start} of epoch {epoch} from")
        else:
            self.loader.load_state_dict(self.resumed_state)
        self.resumed_state = None
        return begin_seeded(self.loader, self.seed, epoch), length_of(self.loader)

    def state_dict(self) -> Any:
        return self.loader.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.resumed_state = state


class EpochOnlyLoader(TrainLoader):
    """A loader that can only start at an epoch's beginning, drawing from generators seeded
    by (seed, epoch) when it does (`begin_seeded`), never from the training process's.

    Args:
        loader: the project's loader.
        refusal: why it cannot resume mid-epoch, and what to use instead.
        seed: the experiment's seed.
    """

    resumes_mid_epoch = False

    def __init__(self, loader: Any, refusal: str, seed: int = 0):
        super().__init__(loader)
        self.refusal = refusal
        self.seed = seed

    def begin(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        if start:
            raise CheckpointError(f"{self.refusal}, so batch {start} of epoch {epoch} cannot be resumed")
        set_epoch_everywhere(self.loader, epoch)
        return begin_seeded(self.loader, self.seed, epoch), length_of(self.loader)


def adapt_train_loader(loader: Any, seed: int, rank: int = 0, world: int = 1) -> TrainLoader:
    """The loop's view of the project's train loader (see the module's docstring).

    Args:
        loader: `data.loaders["train"]`.
        seed: the experiment's seed.
        rank: this process's rank.
        world: the number of training processes.
    """
    if hasattr(loader, "set_epoch") and hasattr(loader, "set_start"):
        return PositionedLoader(loader)
    is_dataloader = isinstance(loader, DataLoader)
    rebuildable = type(loader) is DataLoader or type(loader).__name__ == STATEFUL_LOADER
    if rebuildable and not isinstance(loader.dataset, IterableDataset):
        return MapStyleLoader(loader, seed, rank, world)
    if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
        return StatefulLoader(loader, seed)
    if is_dataloader and isinstance(loader.dataset, IterableDataset):
        what = f"a DataLoader over {type(loader.dataset).__name__}, an IterableDataset,"
        instead = (
            "use torchdata's StatefulDataLoader, "
            f"and give {type(loader.dataset).__name__} state_dict() and load_state_dict()"
        )
    elif is_dataloader:
        what = f"a {type(loader).__name__}, a DataLoader subclass torchexp does not rebuild,"
        instead = "return a torch.utils.data.DataLoader, or give it set_epoch(epoch) and set_start(batch)"
    else:
        what = f"a {type(loader).__name__},"
        instead = "return a torch.utils.data.DataLoader or one of torchexp.loaders"
    return EpochOnlyLoader(loader, f"the train loader, {what} cannot resume in the middle of an epoch: {instead}", seed)


class EpochKeys:
    """The batches of (epoch, index) keys of one epoch, from a start batch: the batch
    sampler (or sampler) of a rebuilt DataLoader, which torchexp refills every epoch."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches[self.start :])


def draw_batches(loader: DataLoader, seed: int, epoch: int, rank: int, world: int) -> list[Any]:
    """This rank's batches of indexes of `epoch`, as the loader's own samplers give them with
    their generators seeded by (seed, epoch); equal in number on every rank. Without
    automatic batching (batch_size=None), each batch is one index."""
    if loader.batch_sampler is not None and loader.batch_size is None:  # the project's own batch sampler
        batches = run_seeded(loader.batch_sampler, seed, epoch)
        return batches[rank::world][: shard_length(len(batches), rank, world, True)]
    indexes = run_seeded(loader.sampler, seed, epoch)
    if not is_sharded(loader.sampler):
        indexes = indexes[rank::world][: shard_length(len(indexes), rank, world, True)]
    if loader.batch_sampler is None:
        return indexes
    size = loader.batch_size
    assert size is not None, "a DataLoader builds its own batch sampler from its batch_size"
    stop = len(indexes) - len(indexes) % size if loader.drop_last else len(indexes)
    return [indexes[begin : begin + size] for begin in range(0, stop, size)]


def run_seeded(sampler: Iterable, seed: int, epoch: int) -> list[Any]:
    """Everything a sampler yields for `epoch`, its generators seeded by (seed, epoch): the
    global ones and its own `generator`, each put back afterwards."""
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    epoch_seed = mix_seed(seed, epoch)
    with seeded_globals(epoch_seed), seeded_generator(getattr(sampler, "generator", None), epoch_seed):
        return [list(item) if isinstance(item, (list, tuple)) else int(item) for item in sampler]


@contextlib.contextmanager
def seeded_generator(generator: Any, seed: int) -> Iterator[None]:
    """Within the block, `generator` starts from `seed` if it is a torch.Generator (anything
    else is left alone); afterwards it is as it was."""
    if not isinstance(generator, torch.Generator):
        yield
        return
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


def is_sharded(sampler: Any) -> bool:
    """Whether a sampler already gives each rank its share (a DistributedSampler)."""
    return any(base.__name__.endswith("DistributedSampler") for base in type(sampler).__mro__)


def begin_seeded(loader: Any, seed: int, epoch: int) -> Iterator[Any]:
    """`iter(loader)` with whatever it draws drawn from generators seeded by (seed, epoch).

    A DataLoader draws its workers' seed from its `generator` when it starts them, which
    persistent workers do once per process, and its sampler's seed every epoch from the
    global generator: the first comes from a generator of (seed, epoch), so that a process
    resuming at an epoch draws the sampler's seed as an uninterrupted one does.
    """
    if isinstance(loader, DataLoader):
        loader.generator = make_generator(seed, epoch)
    with seeded_globals(mix_seed(seed, epoch)):
        return iter(loader)


def set_epoch_everywhere(loader: Any, epoch: int) -> None:
    """Call `set_epoch(epoch)` on the loader, its data set and its sampler, where they have one."""
    for part in (loader, getattr(loader, "dataset", None), getattr(loader, "sampler", None)):
        method: Callable | None = getattr(part, "set_epoch", None)
        if callable(method):
            method(epoch)


def reading(batches: Iterable, split: str) -> Iterator[Any]:
    """The batches of a loader, an error raised while reading one said in one sentence.

    An error raised in a DataLoader worker reaches this process with the worker's
    traceback in its message: only its own sentence is kept. torchexp's errors (a
    project's DataError) keep their type; any other becomes a ProjectError naming the loader.

    Raises:
        TorchexpError: reading a batch failed.
    """
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except TorchexpError as error:
            raise type(error)(own_sentence(error)) from error
        except Exception as error:  # a data set's code may raise anything
            raise ProjectError(f"the {split} loader failed: {type(error).__name__}: {own_sentence(error)}") from error
        yield batch


def own_sentence(error: BaseException) -> str:
    """An error's own sentence: the first line of its message, or for an error a DataLoader
    worker re-raised, the last line of the worker's traceback, less the type's name."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        return lines[-1].partition(": ")[2] or lines[-1]
    return first_line(error)


def length_of(loader: Any) -> int | None:
    """A loader's number of batches, or None when it has no length (a stream)."""
    try:
        return len(loader)
    except TypeError:
        return None
