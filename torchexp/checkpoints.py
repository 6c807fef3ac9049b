"""Checkpoint files: names, crash-safe saves, verification and trusted loads.

Each checkpoint `<epoch>.checkpoint[.<kind>].pt` holds only tensors and plain data, so it
loads with `torch.load(weights_only=True)`. Beside it, `<file>.json` records its SHA-256,
size, epoch and key metrics: loads verify it, and `info` reads it without importing torch.

Kinds:
    standard: full training state after `epoch` epochs.
    release: model weights plus the metadata needed to use them.
    interrupt: full training state part way through `epoch`, written on SIGINT/SIGTERM.
"""

import dataclasses
import os
import re
import time
from typing import Any

from torchexp.errors import CheckpointError, StorageError, first_line
from torchexp.files import hash_file, read_json, remove_quietly, write_atomic, write_json_atomic

CHECKPOINT_FORMAT = 1  # the layout of the state inside a checkpoint; raise it when it changes
KINDS = ("standard", "release", "interrupt")
# No leading zeros: every name parse_filename accepts is the one make_filename writes.
FILENAME_PATTERN = re.compile(r"(?P<epoch>0|[1-9]\d*)\.checkpoint(?:\.(?P<kind>release|interrupt))?\.pt")

# What storage.write_atomic names its temporary file: .<target>.<random>.tmp
TEMPORARY_PATTERN = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]+\.tmp")


@dataclasses.dataclass
class CheckpointInfo:
    """A checkpoint file found on disk, with its JSON record when there is one."""

    epoch: int
    kind: str
    path: str
    record: dict | None
    verified: bool = False  # set by verify_checkpoint, so a load does not hash the file twice

    @property
    def progress(self) -> tuple[int, int]:
        """(completed epochs, iterations into the next one): orders resume points."""
        if self.kind == "interrupt":
            return self.epoch - 1, int((self.record or {}).get("iteration", 0))
        return self.epoch, 0


def make_filename(epoch: int, kind: str) -> str:
    """Return the file name of a checkpoint, the one place that format is written."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
    suffix = "" if kind == "standard" else f".{kind}"
    return f"{epoch}.checkpoint{suffix}.pt"


def parse_filename(name: str) -> tuple[int, str] | None:
    """Return (epoch, kind) of a checkpoint file name, or None for other files."""
    match = FILENAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match["epoch"]), match["kind"] or "standard"


def record_path(path: str) -> str:
    """Return the path of the JSON record kept beside a checkpoint file."""
    return path + ".json"


def list_checkpoints(folder: str, kinds: tuple[str, ...] = KINDS) -> list[CheckpointInfo]:
    """List the checkpoints in `folder` of the given kinds, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        parsed = parse_filename(name)
        if parsed is None or parsed[1] not in kinds:
            continue
        path = os.path.join(folder, name)
        found.append(CheckpointInfo(parsed[0], parsed[1], path, read_record(path)))
    return sorted(found, key=lambda info: (info.epoch, KINDS.index(info.kind)))


def read_record(path: str) -> dict | None:
    """Return a checkpoint's JSON record, or None when it is missing or unreadable."""
    try:
        record = read_json(record_path(path), "checkpoint record")
    except StorageError:
        return None
    return record if isinstance(record, dict) else None


def describe_epochs(infos: list[CheckpointInfo]) -> str:
    """Describe the epochs of some checkpoints compactly, e.g. `1-4, 7`, or `none`."""
    epochs = sorted({info.epoch for info in infos})
    if not epochs:
        return "none"
    runs: list[list[int]] = []
    for epoch in epochs:
        if runs and epoch == runs[-1][-1] + 1:
            runs[-1].append(epoch)
        else:
            runs.append([epoch])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def save_checkpoint(folder: str, epoch: int, kind: str, state: dict, summary: dict) -> str:
    """Write a checkpoint and its record atomically; return the checkpoint's path.

    The old record is removed first and the new one written last, so a kill at any
    point leaves a file that either verifies or is reported as unrecorded.

    Args:
        folder: the experiment's checkpoints folder.
        epoch: the epoch the checkpoint belongs to.
        kind: one of KINDS.
        state: tensors and plain data only.
        summary: JSON data kept in the record (metrics, iteration...).

    Raises:
        StorageError: the disk refused the write; the previous files are intact.
    """
    import torch

    path = os.path.join(folder, make_filename(epoch, kind))
    remove_quietly(record_path(path))
    digest = write_atomic(path, lambda file: torch.save(state, file))
    record = {
        "epoch": epoch,
        "kind": kind,
        "sha256": digest,
        "bytes": os.path.getsize(path),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **summary,
    }
    write_json_atomic(record_path(path), record)
    return path


