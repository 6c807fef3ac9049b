"""The tracker that is always on: TensorBoard's event files and metrics.jsonl, both in the
experiment folder, so that either can be read back (`compare`, `info`, `ExperimentView`).

It is not a `torchexp.trackers.base.Tracker` plugin: it is the record the other trackers
mirror, and it owns what they cannot do, such as dropping what a resumed run logs again.
"""

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from torchexp.files import replace_non_finite, write_atomic

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class NullWriter:
    """Stands in for a SummaryWriter that must not write: every method does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class TensorBoardTracker:
    """Writes scalars to TensorBoard and to metrics.jsonl, in the experiment folder.

    The SummaryWriter is created on first use so that commands that log nothing do not
    pay for importing TensorBoard.

    Args:
        tensorboard_path: the experiment's tensorboard folder.
        metrics_path: the experiment's metrics.jsonl.
        enabled: False on distributed ranks other than 0.
    """

    def __init__(self, tensorboard_path: str, metrics_path: str, enabled: bool = True):
        self.tensorboard_path = tensorboard_path
        self.metrics_path = metrics_path
        self.enabled = enabled
        self.purge_step: int | None = None  # TensorBoard hides earlier runs' events from this step on
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> Any:
        """The TensorBoard SummaryWriter, for users' own figures and text.

        A disabled tracker gives a writer that ignores every call, so that project code
        can log without asking which distributed rank it runs on.
        """
        if not self.enabled:
            return NullWriter()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.purge_step is not None:
                wait_for_a_later_second(self.tensorboard_path)
            self._writer = SummaryWriter(self.tensorboard_path, purge_step=self.purge_step)
        return self._writer

    def log_scalars(self, kind: str, step: int, metrics: dict[str, float], **extra: Any) -> None:
        """Log `metrics` as `<kind>/<name>` scalars at `step`, and as one JSON line.

        Args:
            kind: e.g. "iteration", "train", "validation", "test".
            step: the global step or epoch on TensorBoard's x axis.
            metrics: finite numbers; others are kept in JSON as null.
            extra: more fields for the JSON line, e.g. epoch=3.
        """
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)
        line = {"kind": kind, "step": step, **extra, "time": round(time.time(), 3), "metrics": metrics}
        with open(self.metrics_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(replace_non_finite(line), allow_nan=False) + "\n")

    def log_stop(self, stop: Any) -> None:
        """Record why a `train` ended (a `torchexp.metrics.Stop`) as a "stop" line."""
        if not self.enabled:
            return
        line = {"kind": "stop", **stop.to_json(), "time": round(time.time(), 3)}
        with open(self.metrics_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(line) + "\n")

    def discard_after(self, step: int, epoch: int) -> int:
        """Drop what a resumed run logs again; return the number of metrics.jsonl lines dropped.

        A run stopped after its last checkpoint has logged iterations, perhaps an epoch,
        that the run resuming from that checkpoint repeats. From metrics.jsonl go the
        iteration lines after `step`, the train, validation and stop lines after `epoch`
        (after `step`, for an experiment trained by steps),
        and a line cut short by a kill; test lines and a project's own kinds stay. The writer
        reopens with a purge step, so that TensorBoard hides the events logged after
        `step`. Epoch-level events have their epoch as step, below it: an epoch logged by
        a run killed between that log and its checkpoint stays in TensorBoard.
        """
        self.close()
        self.purge_step = step + 1
        if not self.enabled or not os.path.exists(self.metrics_path):
            return 0
        with open(self.metrics_path, encoding="utf-8") as file:
            lines = file.readlines()
        kept = [line for line in lines if not is_logged_after(line, step, epoch)]
        if len(kept) < len(lines):
            write_atomic(self.metrics_path, lambda file: file.write("".join(kept).encode()))
        return len(lines) - len(kept)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def wait_for_a_later_second(directory: str) -> None:
    """Sleep until the second after the newest TensorBoard event file's in `directory`.

    TensorBoard reads a folder's event files in name order, and it names them
    `events.out.tfevents.<second>.<host>.<pid>.<counter>` with a counter without leading
    zeros. A file opened in the same second as an earlier one may then be read first
    ("...10" before "...9"), and its purge step would not hide the earlier file's events.
    """
    if not os.path.isdir(directory):
        return
    names = [name.split(".") for name in os.listdir(directory) if name.startswith("events.out.tfevents.")]
    seconds = [int(fields[3]) for fields in names if fields[3].isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


def is_logged_after(line: str, step: int, epoch: int) -> bool:
    """Whether a metrics.jsonl line comes after iteration `step` and epoch `epoch`, or is torn."""
    try:
        entry = json.loads(line)
        kind = entry["kind"]
        if kind == "iteration" or (kind in ("train", "validation", "stop") and entry.get("unit") == "step"):
            return entry["step"] > step
        if kind in ("train", "validation", "stop"):
            return entry["epoch"] > epoch
        return False
    except (ValueError, KeyError, TypeError):
        return True


def tensorboard_command(logdir: str | None, logdir_spec: str | None, host: str, port: int) -> list[str]:
    """Return the argument list that starts TensorBoard (no shell involved) on `logdir_spec`,
    or on `logdir` when that is None."""
    command = [sys.executable, "-m", "tensorboard.main", "--host", host, "--port", str(port)]
    if logdir_spec is not None:
        return command + ["--logdir_spec", logdir_spec]
    assert logdir is not None, "tensorboard_command needs a logdir or a logdir_spec"
    return command + ["--logdir", os.fspath(logdir)]
