"""How many threads inference may use: the cores this process is given, not the machine's.

torch and onnxruntime size their thread pools from the machine's core count. A server
pinned to some cores, or in a container with a CPU quota, then runs more threads than it
has cores, and they wait for each other: the oversubscription users of Ray Serve and
multi-worker deployments report. The server counts what it may use instead.
"""

import contextlib
import math
import os

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


def choose_threads(requested: int | None, runtime: str, workers: int = 1) -> int:
    """Return `--threads`, or when it is not given each worker's share of the usable cores,
    less one for a torch worker's event loop.

    The event loop parses and answers every request while the model runs, and torch's
    OpenMP threads keep spinning after each batch: on 2 cores, `serve` with 1 torch thread
    answered 766-808 requests/s at 1 client and 4,078-4,379 at 32, with 2 threads 391-457
    and 3,552-3,594. onnxruntime did better with every core (1,273 against 1,013 requests/s
    at 1 client, 5,189 against 5,103 at 32), so it keeps them.
    """
    if requested is not None:
        return requested
    share = max(1, count_usable_cores() // workers)
    return max(1, share - 1) if runtime == "torch" else share


def apply_threads(threads: int) -> None:
    """Give torch `threads` intra-op threads and one inter-op thread.

    Inter-op parallelism only helps graphs with independent branches; its pool would add
    threads beyond those given.
    """
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # torch refuses once parallel work has started in this process
        torch.set_num_interop_threads(1)