def verify_checkpoint(info: CheckpointInfo) -> None:
    """Check a checkpoint against its record.

    Raises:
        CheckpointError: no record, or the size or SHA-256 differs; the message says which.
    """
    name = os.path.basename(info.path)
    if info.record is None or not isinstance(info.record.get("sha256"), str):
        raise CheckpointError(f"checkpoint {name} has no valid record {os.path.basename(record_path(info.path))}")
    try:
        size = os.path.getsize(info.path)
    except OSError as error:
        raise CheckpointError(f"checkpoint {name} cannot be read: {error.strerror}") from error
    if size != info.record.get("bytes"):
        raise CheckpointError(f"checkpoint {name} is {size} bytes, but {info.record.get('bytes')} were written (truncated or replaced)")
    if hash_file(info.path) != info.record["sha256"]:
        raise CheckpointError(f"checkpoint {name} does not match its SHA-256 (corrupted)")
    info.verified = True


def load_checkpoint(info: CheckpointInfo) -> dict[str, Any]:
    """Verify a checkpoint (unless already verified), then load it with `weights_only=True` onto the CPU.

    Raises:
        CheckpointError: it fails verification or holds anything but tensors and plain data.
    """
    import pickle

    import torch

    if not info.verified:
        verify_checkpoint(info)
    try:
        state = torch.load(info.path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint {os.path.basename(info.path)} cannot be loaded safely: {first_line(error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {os.path.basename(info.path)} does not hold a state dictionary")
    return state


def find_checkpoint(folder: str, epoch: int, kinds: tuple[str, ...]) -> CheckpointInfo:
    """Return the checkpoint of `epoch`, preferring kinds in the given order.

    Raises:
        CheckpointError: there is none; the message lists the epochs that exist.
    """
    if epoch < 1:
        raise CheckpointError(f"epoch {epoch} is not valid: epochs count from 1")
    available = list_checkpoints(folder, kinds)
    for kind in kinds:
        for info in available:
            if info.epoch == epoch and info.kind == kind:
                return info
    what = " or ".join(kinds)
    raise CheckpointError(
        f"epoch {epoch} has no {what} checkpoint in {folder} (available: {describe_epochs(available)})"
    )


def find_training_checkpoint(folder: str, epoch: int) -> CheckpointInfo:
    """Return the standard checkpoint of `epoch`, the only kind training and releases start from.

    Raises:
        CheckpointError: there is none; the message lists the epochs that have one, and
            says so when `epoch` has only a release checkpoint.
    """
    try:
        return find_checkpoint(folder, epoch, ("standard",))
    except CheckpointError:
        if any(info.epoch == epoch for info in list_checkpoints(folder, ("release",))):
            raise CheckpointError(
                f"epoch {epoch} has only a release checkpoint, which holds weights but no training state "
                f"(standard checkpoints: {describe_epochs(list_checkpoints(folder, ('standard',)))})"
            ) from None
        raise


def remove_temporaries(folder: str, kinds: tuple[str, ...] = ("standard", "interrupt")) -> list[str]:
    """Remove the temporary files that killed saves of these kinds left in `folder`.

    Only for a process that holds the experiment's lock: a save in progress has the
    same kind of temporary file. Release checkpoints are written without the lock, so
    theirs are left alone by default.

    Returns:
        The names removed.
    """
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = TEMPORARY_PATTERN.fullmatch(name)
        parsed = parse_filename(match["target"].removesuffix(".json")) if match else None
        if parsed is not None and parsed[1] in kinds:
            remove_quietly(os.path.join(folder, name))
            removed.append(name)
    return sorted(removed)


def find_resume_checkpoint(folder: str) -> tuple[CheckpointInfo | None, list[tuple[CheckpointInfo, str]]]:
    """Return the furthest standard or interrupt checkpoint that verifies.

    Returns:
        The checkpoint (None when there is none to resume from) and the newer ones
        skipped, each with the reason.
    """
    candidates = sorted(list_checkpoints(folder, ("standard", "interrupt")), key=lambda info: info.progress)
    skipped = []
    for info in reversed(candidates):
        try:
            verify_checkpoint(info)
        except CheckpointError as error:
            skipped.append((info, str(error)))
            continue
        return info, skipped
    return None, skipped
