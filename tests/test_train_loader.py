"""The train loader as the loop sees it: each kind begins an epoch at any batch without
reading what came before, or says in one sentence why it cannot."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler, WeightedRandomSampler

from torchexp.loaders import SeededDataLoader, TensorLoader
from torchexp.train_loader import EpochOnlyLoader, MapStyleLoader, PositionedLoader, StatefulLoader, adapt_train_loader

SIZE = 40


class Noisy(Dataset):
    """Each sample draws from the three global generators; it counts the samples it read."""

    def __init__(self):
        self.read: list[int] = []

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, index: int):
        self.read.append(index)
        return torch.tensor([index + torch.rand(()).item(), float(np.random.random()), random.random()])


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(SIZE))


def batches_of(loader, epoch: int, start: int = 0) -> list[torch.Tensor]:
    iterable, _ = loader.begin(epoch, start)
    return [batch.clone() for batch in iterable]


def test_each_kind_of_loader_is_recognised():
    assert isinstance(adapt_train_loader(TensorLoader([torch.zeros(4)], 2), 0), PositionedLoader)
    assert isinstance(adapt_train_loader(SeededDataLoader(Noisy(), 2), 0), PositionedLoader)
    assert isinstance(adapt_train_loader(DataLoader(Noisy(), batch_size=4, shuffle=True), 0), MapStyleLoader)
    from torchdata.stateful_dataloader import StatefulDataLoader

    assert isinstance(adapt_train_loader(StatefulDataLoader(Noisy(), batch_size=4), 0), MapStyleLoader)
    assert isinstance(adapt_train_loader(StatefulDataLoader(Stream(), batch_size=4), 0), StatefulLoader)


@pytest.mark.parametrize(
    "loader, sentence",
    [
        (DataLoader(Stream(), batch_size=4), "the train loader, a DataLoader over Stream, an IterableDataset, cannot resume in the middle of an epoch: "
         "use torchdata's StatefulDataLoader, and give Stream state_dict() and load_state_dict()"),
        (type("MyLoader", (DataLoader,), {})(Noisy(), batch_size=4), "the train loader, a MyLoader, a DataLoader subclass torchexp does not rebuild, "
         "cannot resume in the middle of an epoch: return a torch.utils.data.DataLoader, or give it set_epoch(epoch) and set_start(batch)"),
        ([torch.zeros(2)] * 3, "the train loader, a list, cannot resume in the middle of an epoch: return a torch.utils.data.DataLoader or one of torchexp.loaders"),
    ],
)  # fmt: skip
def test_a_loader_that_cannot_resume_mid_epoch_says_why_and_what_to_use(loader, sentence):
    adapted = adapt_train_loader(loader, 0)
    assert isinstance(adapted, EpochOnlyLoader) and not adapted.resumes_mid_epoch
    assert adapted.refusal == sentence


def indexes(batches: list[torch.Tensor]) -> list[int]:
    """The sample indexes of Noisy's batches (their first value is index + a draw in [0, 1))."""
    return [int(index) for batch in batches for index in batch[:, 0].floor()]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloader_begun_mid_epoch_gives_the_rest_of_the_uninterrupted_epoch_and_reads_nothing_before(workers):
    options = {"batch_size": 4, "shuffle": True, "num_workers": workers, "persistent_workers": workers > 0}
    straight = adapt_train_loader(DataLoader(Noisy(), **options), seed=3)
    epochs = [batches_of(straight, epoch) for epoch in (1, 2)]
    assert indexes(epochs[0]) != indexes(epochs[1]), "each epoch has its own order"
    dataset = Noisy()
    later = batches_of(adapt_train_loader(DataLoader(dataset, **options), seed=3), 2, start=7)
    assert indexes(later) == indexes(epochs[1][7:])
    if workers:
        # Every sample's draws are fixed by (seed, epoch, index), whichever worker reads it.
        assert all(torch.equal(a, b) for a, b in zip(later, epochs[1][7:]))
    else:
        assert dataset.read == indexes(epochs[1][7:])  # nothing before batch 7 was read


def test_beginning_an_epoch_draws_nothing_from_the_training_process_generators():
    loader = adapt_train_loader(DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    iterable, total = loader.begin(1, 3)
    assert total == SIZE // 4
    next(iter(iterable))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_loaders_own_samplers_decide_the_order_seeded_by_seed_and_epoch():
    weights = torch.arange(SIZE, dtype=torch.float)
    sampled = [adapt_train_loader(DataLoader(Noisy(), batch_size=5, sampler=WeightedRandomSampler(weights, SIZE)), seed=2) for _ in range(2)]
    first, again = (batches_of(loader, 1) for loader in sampled)
    assert indexes(first) == indexes(again)
    custom = DataLoader(Noisy(), batch_sampler=BatchSampler(SequentialSampler(range(SIZE)), 6, drop_last=True))
    assert [batch[:, 0].floor().int().tolist() for batch in batches_of(adapt_train_loader(custom, 0), 1, start=5)] == [list(range(30, 36))]


def test_ranks_take_disjoint_shares_of_equal_length():
    shares = []
    for rank in (0, 1, 2):
        loader = adapt_train_loader(DataLoader(Noisy(), batch_size=4, shuffle=True), seed=5, rank=rank, world=3)
        shares.append(indexes(batches_of(loader, 1)))
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == SIZE // 3 // 4 * 4 + (SIZE // 3) % 4
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])


def test_an_epoch_only_loader_refuses_to_begin_mid_epoch():
    from torchexp.errors import CheckpointError

    loader = adapt_train_loader(DataLoader(Stream(), batch_size=4), 0)
    assert loader.begin(1, 0)[1] is None  # a stream has no length
    with pytest.raises(CheckpointError, match=r"cannot resume in the middle of an epoch: .*, so batch 2 of epoch 1 cannot be resumed$"):
        loader.begin(1, 2)


def test_a_loader_state_a_checkpoint_could_not_load_back_is_refused():
    from torchexp.errors import ProjectError
    from torchexp.training_state import check_plain_data

    check_plain_data({"epoch": 2, "position": torch.tensor(3), "workers": [{"seed": None}]}, "state", "the loader returned")
    with pytest.raises(ProjectError, match=r"^the loader returned a Generator at state\['rng'\]: a checkpoint holds tensors"):
        check_plain_data({"rng": np.random.default_rng(0)}, "state", "the loader returned")


class Broken(Dataset):
    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, index: int):
        if index == 7:
            raise ValueError(f"sample {index} is unreadable")
        from torchexp.errors import DataError

        if index == 9:
            raise DataError(f"the file of sample {index} is missing")
        return torch.zeros(1)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_reading_a_batch_is_one_sentence_even_from_a_worker(workers):
    from torchexp.errors import DataError, ProjectError
    from torchexp.train_loader import reading

    with pytest.raises(ProjectError, match=r"^the train loader failed: ValueError: sample 7 is unreadable$"):
        list(reading(DataLoader(Broken(), batch_size=4, num_workers=workers), "train"))
    with pytest.raises(DataError, match=r"^the file of sample 9 is missing$"):
        list(reading(DataLoader(Broken(), batch_size=1, sampler=[9], num_workers=workers), "validation"))
