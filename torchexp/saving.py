"""Saving training checkpoints, now or in the background (trainer.async_checkpoint).

Under trainer.strategy ddp, rank 0 writes one `.pt` file; under fsdp, every rank writes its
shards into one DCP folder (`torchexp.sharded`). Either way the checkpoint is written
beside its final name, fsynced and hashed, then renamed into place with its sidecar, and
only then do the mid-epoch checkpoints before it and those trainer.keep_checkpoints drops
go: until that moment the previous checkpoint is the one `train` resumes from.

In the background, the training thread waits only for the copy of the state into CPU
memory; the write, fsync, hashing and renames run in a thread, at most one save at a
time: the next save, and the end of `train`, wait for the one in flight. Under fsdp that
thread's collectives run on a process group of their own, so that they never interleave
with training's.
"""

import contextlib
import os
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import torch

from torchexp import checkpoints, sidecar
from torchexp.budget import unit_of
from torchexp.distributed import any_across, gather_objects
from torchexp.errors import DistributedError, StorageError
from torchexp.files import current_umask, write_atomic
from torchexp.precision import Precision
from torchexp.retention import retain_checkpoints
from torchexp.signals import StopSignals
from torchexp.strategy import FSDP
from torchexp.train_loader import TrainLoader
from torchexp.training_state import collect_state, unwrap_model


