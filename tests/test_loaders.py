"""Loaders whose order is a function of (seed, epoch) alone."""

import pytest
import torch
from torch.utils.data import TensorDataset

from torchexp.loaders import SeededDataLoader, TensorLoader, order_indexes

SIZE = 23  # not a multiple of the batch size, so the last batch is short


def samples() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(SIZE), torch.arange(SIZE) * 10


def order_of(loader) -> list[int]:
    return [int(index) for batch in loader for index in batch[0]]


def test_tensor_loader_gives_every_sample_once_per_epoch_in_batches():
    loader = TensorLoader(samples(), batch_size=5, shuffle=True, seed=1)
    batches = list(loader)
    assert [len(batch[0]) for batch in batches] == [5, 5, 5, 5, 3]
    assert len(loader) == 5
    assert sorted(order_of(loader)) == list(range(SIZE))
    for images, labels in batches:
        assert torch.equal(labels, images * 10)  # tensors stay aligned


def test_tensor_loader_without_shuffle_keeps_the_data_order():
    assert order_of(TensorLoader(samples(), batch_size=5)) == list(range(SIZE))


def test_tensor_loader_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch, draws_before=0):
        torch.rand(draws_before)  # the global generator's state must not matter
        loader = TensorLoader(samples(), batch_size=4, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return order_of(loader)

    assert order(7, 2) == order(7, 2, draws_before=100)
    assert order(7, 2) != order(7, 3)
    assert order(7, 2) != order(8, 2)


def test_tensor_loader_repeats_an_epoch_when_iterated_twice():
    loader = TensorLoader(samples(), batch_size=4, shuffle=True, seed=3)
    loader.set_epoch(5)
    assert order_of(loader) == order_of(loader)


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5])
def test_tensor_loader_set_start_gives_exactly_the_remaining_batches(start):
    loader = TensorLoader(samples(), batch_size=5, shuffle=True, seed=2)
    loader.set_epoch(3)
    whole = [batch[0].tolist() for batch in loader]
    loader.set_epoch(3)
    loader.set_start(start)
    assert [batch[0].tolist() for batch in loader] == whole[start:]
    # The next pass starts from the beginning again.
    assert [batch[0].tolist() for batch in loader] == whole


def test_set_epoch_resets_the_start():
    loader = TensorLoader(samples(), batch_size=5)
    loader.set_start(3)
    loader.set_epoch(2)
    assert len(list(loader)) == 5


@pytest.mark.parametrize("world", [2, 3, 4])
def test_tensor_loader_shards_are_disjoint_and_equal(world):
    parts = []
    for rank in range(world):
        loader = TensorLoader(samples(), batch_size=2, shuffle=True, seed=4)
        loader.shard(rank, world)
        loader.set_epoch(2)
        parts.append(order_of(loader))
        assert len(loader) == -(-(SIZE // world) // 2)
    assert all(len(part) == SIZE // world for part in parts)
    flat = [index for part in parts for index in part]
    assert len(set(flat)) == len(flat)


def test_order_indexes_shards_cover_the_whole_permutation_when_it_divides():
    parts = [order_indexes(12, True, 0, 1, rank, 3) for rank in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(12))


def test_tensor_loader_drop_last_drops_the_short_batch():
    loader = TensorLoader(samples(), batch_size=5, drop_last=True)
    assert len(loader) == 4
    assert [len(batch[0]) for batch in loader] == [5, 5, 5, 5]


def test_tensor_loader_applies_the_transform_to_each_batch():
    loader = TensorLoader(samples(), batch_size=10, transform=lambda batch: (batch[0].float() / 2, batch[1] + 1))
    images, labels = next(iter(loader))
    assert images.dtype == torch.float32
    assert images.tolist() == [index / 2 for index in range(10)]
    assert labels.tolist() == [index * 10 + 1 for index in range(10)]


def test_tensor_loader_refuses_tensors_of_different_lengths():
    with pytest.raises(ValueError, match=r"tensors must have the same length, got lengths \[3, 4\]"):
        TensorLoader((torch.zeros(3), torch.zeros(4)), batch_size=2)


def test_tensor_loader_refuses_a_batch_size_below_one():
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0"):
        TensorLoader(samples(), batch_size=0)


def test_tensor_loader_of_an_empty_set_has_no_batches():
    loader = TensorLoader((torch.zeros(0), torch.zeros(0)), batch_size=4, shuffle=True)
    assert len(loader) == 0 and list(loader) == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_data_loader_gives_the_tensor_loader_order(num_workers):
    tensors = samples()
    for epoch in (1, 2):
        reference = TensorLoader(tensors, batch_size=5, shuffle=True, seed=9)
        reference.set_epoch(epoch)
        loader = SeededDataLoader(TensorDataset(*tensors), batch_size=5, shuffle=True, seed=9, num_workers=num_workers)
        loader.set_epoch(epoch)
        assert len(loader) == len(reference) == 5
        assert [b[0].tolist() for b in loader] == [b[0].tolist() for b in reference]


def test_seeded_data_loader_set_start_resumes_mid_epoch_and_transforms():
    tensors = samples()
    loader = SeededDataLoader(TensorDataset(*tensors), batch_size=5, shuffle=True, seed=9, transform=lambda b: (b[0] + 1000, b[1]))
    loader.set_epoch(2)
    whole = [batch[0].tolist() for batch in loader]
    assert all(index >= 1000 for batch in whole for index in batch)
    loader.set_epoch(2)
    loader.set_start(2)
    assert len(loader) == 5  # the length of the epoch, as for TensorLoader
    assert [batch[0].tolist() for batch in loader] == whole[2:]
    assert [batch[0].tolist() for batch in loader] == whole


def test_seeded_data_loader_shards_like_the_tensor_loader():
    tensors = samples()
    reference = TensorLoader(tensors, batch_size=3, shuffle=True, seed=1)
    reference.shard(1, 2)
    loader = SeededDataLoader(TensorDataset(*tensors), batch_size=3, shuffle=True, seed=1)
    loader.shard(1, 2)
    assert order_of(loader) == order_of(reference)
