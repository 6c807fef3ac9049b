"""Checkpoint files: names, crash-safe saves, verification and trusted loads.

Each checkpoint `<epoch>.checkpoint[.<kind>].pt` holds only tensors and plain data, so it
loads with `torch.load(weights_only=True)`; under trainer.strategy fsdp, a standard or
interrupt checkpoint is a folder `<epoch>.checkpoint[.<kind>].dcp` of every rank's shards
(`torchexp.sharded`), listed, verified, loaded and removed alike. Beside it, its sidecar `<file>.json`
(`torchexp.sidecar`) holds its SHA-256, size, epoch and metrics: loads verify it, and
`info`, `compare` and the Python API read it without importing torch. `Checkpoint` is the
one type for a checkpoint found on disk, wherever it is listed.

Kinds:
    standard: full training state after `epoch` epochs.
    release: model weights plus the metadata needed to use them.
    interrupt: full training state part way through `epoch`, written on SIGINT/SIGTERM.
"""

import dataclasses
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

from torchexp import sidecar
from torchexp.errors import CheckpointError, first_line
from torchexp.files import remove_quietly

CHECKPOINT_FORMAT = 1  # the layout of the state inside a checkpoint; raise it when it changes
KINDS = ("standard", "release", "interrupt")
# No leading zeros: every name parse_filename accepts is the one make_filename writes.
FILENAME_PATTERN = re.compile(r"(?P<epoch>0|[1-9]\d*)\.checkpoint(?:\.(?P<kind>release|interrupt))?\.(?:pt|dcp)")
SHARDED_SUFFIX = ".dcp"

