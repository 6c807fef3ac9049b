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


def choose_threads(requested: int | None) -> int:
    """Return `--threads`, or the usable cores when it is not given."""
    return requested if requested is not None else count_usable_cores()


def apply_threads(threads: int) -> None:
    """Give torch `threads` intra-op threads and one inter-op thread.

    Inter-op parallelism only helps graphs with independent branches; its pool would add
    threads beyond those given.
    """
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # torch refuses once parallel work has started in this process
        torch.set_num_interop_threads(1)
