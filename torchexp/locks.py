"""One kind of lock for every file torchexp guards: the operating system's own, through `filelock`.

The kernel releases it when its holder dies (an flock on Linux and macOS, a LockFileEx
range on Windows), so a lock left by a killed process is taken over at once instead of
being obeyed forever (or broken after a timeout, as lock files are). Experiments (`.lock`),
search claims (`.claims/trial-NNNN.lock`), a study's scheduler and its Optuna journal all
use `FileLock`; `is_locked` asks without taking.

An flock belongs to the open file, which a forked child (a DataLoader worker) shares: the
lock would stay taken until the last orphaned worker exited, seconds after its trainer was
killed. filelock's at-fork handler closes a forked child's copies of the held locks'
descriptors, so the lock stays with the process that took it (test_locks kills a trainer
with two forked workers to check it). Children started by exec never get them: Python
opens descriptors non-inheritable.

filelock is imported by the first lock taken, not with torchexp: importing it registers
that at-fork handler (and, on Python 3.12 and later, an audit hook of its own), and
reading experiments needs neither.
"""

import os
import sys
import threading
from typing import Any

POLL_INTERVAL_S = 0.01  # between tries of a waiting acquire; filelock polls, where flock slept in the kernel


class FileLock:
    """An exclusive lock on a file, shared by the threads of one process.

    The holder's process id is written into the file, so that whoever is refused can be
    told who holds it (on Windows, whose lock keeps the file unreadable to others while it
    is held, the holder reads as unknown). Optuna's journal takes it as its `lock_obj` (acquire, release).

    Args:
        path: the lock file, created when missing.
    """

    def __init__(self, path: str):
        import filelock

        self.path = path
        # One thread of this process holds it at a time; any thread may release it (the
        # native lock is shared by the threads: thread_local=False).
        self.thread_lock = threading.Lock()
        # on_acquired also rules out filelock's soft fallback (a marker file, which a killed
        # holder leaves behind): where the file system cannot lock, taking the lock fails.
        self.native = filelock.FileLock(
            path, thread_local=False, poll_interval=POLL_INTERVAL_S, on_acquired=write_holder
        )

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock, waiting for it unless `blocking` is False; return whether it was taken."""
        import filelock

        if not self.thread_lock.acquire(blocking):
            return False
        try:
            self.native.acquire(blocking=blocking)
        except filelock.Timeout:
            self.thread_lock.release()
            return False
        except BaseException:
            self.thread_lock.release()
            raise
        return True

    def release(self) -> None:
        """Give the lock up; releasing a lock not held does nothing."""
        if not self.native.is_locked:
            return
        self.native.release()
        self.thread_lock.release()

    def holder(self) -> str:
        """The process id the holder wrote, or "unknown"."""
        try:
            with open(self.path, "rb") as file:
                return file.read(64).decode(errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def write_holder(fd: int) -> None:
    """Write this process's id into a lock file just taken (filelock's on_acquired)."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())


def is_locked(path: str) -> bool:
    """Whether a process (this one included, through another descriptor) holds the lock on `path`.

    Read-only: the file is opened for reading and never created. On Linux and macOS a
    shared flock is tried and released at once, which fails only while an exclusive one
    is held, so that two processes asking at once do not see each other as holders. (A
    process locking it in those microseconds would be refused, and can simply try again.)
    Windows has no shared lock that contends with filelock's, so its exclusive one is
    tried there. Where files cannot be locked at all, nobody holds one: False.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not try_probe(fd)
    finally:
        os.close(fd)


def try_probe(fd: int) -> bool:
    """Lock `fd` for an instant, if no other holds it; return whether that was possible."""
    if sys.platform == "win32":
        from filelock import lock_descriptor, unlock_descriptor

        if not lock_descriptor(fd, blocking=False):
            return False
        unlock_descriptor(fd)
        return True
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
