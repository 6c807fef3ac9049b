"""Sidecars: the JSON file beside each checkpoint and export that proves it whole.

`<file>.json` holds the file's SHA-256 and size, and whatever its writer adds (epoch, kind,
metrics, an export's check...). It is read without opening the file itself, so `info`,
`compare` and the Python API list checkpoints without importing torch, and every load
verifies the file against it first. Checkpoints and exports are written and verified here
alike:

- the old sidecar is removed first and the new one written last, each atomically, so that
  a kill at any moment leaves a file that either verifies or has no sidecar (refused);
- a file is trusted only when its size and SHA-256 are those its sidecar recorded.
"""

import hashlib
import os
from typing import IO, Callable

from torchexp.errors import CheckpointError, StorageError
from torchexp.files import hash_file, read_json, remove_quietly, write_atomic, write_json_atomic


def sidecar_path(path: str) -> str:
    """Return the path of the sidecar kept beside a file."""
    return path + ".json"


def read_sidecar(path: str) -> dict | None:
    """Return the sidecar of the file at `path`, or None when it is missing or unreadable."""
    try:
        sidecar = read_json(sidecar_path(path), "sidecar")
    except StorageError:
        return None
    return sidecar if isinstance(sidecar, dict) else None


def write_with_sidecar(path: str, write: Callable[[IO[bytes]], None], fields: dict) -> dict:
    """Write a file through `write(file)`, then its sidecar; return the sidecar.

    Args:
        path: the file's path.
        write: called with a binary file open on a temporary file beside `path`.
        fields: JSON data the sidecar keeps beside the SHA-256 and size.

    Raises:
        StorageError: the disk refused a write; a file without its sidecar is refused, never trusted.
    """
    remove_quietly(sidecar_path(path))
    digest = write_atomic(path, write)
    sidecar = {"sha256": digest, "bytes": os.path.getsize(path), **fields}
    write_json_atomic(sidecar_path(path), sidecar)
    return sidecar


def verify(what: str, path: str, sidecar: dict | None, content: bytes | None = None) -> None:
    """Check a file against its sidecar: the size and SHA-256 it recorded.

    Args:
        what: how messages name the file, e.g. "checkpoint 3.checkpoint.pt".
        path: the file.
        sidecar: its sidecar (`read_sidecar`).
        content: the file's bytes when the caller has read them already (the bytes checked
            are then the bytes it goes on to use).

    Raises:
        CheckpointError: no sidecar, or the size or SHA-256 differs; the message says which.
    """
    if sidecar is None or not isinstance(sidecar.get("sha256"), str):
        raise CheckpointError(f"{what} has no valid sidecar {os.path.basename(sidecar_path(path))}")
    if content is None:
        try:
            size = os.path.getsize(path)
        except OSError as error:
            raise CheckpointError(f"{what} cannot be read: {error.strerror}") from error
    else:
        size = len(content)
    if size != sidecar.get("bytes"):
        raise CheckpointError(f"{what} is {size} bytes, but {sidecar.get('bytes')} were written (truncated or replaced)")
    digest = hash_file(path) if content is None else hashlib.sha256(content).hexdigest()
    if digest != sidecar["sha256"]:
        raise CheckpointError(f"{what} does not match its SHA-256 (corrupted)")
