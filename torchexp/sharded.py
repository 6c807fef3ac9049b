"""Sharded checkpoints: a folder that torch.distributed.checkpoint (DCP) writes, every rank
its own shards, for trainer.strategy fsdp.

A sharded checkpoint `<n>.checkpoint[.<kind>].dcp/` holds:

    state.pt        rank 0's plain state: counters, random generators, history... (as in a .pt checkpoint)
    .metadata       DCP's index of every tensor's shards
    __<rank>_0.distcp   each rank's shards of the model and optimizer states

Its sidecar `<n>.checkpoint.dcp.json` records the SHA-256 and size of every file, each rank
hashing its own. Nothing in it is read back as a pickled object: DCP pickles `.metadata`,
which is read here by an unpickler that builds only DCP's own metadata classes, and the
plain values DCP keeps beside tensors (the optimizer's hyperparameters) are loaded with
`weights_only=True`.

Loading reshards: DCP reads each tensor's slices into whatever layout the loading model has,
so a checkpoint of 2 ranks resumes on 1 and the other way round, and `load_full` gathers a
whole state dict in one process (releases, verify, compare).
"""

import contextlib
import glob
import io
import itertools
import os
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.storage import StorageMeta

from torchexp.errors import CheckpointError, StorageError, first_line

PLAIN_STATE = "state.pt"  # rank 0's plain state, beside DCP's files
METADATA = ".metadata"  # DCP's index, written by rank 0 (the coordinator)


def shard_files(folder: str, rank: int) -> list[str]:
    """The names, in `folder`, of the files rank `rank` writes: its shards, and for rank 0
    DCP's index and the plain state too."""
    own = [os.path.basename(path) for path in glob.glob(os.path.join(glob.escape(folder), f"__{rank}_*.distcp"))]
    if rank == 0:
        own += [name for name in (METADATA, PLAIN_STATE) if os.path.exists(os.path.join(folder, name))]
    return sorted(own)


def split_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's part of the model and optimizer states, keyed by parameter name (the same
    names whatever wraps the model), for DCP to save or to load into."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_shards(folder: str, tensors: dict[str, Any], group: Any = None) -> None:
    """Write this rank's shards of `tensors` (`split_state`) into `folder`, every rank together;
    each file is fsynced by its writer.

    Raises:
        StorageError: the write failed, on this rank or another.
    """
    try:
        with alone_quietly():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(folder, sync_files=True), process_group=group)
    except CheckpointException as error:  # a BaseException, which carries every rank's failure
        raise StorageError(f"could not write {folder}: {describe_failure(error)}") from error


def finish_saving_shards(response: Any, folder: str) -> None:
    """Wait until a background save's shards are written (`start_saving_shards`).

    Raises:
        StorageError: the write failed, on this rank or another.
    """
    try:
        response.upload_completion.result()
    except CheckpointException as error:
        raise StorageError(f"could not write {folder}: {describe_failure(error)}") from error


