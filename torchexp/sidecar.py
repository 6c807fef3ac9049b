"""Sidecars: the JSON file beside each checkpoint and export that proves it whole.

`<file>.json` holds the file's SHA-256 and size, and whatever its writer adds (epoch, kind,
metrics, an export's check...). It is read without opening the file itself, so `info`,
`compare` and the Python API list checkpoints without importing torch, and every load
verifies the file against it first. Checkpoints and exports are written and verified here
alike:

- the new file and its sidecar are both written whole, beside, before either is renamed
  into place, sidecar then file: an earlier pair of the same names stays whole and
  verifies until those two renames, and a kill between them leaves a pair that does not
  verify (refused), never a file trusted wrongly;
- a file is trusted only when its size and SHA-256 are those its sidecar recorded.

A folder (a sharded checkpoint) is written and verified the same way, its sidecar holding
the SHA-256 and size of every file in it (`write_folder_sidecar`, `verify_folder`).
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import IO

from torchexp.errors import CheckpointError, StorageError
from torchexp.files import hash_file, publish, read_json, remove_quietly, replace_non_finite, write_temporary


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


def write_with_sidecar(path: str, write: Callable[[IO[bytes]], object], fields: dict) -> dict:
    """Write a file through `write(file)`, then its sidecar; return the sidecar.

    Args:
        path: the file's path.
        write: called with a binary file open on a temporary file beside `path`.
        fields: JSON data the sidecar keeps beside the SHA-256 and size.

    Raises:
        StorageError: the disk refused a write; the earlier pair, if any, is left as it was.
    """
    temporary, digest = write_temporary(path, write)
    try:
        sidecar = {"sha256": digest, "bytes": os.path.getsize(temporary), **fields}
        text = json.dumps(replace_non_finite(sidecar), indent=2, allow_nan=False) + "\n"
        sidecar_temporary, _ = write_temporary(sidecar_path(path), lambda file: file.write(text.encode("utf-8")))
    except BaseException:
        remove_quietly(temporary)
        raise
    publish([(sidecar_temporary, sidecar_path(path)), (temporary, path)])
    return sidecar


def write_folder_sidecar(path: str, temporary: str, files: dict[str, dict], fields: dict) -> dict:
    """Publish a folder written whole at `temporary` (its files fsynced) as `path`, with its
    sidecar; return the sidecar.

    An earlier folder of the same name is renamed aside first, then the sidecar and the
    folder are renamed into place: a kill between those renames leaves no folder under the
    name (its sidecar alone, which `checkpoints.remove_temporaries` sweeps), never a folder
    with another's sidecar.

    Args:
        files: {name: {"sha256", "bytes"}} of every file in the folder.
        fields: JSON data the sidecar keeps beside them.

    Raises:
        StorageError: the disk refused a write or a rename.
    """
    sidecar = {"files": files, "bytes": sum(int(entry["bytes"]) for entry in files.values()), **fields}
    text = json.dumps(replace_non_finite(sidecar), indent=2, allow_nan=False) + "\n"
    sidecar_temporary, _ = write_temporary(sidecar_path(path), lambda file: file.write(text.encode("utf-8")))
    aside = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.removing")
    try:
        if os.path.isdir(path):
            os.replace(path, aside)
    except OSError as error:
        remove_quietly(sidecar_temporary)
        raise StorageError(f"could not write {path}: {error.strerror or error}") from error
    publish([(sidecar_temporary, sidecar_path(path)), (temporary, path)])
    shutil.rmtree(aside, ignore_errors=True)  # a kill before this leaves it to remove_temporaries
    return sidecar


def hash_files(folder: str, names: list[str]) -> dict[str, dict]:
    """{name: {"sha256", "bytes"}} of the files `names` in `folder`."""
    return {
        name: {"sha256": hash_file(os.path.join(folder, name)), "bytes": os.path.getsize(os.path.join(folder, name))}
        for name in names
    }


def verify_folder(what: str, path: str, sidecar: dict | None, names: Callable[[str], bool] = lambda name: True) -> None:
    """Check every file of a folder (or those `names` picks) against its sidecar: each file
    it recorded is there, of its size and SHA-256.

    Raises:
        CheckpointError: no sidecar, or a file is missing or differs; the message says which.
    """
    files = (sidecar or {}).get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{what} has no valid sidecar {os.path.basename(sidecar_path(path))}")
    for name, entry in sorted(files.items()):
        if names(name):
            verify(f"{what}, file {name},", os.path.join(path, name), entry)


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
        raise CheckpointError(
            f"{what} is {size} bytes, but {sidecar.get('bytes')} were written (truncated or replaced)"
        )
    digest = hash_file(path) if content is None else hashlib.sha256(content).hexdigest()
    if digest != sidecar["sha256"]:
        raise CheckpointError(f"{what} does not match its SHA-256 (corrupted)")
