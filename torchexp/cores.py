"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota, not
the machine's count.

torch and onnxruntime size their thread pools from the machine's core count. A process
pinned to some cores, or in a container with a CPU quota, then runs more threads than it
has cores, and they wait for each other; so do a trainer's threads beside its DataLoader
workers. `serve` and `train` count what they may use instead.
"""

import contextlib
import logging
import math
import os
from collections.abc import Iterator

# cgroup v2 keeps "quota period" in one file; v1 keeps them in two. -1 or "max": no quota.
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def count_usable_cores() -> int:
    """Return the cores this process may run on: its CPU affinity, capped by a cgroup CPU
    quota (`docker --cpus`, Kubernetes CPU limits), which affinity does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    quota = read_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def read_cpu_quota() -> int | None:
    """Return the cgroup CPU quota in whole cores (rounded up), or None when there is none."""
    fields = read_words(CGROUP_V2_CPU_MAX) or read_words(CGROUP_V1_QUOTA) + read_words(CGROUP_V1_PERIOD)
    if len(fields) != 2:
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:  # "max"
        return None
    return math.ceil(quota / period) if quota > 0 and period > 0 else None


def read_words(path: str) -> list[str]:
    """Return the whitespace-separated words of a small file, or [] when it cannot be read."""
    try:
        with open(path, encoding="ascii") as file:
            return file.read().split()
    except (OSError, UnicodeDecodeError):
        return []


def share_cores_with_workers(num_workers: int, logger: logging.Logger) -> None:
    """Give the training process the usable cores its `num_workers` DataLoader workers leave
    (at least one), unless OMP_NUM_THREADS says otherwise.

    Each worker runs one thread; torch's default of a thread per core beside them made
    training with 2 workers on 2 cores about 6 times slower (the threads spin waiting for
    the cores the workers hold).
    """
    import torch

    if num_workers == 0 or "OMP_NUM_THREADS" in os.environ:
        return
    cores = count_usable_cores()
    threads = max(1, cores - num_workers)
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info(
            f"{threads} torch thread{'s' if threads > 1 else ''}: "
            f"{cores} usable cores less {num_workers} loader workers (OMP_NUM_THREADS overrides)"
        )


@contextlib.contextmanager
def keeping_torch_threads() -> Iterator[None]:
    """Within the block, `share_cores_with_workers` may change torch's thread count;
    afterwards it is as it was, so that a caller training in-process gets its own back."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
