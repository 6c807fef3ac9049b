"""The blocks nanogpt_chars trains and validates on: (x, y) pairs of `block_size` character
ids, y being x shifted by one character.

The training set is a stream (`CharStream`, an IterableDataset without a length): each
epoch reads the training text once, in blocks whose alignment and order are drawn from
(seed, epoch), each DataLoader worker and each rank its own share. Its state is its epoch
and its position in its share, which torchdata's StatefulDataLoader keeps per worker and
torchexp in every mid-epoch checkpoint: a resumed stream goes on from there without
reading what it gave.

The validation set is a fixed set of blocks (`fixed_blocks`), the same at every validation.
"""

import os
from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info


class CharStream(IterableDataset):
    """The training text's blocks, a new order every epoch, this rank's and worker's share.

    Args:
        tokens: the training text's character ids (1-D, any integer type).
        block_size: characters in a block.
        seed: the experiment's seed.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, seed: int):
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.epoch, self.position = 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (from 1) at its beginning."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """The epoch, and how many blocks of its share this copy has given."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        share = self.take_share(self.draw_offsets())
        while self.position < len(share):
            offset = share[self.position]
            self.position += 1
            block = self.tokens[offset : offset + self.block_size + 1].long()
            yield block[:-1], block[1:]

    def draw_offsets(self) -> list[int]:
        """The epoch's block offsets, in its order: blocks side by side from a first offset
        below block_size, so that each epoch cuts the text elsewhere; all from a generator
        of the stream's own, seeded by (seed, epoch), which leaves the process's untouched."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        first = int(torch.randint(self.block_size, (1,), generator=generator))
        offsets = torch.arange(first, len(self.tokens) - self.block_size, self.block_size)
        return offsets[torch.randperm(len(offsets), generator=generator)].tolist()

    def take_share(self, offsets: list[int]) -> list[int]:
        """This rank's and this DataLoader worker's offsets: every (ranks x workers)-th, so
        that no two of them read the same block."""
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        ranks, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        return offsets[rank * workers + worker_id :: ranks * workers]


def fixed_blocks(tokens: torch.Tensor, block_size: int, most: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Side-by-side blocks of `tokens` from its start, at most `most` of them spread evenly
    over the text (None: all); return (x, y), each (blocks, block_size) int64."""
    count = (len(tokens) - 1) // block_size
    starts = torch.arange(count) * block_size
    if most is not None and most < count:
        starts = starts[torch.linspace(0, count - 1, most).round().long()]
    windows = starts[:, None] + torch.arange(block_size + 1)
    blocks = tokens.long()[windows]
    return blocks[:, :-1], blocks[:, 1:]