class CheckpointSaver:
    """Writes a run's standard and mid-epoch checkpoints, every rank taking part.

    Args:
        runner: the project's Runner, built.
        background: trainer.async_checkpoint: write in a thread.
    """

    def __init__(self, runner: Any, background: bool):
        self.runner = runner
        self.background = background
        self.sharded = runner.get_conf("trainer", "strategy") == FSDP
        self.group = None
        if background and self.sharded and runner.world.distributed:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo")
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self.name = ""  # the checkpoint in flight

    def save(self, precision: Precision, signals: StopSignals, kind: str, number: int, partial: dict | None = None, provenance: dict | None = None, feed: TrainLoader | None = None) -> None:
        """Save the standard or interrupt checkpoint `number` (an epoch, or a step for an
        experiment trained by steps); return once it is written, or in the background once
        its state is copied.

        Args:
            partial: the metric sums since the last point.
            provenance: what produced the run, kept in the sidecar.
            feed: the train loader, whose state a mid-epoch checkpoint keeps.

        Raises:
            StorageError: this save, or the one before it in the background, failed.
        """
        self.wait(signals)
        runner = self.runner
        started = time.perf_counter()
        summary = {
            "iteration": runner.counters["iteration"],
            "counters": dict(runner.counters),
            "unit": unit_of(runner.config.data),
            "num_workers": runner.data.num_workers,  # verify re-runs with as many: a stream's batches depend on them
            "precision": precision.choice.used,
            "strategy": runner.get_conf("trainer", "strategy"),
            "metrics": {split: (entries[-1] if entries else {}) for split, entries in runner.history.items()},
            "provenance": provenance,
        }
        self.name = checkpoints.make_filename(number, kind, self.sharded)
        path = os.path.join(runner.experiment.checkpoints_path, self.name)
        fields = {"epoch": number, "kind": kind, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary}
        state = collect_state(runner, precision, partial, feed, with_tensors=not self.sharded)
        signals.saving = True
        try:
            write = self.prepare_sharded(path, state, fields) if self.sharded else self.prepare_file(path, state, fields)
        finally:
            signals.saving = False
        runner.logger.debug(f"{self.name}: training waited {time.perf_counter() - started:.3f} s for its state")
        if self.background:
            self.thread = threading.Thread(target=self.run, args=(write, kind), name=f"torchexp-save-{self.name}", daemon=False)
            self.thread.start()
        else:
            signals.saving = True
            try:
                self.run(write, kind)
                self.agree()
            finally:
                signals.saving = False

    def prepare_file(self, path: str, state: dict, fields: dict) -> Callable[[], None]:
        """What writes one `.pt` checkpoint (rank 0); in the background, of a copy of `state`."""
        if self.background and self.runner.world.is_main:  # only rank 0 writes it
            state = copy_tensors(state)

        def write() -> None:
            if self.runner.world.is_main:
                sidecar.write_with_sidecar(path, lambda file: torch.save(state, file), fields)

        return write

    def prepare_sharded(self, path: str, state: dict, fields: dict) -> Callable[[], None]:
        """Start writing a DCP folder beside `path`: rank 0's plain state now, then every
        rank's shards (now, or copied to CPU memory and written in the background); return
        what finishes it."""
        from torchexp import sharded

        runner = self.runner
        folder, problem = None, None
        if runner.world.is_main:
            try:
                folder = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
                os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp's 0700, as a folder made by mkdir would be
                write_atomic(os.path.join(folder, sharded.PLAIN_STATE), lambda file: torch.save(state, file))
            except (OSError, StorageError) as error:
                problem = f"could not write {path}: {getattr(error, 'strerror', None) or error}"
        folder, problem = gather_objects((folder, problem))[0]
        if problem is not None:
            raise StorageError(problem)
        tensors = sharded.split_state(unwrap_model(runner.model), runner.optimizer)
        pending, staged = None, None
        if not self.background:
            sharded.save_shards(folder, tensors)
        elif runner.world.distributed:
            pending = sharded.start_saving_shards(folder, tensors, self.group)
        else:  # one process: DCP's own background thread would warn on every save that it is alone
            staged = copy_tensors(tensors)

        def write() -> None:
            if pending is not None:
                pending.result()
            elif staged is not None:
                sharded.save_shards(folder, staged)
            hashes = sidecar.hash_files(folder, sharded.shard_files(folder, runner.world.rank))
            every = gather_objects(hashes, self.group)
            if runner.world.is_main:
                sidecar.write_folder_sidecar(path, folder, {name: entry for rank in every for name, entry in rank.items()}, fields)

        return write

    def run(self, write: Callable[[], None], kind: str) -> None:
        """Write, then retire what the new checkpoint replaces (rank 0); keep the failure."""
        try:
            write()
            if self.runner.world.is_main:
                retire_before(self.runner, self.name, kind)
        except BaseException as error:  # re-raised by wait() in the training thread
            self.failure = error

    def wait(self, signals: StopSignals | None = None) -> None:
        """Wait for the save in flight, if any.

        Raises:
            StorageError: it failed (on any rank).
        """
        if self.thread is not None:
            if signals is not None:
                signals.saving = True
            try:
                self.thread.join()
            finally:
                if signals is not None:
                    signals.saving = False
            self.thread = None
            self.agree()

    @contextlib.contextmanager
    def finishing(self, signals: StopSignals) -> Iterator[None]:
        """Train inside: whichever way training ends, the save in flight is waited for, so
        that the process never exits in the middle of one. A failure of that save is
        raised, unless training is failing already: then it is logged beside."""
        try:
            yield
        except BaseException:
            try:
                self.wait(signals)
            except (StorageError, DistributedError) as error:
                self.runner.logger.error(str(error))
            raise
        self.wait(signals)

    def agree(self) -> None:
        """Raise on every rank the failure of the last save on any."""
        failure, self.failure = self.failure, None
        if any_across(failure is not None, self.runner.device):
            if isinstance(failure, StorageError):
                raise failure
            if failure is not None:
                raise StorageError(f"could not save {self.name}: {failure}") from failure
            raise DistributedError(f"another rank could not save {self.name}")


def retire_before(runner: Any, saved: str, kind: str) -> None:
    """After a checkpoint is in place: the mid-epoch checkpoints before it go, and after a
    standard one, those trainer.keep_checkpoints does not keep."""
    for interrupt in checkpoints.list_checkpoints(runner.experiment.checkpoints_path, ("interrupt",)):
        if interrupt.name != saved:
            interrupt.remove()
    if kind == "standard":
        retain_checkpoints(runner)


def copy_tensors(value: Any) -> Any:
    """`value` with every tensor copied into CPU memory of its own, so that training may go
    on changing the originals while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: copy_tensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_tensors(item) for item in value)
    return value
