"""One kind of lock for every file torchexp guards: an exclusive `flock`.

The kernel releases an flock when its holder dies, so a lock left by a killed process is
taken over at once instead of being obeyed forever (or broken after a timeout, as lock
files are). Experiments (`.lock`), search claims (`.claims/trial-NNNN.lock`), a study's
scheduler and its Optuna journal all use `FileLock`; `is_locked` asks without taking.

An flock belongs to the open file, which a forked child (a DataLoader worker) shares: the
lock would stay taken until the last orphaned worker exited, seconds after its trainer was
killed. So a forked child closes its copies of the held locks' descriptors at once, and
the lock stays with the process that took it. (Children started by exec never get them:
Python opens descriptors non-inheritable.)
"""

import fcntl
import os
import threading
import weakref
from typing import Any

# Every FileLock of this process, for the fork handler below.
LOCKS: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


class FileLock:
    """An exclusive flock on a file, shared by the threads of one process.

    The holder's process id is written into the file, so that whoever is refused can be
    told who holds it. Optuna's journal takes it as its `lock_obj` (acquire, release).

    Args:
        path: the lock file, created when missing.
    """

    def __init__(self, path: str):
        self.path = path
        # flock locks belong to open files, not threads: two threads of this process would
        # each get it through their own descriptor, so they queue on this first.
        self.thread_lock = threading.Lock()
        self.fd: int | None = None
        LOCKS.add(self)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock, waiting for it unless `blocking` is False; return whether it was taken."""
        if not self.thread_lock.acquire(blocking):
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                self.thread_lock.release()
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            self.thread_lock.release()
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        """Give the lock up; releasing a lock not held does nothing."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        os.close(fd)
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

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor without unlocking, which only
        the parent's own descriptor (or its death) does, and hold nothing."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        self.thread_lock = threading.Lock()


def forget_locks_in_child() -> None:
    """Run in every child forked by this process (os.register_at_fork)."""
    for lock in list(LOCKS):
        lock.forget_in_child()


os.register_at_fork(after_in_child=forget_locks_in_child)


def is_locked(path: str) -> bool:
    """Whether a process (this one included, through another descriptor) holds an
    exclusive flock on `path`.

    Read-only: the file is opened for reading and never created, and a shared lock is
    tried and released at once, which fails only while an exclusive one is held. (A
    process locking it in those microseconds would be refused, and can simply try again.)
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
