"""Stopping on SIGINT and SIGTERM at a safe point: after the current optimizer step.

While training, the first Ctrl-C or SIGTERM only asks for a stop; the loop checks
`requested()` between steps, saves an interrupt checkpoint and ends. A second signal
says what is being waited for instead of killing a save half way.
"""

import contextlib
import logging
import os
import signal
from typing import Any, Iterator

from torchexp.distributed import World, any_across


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

    @property
    def name(self) -> str:
        """The received signal's name, e.g. "SIGINT" (SIGTERM when another rank received it)."""
        return signal.Signals(self.received or signal.SIGTERM).name

    def requested(self, world: World, device: Any) -> bool:
        """Whether a stop signal reached this process, or any rank when distributed."""
        if not world.distributed:
            return self.received is not None
        return any_across(self.received is not None, device)

    def handle(self, signum: int, frame: Any) -> None:
        # Data loader workers are forked with this handler; a terminal's Ctrl-C reaches
        # them too. They keep serving batches until the trainer shuts them down.
        if os.getpid() != self.owner:
            return
        if self.received is None:
            self.received = signum
            self.logger.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving")
        elif self.saving:
            self.logger.warning("already stopping: the checkpoint is being saved, please wait")
        else:
            self.logger.warning("already stopping: finishing the current step, then saving")


@contextlib.contextmanager
def catching_stop_signals(logger: logging.Logger) -> Iterator[StopSignals]:
    """Within the block, SIGINT and SIGTERM ask for a stop instead of ending the process;
    the handlers found are put back afterwards."""
    signals = StopSignals(logger)
    previous = {signum: signal.signal(signum, signals.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
