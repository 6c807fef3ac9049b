"""Mirroring while training: a thread of its own sends each epoch, so that tracking never
costs the training thread more than setting a flag.

Requests coalesce: a sync sends everything new, so one pending request stands for any
number. A server that is down, at the start or mid-run, gives one warning; every later
epoch tries again, and catches up when the server is back. The experiment folder keeps
everything either way, and `sync` sends what a run ended without.
"""

import logging
import threading
from typing import Any

from torchexp.errors import TorchexpError
from torchexp.mirror.runs import RunMirror

CLOSE_TIMEOUT_S = 30.0  # the end of `train` waits this long for the last sync, at most


class BackgroundMirror:
    """Syncs a `RunMirror` from a daemon thread on request; also an epoch observer.

    Args:
        mirror: the experiment's run mirror.
        logger: the experiment's logger, for the warning when the server cannot be reached.
        sync_options: more arguments of every `RunMirror.sync` (a trial's tags).
    """

    def __init__(self, mirror: RunMirror, logger: logging.Logger, **sync_options: Any):
        self.mirror = mirror
        self.logger = logger
        self.sync_options = sync_options
        self.pending = threading.Event()
        self.closing = False
        self.failing = False  # the last sync failed
        self.warned = False  # a run warns of an unreachable server once
        self.thread = threading.Thread(target=self.work, name="torchexp-mlflow", daemon=True)

    def start(self) -> "BackgroundMirror":
        """Start the thread, with a first sync: the run shows RUNNING at once."""
        self.thread.start()
        self.request()
        return self

    def request(self) -> None:
        """Ask for a sync; returns at once."""
        self.pending.set()

    def __call__(self, epoch: int, metrics: dict) -> None:
        """As an epoch observer (`torchexp.loop.EpochObserver`): sync the epoch; never stops training."""
        self.request()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Sync a last time, with the status the run ended with, and stop the thread."""
        self.closing = True
        self.pending.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.logger.warning(
                f"MLflow at {self.mirror.target.uri} did not take the end of this run within {timeout:.0f} s: "
                "the experiment folder has everything; run sync to send it"
            )

    def work(self) -> None:
        while True:
            self.pending.wait()
            self.pending.clear()
            closing = self.closing
            self.sync(training=not closing)
            if closing:
                return

    def sync(self, training: bool) -> None:
        try:
            self.mirror.sync(training=training, **self.sync_options)
        except (TorchexpError, OSError) as error:
            if not self.warned:
                self.logger.warning(
                    f"{error}; training goes on, the experiment folder keeps everything, and sync sends it later"
                )
            self.failing = self.warned = True
            return
        if self.failing:
            self.logger.info(f"MLflow at {self.mirror.target.uri} answers again: the run has caught up")
        self.failing = False
