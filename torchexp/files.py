"""Crash-safe file writes and checked JSON reads.

Every file torchexp writes goes through `write_atomic`: a temporary file in the same
folder, flushed and fsynced, renamed into place, then the folder fsynced. A kill at any
moment leaves either the old file or the new one, never half of one.
"""

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

from torchexp.errors import StorageError, TorchexpError

MAX_JSON_BYTES = 64 * 1024 * 1024  # refuse larger JSON files rather than exhaust memory


def write_atomic(path: str, write: Callable[[IO[bytes]], object]) -> str:
    """Write a file through `write(file)` so that it appears whole or not at all.

    Args:
        path: destination path.
        write: called with a binary file object open on the temporary file; what it returns is ignored.

    Returns:
        The SHA-256 hex digest of the file's bytes, hashed as they were written.

    Raises:
        StorageError: when the write fails (disk full, permissions); the temporary file
            is removed and any previous file at `path` is left as it was.
    """
    temporary, digest = write_temporary(path, write)
    publish([(temporary, path)])
    return digest


def write_temporary(path: str, write: Callable[[IO[bytes]], object]) -> tuple[str, str]:
    """Write a file through `write(file)` to a temporary file beside `path`, flushed and
    fsynced; return its path and the SHA-256 of its bytes. `publish` renames it into place.

    Raises:
        StorageError: when the write fails; the temporary file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as error:
        raise StorageError(f"could not write {path}: {error.strerror or error}") from error
    try:
        # fdopen first, so that the descriptor is closed whatever fails next.
        with os.fdopen(fd, "wb") as file:
            # mkstemp makes the file 0600; give it the permissions open() would have.
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
            guarded = WriteGuard(file)
            try:
                # WriteGuard passes every attribute it does not define through to the file.
                write(cast(IO[bytes], guarded))
            except Exception:
                # torch.save's C++ writer turns a failed write (disk full) into an
                # unrelated RuntimeError; report the write's own error instead.
                if guarded.error is not None:
                    raise guarded.error from None
                raise
            file.flush()
            os.fsync(file.fileno())
        return tmp_path, guarded.hexdigest() or hash_file(tmp_path)
    except OSError as error:
        remove_quietly(tmp_path)
        raise StorageError(f"could not write {path}: {error.strerror or error}") from error
    except BaseException:
        remove_quietly(tmp_path)
        raise


def publish(renames: list[tuple[str, str]]) -> None:
    """Rename written temporary files into place, in order, then sync their folder.

    Raises:
        StorageError: a rename or the sync failed; temporary files not yet renamed are removed.
    """
    for index, (temporary, path) in enumerate(renames):
        try:
            os.replace(temporary, path)
        except OSError as error:
            for left, _ in renames[index:]:
                remove_quietly(left)
            raise StorageError(f"could not write {path}: {error.strerror or error}") from error
    for folder in {os.path.dirname(os.path.abspath(path)) for _, path in renames}:
        try:
            fsync_folder(folder)
        except OSError as error:
            raise StorageError(
                f"could not write {renames[-1][1]}: {error.strerror or error} (while syncing its folder)"
            ) from error


class WriteGuard:
    """A binary file that remembers the OSError its `write` raised and hashes what is
    written, passing all else through. A seek makes the running hash unusable."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.error: OSError | None = None
        self.digest: Any = hashlib.sha256()

    def write(self, data: Any) -> int:
        try:
            written = self.file.write(data)
        except OSError as error:
            self.error = error
            raise
        if self.digest is not None:
            self.digest.update(memoryview(data)[:written])
        return written

    def seek(self, *args: Any) -> int:
        self.digest = None
        return self.file.seek(*args)

    def hexdigest(self) -> str | None:
        """The SHA-256 of the bytes written, or None after a seek."""
        return self.digest.hexdigest() if self.digest is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as indented JSON with `write_atomic`; NaN and infinities become null."""
    text = json.dumps(replace_non_finite(obj), indent=2, allow_nan=False) + "\n"
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def replace_non_finite(obj: Any) -> Any:
    """Return `obj` with NaN and infinite floats replaced by None, which JSON can hold
    (a diverged loss must not make a record or a result unreadable)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: replace_non_finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [replace_non_finite(value) for value in obj]
    return obj


def read_json(path: str, what: str, error: type[TorchexpError] = StorageError, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file, naming `what` it is in every error.

    Args:
        path: the file.
        what: how to call the file in messages, e.g. "config file".
        error: the exception type to raise.
        max_bytes: larger files are refused unread.

    Raises:
        error: the file is missing, too large, unreadable or not valid JSON.
    """
    if not os.path.isfile(path):
        kind = "a folder, not a file" if os.path.isdir(path) else "missing"
        raise error(f"{what} {path} is {kind}")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:  # removed since the check above, as a replaced checkpoint's sidecar may be
        raise error(f"{what} {path} is missing") from None
    if size > max_bytes:
        raise error(f"{what} {path} is {size} bytes, more than the {max_bytes} allowed")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (ValueError, UnicodeDecodeError) as reason:
        raise error(f"{what} {path} is not valid JSON: {reason}") from reason
    except RecursionError as reason:
        raise error(f"{what} {path} is nested too deeply to read") from reason
    except OSError as reason:
        raise error(f"{what} {path} cannot be read: {reason.strerror}") from reason


def current_umask() -> int:
    """Return the process umask, so that files get the permissions `open` would give.

    Linux reports it in /proc; elsewhere it is read by setting it and back, which a
    thread creating a file at that instant could observe, hence /proc first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def hash_file(path: str) -> str:
    """Return the SHA-256 hex digest of a file's bytes.

    Read into one buffer, block after block: a new block each time would be a fresh
    mapping, faulted in page by page, where glibc returns freed memory (under fsdp).
    """
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while read := file.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def fsync_folder(folder: str) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some network and FUSE file systems cannot sync a folder; the rename stands.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    """Remove a file if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def read_json_lines(path: str, skip_prefix: str | None = None) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file (metrics.jsonl, provenance.jsonl...), oldest
    first; a torn line (a kill mid-write) and lines starting with `skip_prefix` (left
    unparsed, for speed) are skipped, and a missing file has none."""
    try:
        file = open(path, encoding="utf-8")
    except OSError:
        return
    with file:
        for line in file:
            if skip_prefix is not None and line.startswith(skip_prefix):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
