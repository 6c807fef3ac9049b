"""Saving at a safe point, after an optimizer step: on SIGINT or SIGTERM, and on a clock.

While training, the first Ctrl-C or SIGTERM only asks for a stop; the loop checks between
steps, saves an interrupt checkpoint and ends. A second signal says what is being waited
for instead of killing a save half way. The checkpoint clock (trainer.checkpoint_every_minutes)
makes the loop save a mid-epoch checkpoint of the same format and train on, so that a
SIGKILL, an out-of-memory kill or a power cut loses minutes, not the epoch;
trainer.checkpoint_every_steps does the same every so many optimizer steps.
"""

import contextlib
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from torchexp.distributed import World, any_across, sum_across


class StopSignals:
    """SIGINT and SIGTERM turned into a request to stop.

    Attributes:
        received: the first signal received, or None.
        saving: set by the loop while a checkpoint is written, for the second signal's message.
    """

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.received: int | None = None
        self.saving = False
        self.owner = os.getpid()
        # A handler runs between two bytecodes of the main thread, possibly inside a log
        # record's write: logging from it can fail with a reentrant write to the stream.
        # SimpleQueue.put is safe there; a thread of its own writes the messages.
        self.messages: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self.write_messages, name="torchexp-stop-messages", daemon=True)

    @property
    def name(self) -> str:
        """The received signal's name, e.g. "SIGINT" (SIGTERM when another rank received it)."""
        return signal.Signals(self.received or signal.SIGTERM).name

    def requested(self, world: World, device: Any) -> bool:
        """Whether a stop signal reached this process, or any rank when distributed."""
        if not world.distributed:
            return self.received is not None
        return any_across(self.received is not None, device)

    def poll(self, world: World, device: Any, clock: "CheckpointClock", step: int) -> tuple[bool, bool]:
        """(a stop signal arrived, the checkpoint clock is due after optimizer step `step`),
        on any rank when distributed: one reduction for both, at every optimizer step."""
        flags = (self.received is not None, clock.due(step))
        if not world.distributed:
            return flags
        totals = sum_across(torch.tensor([float(flag) for flag in flags], device=device))
        return bool(totals[0] > 0), bool(totals[1] > 0)

    def handle(self, signum: int, frame: Any) -> None:
        # Data loader workers are forked with this handler; a terminal's Ctrl-C reaches
        # them too. They keep serving batches until the trainer shuts them down.
        if os.getpid() != self.owner:
            return
        if self.received is None:
            self.received = signum
            self.messages.put(f"{signal.Signals(signum).name} received: finishing the current step, then saving")
        elif self.saving:
            self.messages.put("already stopping: the checkpoint is being saved, please wait")
        else:
            self.messages.put("already stopping: finishing the current step, then saving")

    def write_messages(self) -> None:
        while (message := self.messages.get()) is not None:
            self.logger.warning(message)


class CheckpointClock:
    """When a mid-epoch checkpoint is due: `minutes` after the last checkpoint, or at every
    `steps`-th optimizer step.

    Args:
        minutes: trainer.checkpoint_every_minutes; None: never by time.
        steps: trainer.checkpoint_every_steps; None: never by steps.
    """

    def __init__(self, minutes: float | None, steps: int | None = None):
        self.seconds = None if minutes is None else minutes * 60
        self.steps = steps
        self.restart()

    def restart(self) -> None:
        """Count the minutes from now: a checkpoint was just written."""
        self.deadline = math.inf if self.seconds is None else time.monotonic() + self.seconds

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after optimizer step `step` (counted over the run)."""
        return time.monotonic() >= self.deadline or (self.steps is not None and step % self.steps == 0)


@contextlib.contextmanager
def catching_stop_signals(logger: logging.Logger) -> Iterator[StopSignals]:
    """Within the block, SIGINT and SIGTERM ask for a stop instead of ending the process;
    the handlers found are put back afterwards."""
    signals = StopSignals(logger)
    signals.writer.start()
    previous = {signum: signal.signal(signum, signals.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signals.messages.put(None)
        signals.writer.join()
