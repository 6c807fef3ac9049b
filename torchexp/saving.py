"""Saving training checkpoints, now or in the background (trainer.async_checkpoint).

Under trainer.strategy ddp, rank 0 writes one `.pt` file; under fsdp, every rank writes its
shards into one DCP folder (`torchexp.sharded`). Either way the checkpoint is written
beside its final name, fsynced and hashed, then renamed into place with its sidecar, and
only then do the mid-epoch checkpoints before it and those trainer.keep_checkpoints drops
go: until that moment the previous checkpoint is the one `train` resumes from.

In the background, even the copy of the model's and optimizer's tensors into CPU memory
runs off the training thread: training goes on with the next batches' forward and backward
passes, which change neither, and waits for the copy only before the next optimizer step
(`settle`). The write, fsync, hashing and renames follow in the background, at most one
save at a time: the next save, and the end of `train`, wait for the one in flight. Under
fsdp the background collectives run on a process group of their own, so that they never
interleave with training's, and the copy is DCP's staging.
"""

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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
        self.copying: Callable[[], Any] | None = None  # blocks until the state in flight is copied
        self.stager: Any = None  # DCP's, kept from one save to the next
        self.point: tuple[int, int] | None = None  # (step, epoch) of the save in flight, for the trackers

    def save(
        self,
        precision: Precision,
        signals: StopSignals,
        kind: str,
        number: int,
        partial: dict | None = None,
        provenance: dict | None = None,
        feed: TrainLoader | None = None,
    ) -> None:
        """Save the standard or interrupt checkpoint `number` (an epoch, or a step for an
        experiment trained by steps); return once it is written, or in the background at
        once (`settle` before the model or optimizer changes).

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
        self.point = (runner.counters["step"], runner.counters["epoch"])
        path = os.path.join(runner.experiment.checkpoints_path, self.name)
        fields = {"epoch": number, "kind": kind, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary}
        state = collect_state(runner, precision, partial, feed, with_tensors=not self.sharded)
        signals.saving = True
        try:
            write = (
                self.prepare_sharded(path, state, fields) if self.sharded else self.prepare_file(path, state, fields)
            )
        finally:
            signals.saving = False
        runner.logger.debug(f"{self.name}: training waited {time.perf_counter() - started:.3f} s for its state")
        if self.background:
            self.thread = threading.Thread(
                target=self.run, args=(write, kind), name=f"torchexp-save-{self.name}", daemon=False
            )
            self.thread.start()
        else:
            signals.saving = True
            try:
                self.run(write, kind)
                self.agree()
            finally:
                signals.saving = False
            self.announce()

    def prepare_file(self, path: str, state: dict, fields: dict) -> Callable[[], None]:
        """What writes one `.pt` checkpoint (rank 0); in the background, of a copy of `state`
        made first, in the thread."""
        if not self.background:
            return lambda: write_file(self.runner.world, path, state, fields)
        state = copy_tensors(state, tensors=False)  # the history, counters... as they are now
        copied = threading.Event()
        self.copying = copied.wait

        def write() -> None:
            try:
                staged = copy_tensors(state) if self.runner.world.is_main else None  # only rank 0 writes it
            finally:
                copied.set()
            write_file(self.runner.world, path, staged, fields)

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
                folder = tempfile.mkdtemp(
                    dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp"
                )
                os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp's 0700, as a folder made by mkdir would be
                write_atomic(os.path.join(folder, sharded.PLAIN_STATE), lambda file: torch.save(state, file))
            except (OSError, StorageError) as error:
                problem = f"could not write {path}: {getattr(error, 'strerror', None) or error}"
        folder, problem = gather_objects((folder, problem))[0]
        if problem is not None:
            raise StorageError(problem)
        tensors = sharded.split_state(unwrap_model(runner.model), runner.optimizer)
        pending = None
        if not self.background:
            sharded.save_shards(folder, tensors)
        elif runner.world.distributed:
            self.stager = self.stager or sharded.make_stager(runner.device)
            pending = sharded.start_saving_shards(folder, tensors, self.group, self.stager)
            self.copying = pending.staging_completion.result
        else:  # one process: DCP's own background thread would warn on every save that it is alone
            copied = threading.Event()
            self.copying = copied.wait

        def write() -> None:
            if pending is not None:
                sharded.finish_saving_shards(pending, folder)
            elif self.background:
                try:
                    staged = copy_tensors(tensors)
                finally:
                    copied.set()
                sharded.save_shards(folder, staged)
            hashes = sidecar.hash_files(folder, sharded.shard_files(folder, runner.world.rank))
            every = gather_objects(hashes, self.group)
            if runner.world.is_main:
                sidecar.write_folder_sidecar(
                    path, folder, {name: entry for rank in every for name, entry in rank.items()}, fields
                )

        return write

    def run(self, write: Callable[[], None], kind: str) -> None:
        """Write, then retire what the new checkpoint replaces (rank 0); keep the failure."""
        try:
            write()
            if self.runner.world.is_main:
                retire_before(self.runner, self.name, kind)
        except BaseException as error:  # re-raised by wait() in the training thread
            self.failure = error

    def settle(self) -> None:
        """Wait until the state of the save in flight is copied: before anything changes the
        model or the optimizer (an optimizer step, an epoch's first hook)."""
        if self.copying is not None:
            self.copying()
            self.copying = None

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
            self.announce()

    @contextlib.contextmanager
    def finishing(self, signals: StopSignals) -> Iterator[None]:
        """Train inside: whichever way training ends, the save in flight is waited for, so
        that the process never exits in the middle of one. A failure of that save is
        raised, unless training is failing already: then it is logged beside."""
        try:
            try:
                yield
            except BaseException:
                try:
                    self.wait(signals)
                except (StorageError, DistributedError) as error:
                    self.runner.logger.error(str(error))
                raise
            self.wait(signals)
        finally:
            if self.stager is not None:
                self.stager.close()

    def announce(self) -> None:
        """Tell the trackers that the checkpoint of the last save is on disk: what was logged
        up to it will not be logged again by a run resumed from it."""
        if self.point is not None:
            self.runner.tracker.log_checkpoint(*self.point)
            self.point = None

    def agree(self) -> None:
        """Raise on every rank the failure of the last save on any."""
        failure, self.failure = self.failure, None
        if any_across(failure is not None, self.runner.device):
            if isinstance(failure, StorageError):
                raise failure
            if failure is not None:
                raise StorageError(f"could not save {self.name}: {failure}") from failure
            raise DistributedError(f"another rank could not save {self.name}")


def write_file(world: Any, path: str, state: dict | None, fields: dict) -> None:
    """Write a `.pt` checkpoint and its sidecar: rank 0's part of saving one."""
    if world.is_main:
        sidecar.write_with_sidecar(path, lambda file: torch.save(state, file), fields)


def retire_before(runner: Any, saved: str, kind: str) -> None:
    """After a checkpoint is in place: the mid-epoch checkpoints before it go, and after a
    standard one, those trainer.keep_checkpoints does not keep."""
    for interrupt in checkpoints.list_checkpoints(runner.experiment.checkpoints_path, ("interrupt",)):
        if interrupt.name != saved:
            interrupt.remove()
    if kind == "standard":
        retain_checkpoints(runner)


def copy_tensors(value: Any, tensors: bool = True) -> Any:
    """`value` with its dicts, lists and tuples rebuilt, and every tensor copied into CPU
    memory of its own (or, with `tensors=False`, the same tensors), so that training may go
    on changing the originals while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True) if tensors else value
    if isinstance(value, dict):
        return {key: copy_tensors(item, tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_tensors(item, tensors) for item in value)
    return value