def make_stager(device: torch.device) -> Any:
    """DCP's stager that copies a rank's shards into CPU memory in a thread of its own (into
    pinned memory, without blocking, from a GPU), reusing its buffers from save to save."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    gpu = device.type == "cuda"
    return DefaultStager(
        StagingOptions(
            use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=gpu
        )
    )


def start_saving_shards(folder: str, tensors: dict[str, Any], group: Any, stager: Any) -> Any:
    """Start copying this rank's shards to CPU memory and writing them, both in the
    background (DCP's `async_save` through `stager`, its collectives on `group`); return
    DCP's response: `staging_completion` once copied, `upload_completion` once written."""
    return dcp.async_save(
        tensors, storage_writer=dcp.FileSystemWriter(folder, sync_files=True), process_group=group, async_stager=stager
    )


def load_shards(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
    """Load a sharded checkpoint's model and optimizer states into this rank's (sharded or
    whole) model and optimizer, resharding as their layout needs.

    Raises:
        CheckpointError: the checkpoint does not fit this model and optimizer.
    """
    tensors = split_state(model, optimizer)
    try:
        with alone_quietly():
            dcp.load(tensors, storage_reader=SafeReader(folder), planner=SafeLoadPlanner())
        set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"])
    except (
        CheckpointException,
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
        AssertionError,
        pickle.UnpicklingError,
    ) as error:
        raise CheckpointError(f"checkpoint {name} does not fit this runner: {describe_failure(error)}") from error


def load_plain(folder: str, name: str) -> dict[str, Any]:
    """Rank 0's plain state of a sharded checkpoint.

    Raises:
        CheckpointError: it does not load with `weights_only=True`.
    """
    try:
        state = torch.load(os.path.join(folder, PLAIN_STATE), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint {name} cannot be loaded safely: {first_line(error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name} does not hold a state dictionary")
    return state


def load_full(folder: str, name: str, parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The whole state of a sharded checkpoint in this process: its plain state, with
    "model" and "optimizer" (or only the `parts` named) gathered from every rank's shards
    onto the CPU.

    Raises:
        CheckpointError: it does not load safely.
    """

    state = load_plain(folder, name)
    try:
        reader = SafeReader(folder)
        tensors = empty_state(reader.read_metadata(), parts)
        with alone_quietly():
            dcp.load(tensors, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=True)
    except (CheckpointException, RuntimeError, ValueError, KeyError, AssertionError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"checkpoint {name} cannot be loaded safely: {describe_failure(error)}") from error
    return {**state, **tensors}


def describe_failure(error: BaseException) -> str:
    """The first line of what failed, under DCP's CheckpointException (a BaseException
    holding each rank's failure) the first rank's own."""
    if isinstance(error, CheckpointException):
        failures = list(error.failures.values())  # (exception, traceback) by rank
        if failures:
            error = failures[0][0]
    return first_line(error)


@contextlib.contextmanager
def alone_quietly() -> Iterator[None]:
    """Without torchrun, DCP warns on every save and load that it works in one process,
    which is what one process means to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


# What DCP's .metadata may build, by module: its own classes, and torch's sizes and dtypes.
METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": None,  # any class it defines, not what it imports
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"LoadItemType", "WriteItemType"},
    "torch": {
        "Size",
        *(str(dtype).removeprefix("torch.") for dtype in vars(torch).values() if isinstance(dtype, torch.dtype)),
    },
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's .metadata, refusing every class but those it is made of."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = METADATA_CLASSES.get(module, set())
        if allowed is None:
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:
                return found
        elif name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"DCP metadata may not build {module}.{name}")


class SafeReader(FileSystemReader):
    """DCP's file reader, its metadata read by `MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        with open(os.path.join(self.path, METADATA), "rb") as file:
            metadata = MetadataUnpickler(file).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, its plain values loaded with weights_only=True."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            place(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def empty_state(metadata: Any, parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A nested state of the shape a checkpoint's metadata describes (of its top-level
    `parts` only, when named), its tensors whole and uninitialised and its plain values
    None, for DCP to load the checkpoint into."""
    state: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        path = (metadata.planner_data or {}).get(key, (key,))
        if parts is not None and path[0] not in parts:
            continue
        value = torch.empty(item.size, dtype=item.properties.dtype) if isinstance(item, TensorStorageMetadata) else None
        place(state, path, value)
    return state


def place(state: Any, path: tuple, value: Any) -> None:
    """Set `value` at `path` (keys and list indices) in a nested state, making the dicts and
    lists on the way."""
    for key, following in itertools.pairwise(path):
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(state, list):
            state.extend([None] * (key + 1 - len(state)))
            state[key] = fresh if state[key] is None else state[key]
        else:
            state.setdefault(key, fresh)
        state = state[key]
    if isinstance(state, list):
        state.extend([None] * (path[-1] + 1 - len(state)))
    state[path[-1]] = value
