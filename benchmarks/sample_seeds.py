"""What seeding every sample costs: `SeededSamples` in a DataLoader worker (Python's,
NumPy's and torch's global generators seeded from (seed, epoch, index) before each
`__getitem__`) against reading the same data set directly, side by side in one process.

    python benchmarks/sample_seeds.py
"""

import random
import time
from unittest import mock

import numpy as np
import torch
from torch.utils.data import Dataset

import torchexp.loaders
from common import emit, machine, make_parser
from torchexp.loaders import SeededSamples


class Noisy(Dataset):
    """A data set whose samples cost almost nothing, so that the seeding is what is timed."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, index: int) -> float:
        return random.random() + float(np.random.random()) + float(torch.rand(()))


def time_per_call(call, count: int) -> float:
    """The median of five timings of `count` calls, in microseconds per call."""
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for index in range(count):
            call(index)
        timings.append((time.perf_counter() - started) / count * 1e6)
    return sorted(timings)[2]


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="calls per timing (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, seeded = Noisy(), SeededSamples(Noisy(), args.seed)
    direct = time_per_call(lambda index: plain[index], args.samples)
    with mock.patch.object(torchexp.loaders, "get_worker_info", lambda: True):  # as in a worker
        in_worker = time_per_call(lambda index: seeded[(1, index)], args.samples)
    emit({"machine": machine()})
    emit({"direct_us": round(direct, 2), "seeded_us": round(in_worker, 2), "cost_per_sample_us": round(in_worker - direct, 2)})


if __name__ == "__main__":
    main()