# What files.write_atomic names its temporary file: .<target>.<random>.tmp
TEMPORARY_PATTERN = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]+\.tmp")
REMOVING_SUFFIX = ".removing"  # Checkpoint.remove renames the file .<name>.removing before it goes


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint file on disk and its sidecar (None when it has none).

    `verify()` hashes the file against its sidecar; a checkpoint that verified once is not
    hashed again by `load()` or `verified`.
    """

    epoch: int
    kind: str
    path: str
    sidecar: dict | None
    hashed: bool = dataclasses.field(default=False, repr=False, compare=False)  # verified once already

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def metrics(self) -> dict:
        """{"train": {...}, "validation": {...}} of the epoch, as the sidecar holds them."""
        return (self.sidecar or {}).get("metrics") or {}

    @property
    def record(self) -> dict | None:
        """Deprecated name of `sidecar`, until torchexp 0.3."""
        warnings.warn("Checkpoint.record is deprecated: use Checkpoint.sidecar", DeprecationWarning, stacklevel=2)
        return self.sidecar

    @property
    def sharded(self) -> bool:
        """Whether it is a folder of DCP shards rather than one file."""
        return self.path.endswith(SHARDED_SUFFIX)

    @property
    def unit(self) -> str:
        """What the number in its name counts: "epoch", or "step" for an experiment trained by steps."""
        return str((self.sidecar or {}).get("unit", "epoch"))

    @property
    def progress(self) -> tuple[int, int, int]:
        """(completed epochs, iterations into the next one, 1 for a standard checkpoint):
        orders resume points, a standard checkpoint after a mid-epoch one of the same place."""
        standard = int(self.kind == "standard")
        counters = (self.sidecar or {}).get("counters")
        if isinstance(counters, dict):
            return int(counters.get("epoch", 0)), int(counters.get("iteration", 0)), standard
        if self.kind == "interrupt":  # saved before sidecars held the counters
            return self.epoch - 1, int((self.sidecar or {}).get("iteration", 0)), standard
        return self.epoch, 0, standard

    def verify(self, part: tuple[int, int] | None = None) -> None:
        """Check the file against its sidecar.

        Args:
            part: (rank, ranks): of a sharded checkpoint, check only this rank's share of
                its files, the other ranks checking theirs (`owns_file`); None: all of them.

        Raises:
            CheckpointError: no sidecar, or the size or SHA-256 differs; the message says which.
        """
        if self.sharded:
            names = (lambda name: owns_file(name, *part)) if part is not None else (lambda name: True)
            sidecar.verify_folder(f"checkpoint {self.name}", self.path, self.sidecar, names)
        else:
            sidecar.verify(f"checkpoint {self.name}", self.path, self.sidecar)
        self.hashed = part is None or not self.sharded

    def check(self, part: tuple[int, int] | None = None) -> str | None:
        """Return why the checkpoint (or this rank's `part` of it) does not verify, or None
        when it does."""
        try:
            self.verify(part)
        except CheckpointError as error:
            return str(error)
        return None

    @property
    def verified(self) -> bool:
        """Whether the file matches its sidecar's size and SHA-256."""
        return self.hashed or self.check() is None

    def load(self, weights_only: bool = False) -> dict[str, Any]:
        """Verify the checkpoint (unless it verified already), then load it with
        `weights_only=True` onto the CPU; a sharded one whole, gathered from every rank's
        shards.

        Args:
            weights_only: of a sharded checkpoint's shards, gather the model's alone
                (releases, test), leaving the optimizer's on disk.

        Raises:
            CheckpointError: it fails verification or holds anything but tensors and plain data.
        """
        import pickle

        import torch

        if not self.hashed:
            self.verify()
        if self.sharded:
            from torchexp.sharded import load_full

            return load_full(self.path, self.name, ("model",) if weights_only else None)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
            raise CheckpointError(f"checkpoint {self.name} cannot be loaded safely: {first_line(error)}") from error
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {self.name} does not hold a state dictionary")
        return state

    def remove(self) -> None:
        """Delete the checkpoint, crash-safe: the file is renamed out of the listing first,
        then its sidecar and the renamed file go. A kill at any moment leaves the checkpoint
        whole or not listed at all; what is left of it `remove_temporaries` sweeps."""
        doomed = os.path.join(os.path.dirname(self.path), f".{self.name}{REMOVING_SUFFIX}")
        try:
            os.replace(self.path, doomed)
        except FileNotFoundError:
            pass
        remove_quietly(sidecar.sidecar_path(self.path))
        remove_path(doomed)


def owns_file(name: str, rank: int, ranks: int) -> bool:
    """Whether rank `rank` of `ranks` checks a sharded checkpoint's file `name`: the shards
    `__<k>_*` of the ranks k it stands for, at the same number of ranks its own, and rank
    0 the rest (DCP's index, the plain state)."""
    match = re.fullmatch(r"__(\d+)_\d+\.distcp", name)
    return (int(match[1]) if match else 0) % ranks == rank


def remove_path(path: str) -> None:
    """Remove a file or a folder, if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)


def make_filename(epoch: int, kind: str, sharded: bool = False) -> str:
    """Return the file name of a checkpoint (a folder's when `sharded`), the one place that
    format is written."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
    suffix = "" if kind == "standard" else f".{kind}"
    return f"{epoch}.checkpoint{suffix}{SHARDED_SUFFIX if sharded else '.pt'}"


def find_sidecar(folder: str, epoch: int, kind: str) -> dict | None:
    """The sidecar of the checkpoint of `epoch` and `kind` in `folder`, a file or a folder of
    shards, or None when there is none."""
    paths = (os.path.join(folder, make_filename(epoch, kind, sharded)) for sharded in (False, True))
    return next(filter(None, map(sidecar.read_sidecar, paths)), None)


def parse_filename(name: str) -> tuple[int, str] | None:
    """Return (epoch, kind) of a checkpoint file name, or None for other files."""
    match = FILENAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match["epoch"]), match["kind"] or "standard"


def list_checkpoints(folder: str, kinds: tuple[str, ...] = KINDS) -> list[Checkpoint]:
    """List the checkpoints in `folder` of the given kinds, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        parsed = parse_filename(name)
        if parsed is None or parsed[1] not in kinds:
            continue
        path = os.path.join(folder, name)
        found.append(Checkpoint(parsed[0], parsed[1], path, sidecar.read_sidecar(path)))
    return sorted(found, key=lambda info: (info.epoch, KINDS.index(info.kind)))


def describe_epochs(infos: list[Checkpoint]) -> str:
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
    """Write a checkpoint and its sidecar atomically; return the checkpoint's path.

    Args:
        folder: the experiment's checkpoints folder.
        epoch: the epoch the checkpoint belongs to.
        kind: one of KINDS.
        state: tensors and plain data only.
        summary: JSON data kept in the sidecar (metrics, iteration...).

    Raises:
        StorageError: the disk refused the write; the previous files are intact.
    """
    import torch

    path = os.path.join(folder, make_filename(epoch, kind))
    fields = {"epoch": epoch, "kind": kind, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary}
    sidecar.write_with_sidecar(path, lambda file: torch.save(state, file), fields)
    return path


def find_checkpoint(folder: str, epoch: int, kinds: tuple[str, ...]) -> Checkpoint:
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
        f"{unit_in(folder)} {epoch} has no {what} checkpoint in {folder} (available: {describe_epochs(available)})"
    )


def unit_in(folder: str) -> str:
    """What the checkpoints of `folder` count, as their sidecars say: "epoch" or "step"."""
    return next((found.unit for found in list_checkpoints(folder) if found.sidecar is not None), "epoch")


def find_training_checkpoint(folder: str, epoch: int) -> Checkpoint:
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
                f"{unit_in(folder)} {epoch} has only a release checkpoint, which holds weights but no training state "
                f"(standard checkpoints: {describe_epochs(list_checkpoints(folder, ('standard',)))})"
            ) from None
        raise


def remove_temporaries(folder: str, kinds: tuple[str, ...] = ("standard", "interrupt")) -> list[str]:
    """Remove what killed saves and removals of these kinds left in `folder`: temporary
    files, renamed files of removed checkpoints, and sidecars whose checkpoint is gone.

    Only for a process that holds the experiment's lock: a save in progress has the
    same kind of temporary file. Release checkpoints are written without the lock, so
    theirs are left alone by default.

    Returns:
        The names removed.
    """
    names = os.listdir(folder) if os.path.isdir(folder) else []
    removed = []
    for name in names:
        match = TEMPORARY_PATTERN.fullmatch(name)
        if match is not None:
            target = match["target"]
        elif name.startswith(".") and name.endswith(REMOVING_SUFFIX):
            target = name[1 : -len(REMOVING_SUFFIX)]
        elif name.endswith(".json") and name.removesuffix(".json") not in names:
            target = name  # a sidecar whose checkpoint a killed removal took
        else:
            continue
        parsed = parse_filename(target.removesuffix(".json"))
        if parsed is not None and parsed[1] in kinds:
            remove_path(os.path.join(folder, name))
            removed.append(name)
    return sorted(removed)


def find_resume_checkpoint(
    folder: str, mid_epoch: bool = True, part: tuple[int, int] | None = None, agree: Callable[[bool], bool] = bool
) -> tuple[Checkpoint | None, list[tuple[Checkpoint, str]]]:
    """Return the furthest standard or interrupt checkpoint that verifies.

    Args:
        folder: the experiment's checkpoints folder.
        mid_epoch: whether the train loader can resume in the middle of an epoch; if not,
            only checkpoints at an epoch's end are candidates.
        part: (rank, ranks): every rank checks its share of a sharded checkpoint's files.
        agree: given whether this rank's share verified, whether every rank's did.

    Returns:
        The checkpoint (None when there is none to resume from) and the newer ones
        skipped, each with the reason.
    """
    candidates = sorted(list_checkpoints(folder, ("standard", "interrupt")), key=lambda info: info.progress)
    skipped = []
    for checkpoint in reversed(candidates):
        if not mid_epoch and checkpoint.progress[1] > 0:
            skipped.append(
                (
                    checkpoint,
                    f"checkpoint {checkpoint.name}: it is in the middle of an epoch, "
                    "where the train loader cannot resume",
                )
            )
            continue
        problem = checkpoint.check(part)
        if agree(problem is None):
            checkpoint.hashed = True
            return checkpoint, skipped
        skipped.append(
            (checkpoint, problem or f"checkpoint {checkpoint.name}: another rank found one of its files corrupt")
        )
    return None, skipped
