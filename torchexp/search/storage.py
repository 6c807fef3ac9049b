"""Where a study's trials are recorded: Optuna's journal file in the study folder, or a
database that several machines share.

The journal is the default. It is made for several processes on one machine: every
change is one JSON line appended under a lock, so a reader never needs the writer, and a
process killed mid-write leaves a log that still reads. SQLite's own FAQ warns against
many concurrent writers, and a killed SQLite writer can leave its lock behind on network
file systems. Two things are changed from Optuna's `JournalFileBackend`: the lock is an
`flock`, which the kernel releases when its holder dies (Optuna's lock files outlive a
killed process, and the others wait 30 s before breaking them), and a line left half
written by a killed process is cut before the next append, so it cannot glue itself to
the next record and make the log unreadable.
"""

import importlib.util
import json
import os
import re
import time
from typing import Any

import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from torchexp.errors import StorageError, first_line
from torchexp.locks import FileLock

JOURNAL_FILE = "journal.log"
CONNECT_TIMEOUT_S = 10  # a database that does not answer in this long is reported unreachable
TAIL_BLOCK = 64 * 1024
CREATION_ATTEMPTS = 5  # tries to open a database whose tables another process is creating


class FlockJournalBackend(JournalFileBackend):
    """Optuna's journal file, appended under an flock, with a torn last line cut first.

    Args:
        path: the journal file; `<path>.lock` is the lock file.
    """

    def __init__(self, path: str):
        self.flock = FileLock(path + ".lock")
        # FileLock has the acquire and release Optuna calls; the base class its annotation
        # names, BaseJournalFileLock, is private to Optuna.
        super().__init__(path, lock_obj=self.flock)  # type: ignore[arg-type]
        self.path = path

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with self.flock:
            with open(self.path, "r+b") as file:
                cut_torn_line(file)
                file.seek(0, os.SEEK_END)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())


def cut_torn_line(file: Any) -> None:
    """Truncate a file after its last newline: a line without one was cut short by a kill."""
    size = os.fstat(file.fileno()).st_size
    end = size
    while end > 0:
        start = max(0, end - TAIL_BLOCK)
        file.seek(start)
        block = file.read(end - start)
        if end == size and block.endswith(b"\n"):
            return
        newline = block.rfind(b"\n")
        if newline >= 0:
            file.truncate(start + newline + 1)
            return
        end = start
    file.truncate(0)


def open_journal(folder: str) -> Any:
    """Return the Optuna storage of the journal file in a study folder (created when missing)."""
    return JournalStorage(FlockJournalBackend(os.path.join(folder, JOURNAL_FILE)))


def connect_database(url: str) -> Any:
    """Connect to an Optuna RDB storage (postgresql://, mysql://, sqlite:///), creating
    Optuna's tables in it when missing.

    Search processes started together on a new database all create Optuna's tables and
    version rows at once; all but one then collide with a duplicate-key or duplicate-table
    error. The tables exist by then, so such an error is retried a few times.

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database does not
            answer; the message shows the URL without its password.
    """
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    attempt = 1
    while True:
        try:
            return RDBStorage(choose_driver(url), engine_kwargs=options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            if attempt < CREATION_ATTEMPTS:
                time.sleep(0.1 * attempt)
                attempt += 1
                continue
            failure: Exception = error
        except Exception as error:  # SQLAlchemy and the drivers raise many unrelated types
            failure = error
        raise StorageError(f"storage {hide_password(url)} cannot be used: {first_line(failure)}") from failure


def choose_driver(url: str) -> str:
    """The URL with the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare
    postgresql:// as psycopg (version 3), older versions as psycopg2, which setup.py
    declares. An explicit driver (postgresql+psycopg://) is kept."""
    scheme, separator, rest = url.partition("://")
    if scheme != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return url
    return f"postgresql+psycopg2{separator}{rest}"


def hide_password(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def describe_storage(url: str | None) -> dict[str, str]:
    """What study.json records of the storage: the journal's file, or the URL without password."""
    if url is None:
        return {"kind": "journal", "file": JOURNAL_FILE}
    return {"kind": "database", "url": hide_password(url)}
