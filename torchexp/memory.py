"""Keeping freed memory in the process, so that training does not fault it back in.

glibc hands large freed blocks back to the kernel at once: blocks above its mmap threshold
are unmapped on free, and the top of the heap is trimmed above its trim threshold. A
training step frees and reallocates the same activations every step, so each step faults
them back in, page by page: about 6.6 million minor page faults in one MNIST epoch of the
default model on the CPU. Raising the mmap threshold is not enough: glibc caps it at
32 MiB, and the activations of one validation batch of 1,000 MNIST images under the
default model take 147 MB, which faulting in made validation about twice as slow as at
batch 64. So mmap is turned off, every block comes from the heap, and the trim threshold
is raised so that the heap is kept: a process holds on to its peak memory until it exits.

Under trainer.strategy fsdp the point is the opposite: each unit's gathered parameters
(tens of MB) are freed after it computes, and must go back. glibc's default mmap threshold
is dynamic: once a mapped block is freed, it rises to that block's size (up to 32 MiB), so
the next gathers come from the heap, which fragments and is never trimmed (1.8 GB of freed
heap held after 5 steps of a 100 M-parameter GPT on 2 ranks, no less than DDP's peak). So
by default the threshold is fixed at glibc's initial 128 KiB, which stops it from rising:
every large block is mapped, and unmapped when freed.

Either is a change to the whole process that lasts until it exits. The default (null) is
made in torchexp's command line's own process only; a library caller's process is changed
where its experiment's config says true or false, and never under TORCHEXP_MALLOPT=0
(`torchexp.process`).
"""

import ctypes
import logging
import os
from collections.abc import Callable

from torchexp.process import MALLOPT, allows

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial mmap threshold, fixed
TRIM_THRESHOLD_BYTES = 2**30  # free heap top kept before glibc trims it
USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)


def keep_freed_memory() -> bool:
    """Turn glibc's mmap off and raise its trim threshold for this process; return whether it did.

    Does nothing where the C library is not glibc (macOS, musl) and where the user set
    malloc's own environment variables, which then decide.
    """
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    mallopt = find_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process, so that freed large blocks go
    back to the kernel; return whether it did (as `keep_freed_memory`, only on glibc and
    where the user set none of malloc's variables)."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    mallopt = find_mallopt()
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def find_mallopt() -> Callable[[int, int], int] | None:
    """Return glibc's `mallopt`, or None when this process's C library is another."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # musl has a mallopt too, which does nothing; only glibc has gnu_get_libc_version.
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def keep_freed_memory_when_configured(enabled: bool | None, logger: logging.Logger, strategy: str = "ddp") -> None:
    """Apply trainer.keep_freed_memory (None: keep it, except under fsdp, where freed memory
    goes back to the kernel at once; in the command line's process only), and say so in the log."""
    if not allows(MALLOPT, asked=enabled is not None):
        return
    if enabled is None:
        enabled = strategy != "fsdp"
    if enabled and keep_freed_memory():
        logger.debug("glibc keeps freed memory for the next batches (trainer.keep_freed_memory)")
    elif not enabled and strategy == "fsdp" and return_freed_memory():
        logger.debug("glibc returns freed blocks of over 128 KiB to the kernel at once (trainer.strategy fsdp)")
