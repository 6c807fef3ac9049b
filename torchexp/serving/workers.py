"""`serve --workers N`: N processes answering on one port, each with its own model and batcher.

One process's event loop and batch thread share one interpreter lock, so on a machine
with more cores than one process can keep busy, more processes serve more. The parent
holds the port (its errors stay one sentence, before anything is loaded), then starts the
workers with Python's "spawn" (a fresh interpreter: no copy of a parent's thread pools);
each listens on a socket of its own on that port (SO_REUSEPORT), and the kernel spreads
new connections over them. The cores are divided among the workers (less one for each
torch worker's event loop) unless --threads says how many each takes.

SIGTERM or Ctrl-C to the parent is passed to every worker, which stops gracefully; the
parent exits once all have. A worker that fails or dies stops the others, and the parent
reports it in one sentence. A worker whose parent is killed outright gets SIGTERM from
the kernel, so no orphan keeps the port.
"""

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from torchexp.errors import TorchexpError, first_line
from torchexp.folder import Experiment
from torchexp.releases import find_release
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import describe_serving, listen_beside, serve_on
from torchexp.serving.threads import choose_threads

PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies (Linux)
STOP_TIMEOUT_S = 60  # longest wait for the workers after a stop: their graceful 30 s, and a margin


class WorkerError(TorchexpError):
    """A worker's error, passed on by the parent with the worker's sentence and exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Worker:
    """One worker process and the pipe on which it reports.

    Args:
        index: the worker's number, from 1.
        process: the started process.
        reports: the parent's end of its pipe: ("loaded", model card) once loaded,
            ("failed", (sentence, exit code)) when it cannot serve.
    """

    def __init__(self, index: int, process: Any, reports: multiprocessing.connection.Connection):
        self.index = index
        self.process = process
        self.reports = reports
        self.failure: tuple[str, int] | None = None  # the worker's error: its sentence and exit code

    def read_report(self) -> tuple[str, Any] | None:
        """Return the worker's next report, or None when it exited without one."""
        try:
            kind, content = self.reports.recv()
        except (EOFError, OSError):
            return None
        if kind == "failed":
            self.failure = content
        return kind, content

    def wait_until_loaded(self) -> dict | None:
        """Return the worker's model card once its release is loaded, or None when it
        failed or exited first."""
        report = self.read_report()
        if report is None or report[0] != "loaded":
            self.process.join()
            return None
        return report[1]

    def stop_error(self) -> TorchexpError:
        """The error that stopped the worker: its own (the sentence and exit code one process
        would give), or one saying that it died."""
        if self.failure is not None:
            return WorkerError(*self.failure)
        code = self.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return TorchexpError(
            f"serve worker {self.index} (process {self.process.pid}) stopped unexpectedly ({how}); its log is above"
        )


def serve_with_workers(
    experiment: Experiment, options: ServeOptions, sock: socket.socket, announce: Callable[[str], None], verbosity: str
) -> None:
    """Serve the release with `options.workers` processes on the port `sock` holds (from
    `bind_socket(..., shared=True)`) until a signal stops them, or one of them fails.

    Raises:
        TorchexpError: a worker could not load the release or failed to warm up (its own
            sentence and exit code), or died (a sentence naming it).
    """
    threads = choose_threads(options.threads, options.runtime, options.workers)
    context = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    stopping = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            with contextlib.suppress(OSError):  # already gone
                worker.process.terminate()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(1, options.workers + 1):
            reports, report_to = context.Pipe(duplex=False)
            process = context.Process(
                target=run_worker,
                args=(experiment.experiments_path, experiment.name, options, threads, sock, report_to, verbosity),
                name=f"torchexp-serve-{index}",
            )
            process.start()
            report_to.close()  # the child holds its own copy; the parent's must go for EOF to show its exit
            workers.append(Worker(index, process, reports))
        cards = [worker.wait_until_loaded() for worker in workers]
        if stopping:  # a stop asked for while the workers loaded
            return
        failed = next((worker for worker, card in zip(workers, cards, strict=True) if card is None), None)
        if failed is None:
            assert cards[0] is not None, "every worker loaded"
            announce(describe_serving(cards[0], threads, sock, options.workers))
            failed = watch(workers, lambda: stopping)
    finally:
        stop_all(workers)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        raise failed.stop_error()


def watch(workers: list[Worker], stopping: Callable[[], bool]) -> Worker | None:
    """Wait until every worker has exited on request (None), or return the first that
    stopped on its own, with the failure it reported before exiting read (stop_all then
    stops the others)."""
    running = {worker.process.sentinel: worker for worker in workers}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            worker = running.pop(sentinel)
            worker.process.join()
            while worker.read_report() is not None:  # what it sent before exiting
                pass
            if not stopping():
                return worker
    return None


def stop_all(workers: list[Worker]) -> None:
    """Ask every worker still running to stop, wait for it, and kill what does not."""
    for worker in workers:
        if worker.process.is_alive():
            with contextlib.suppress(OSError):
                worker.process.terminate()
    for worker in workers:
        worker.process.join(STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.reports.close()


def run_worker(
    experiments_path: str,
    name: str,
    options: ServeOptions,
    threads: int,
    sock: socket.socket,
    reports: multiprocessing.connection.Connection,
    verbosity: str,
) -> None:
    """A worker process: load the release and serve it on the port the inherited socket holds until
    SIGTERM; report its model card once loaded, or the sentence of a failure, to the parent."""
    # A process group of its own: Ctrl-C in a terminal reaches the parent alone, which
    # stops the workers with SIGTERM, each once.
    os.setpgid(0, 0)
    stop_with_parent()
    try:
        experiment = Experiment(experiments_path, name)
        release = find_release(experiment, options.epoch)  # verified by the parent
        with listen_beside(sock) as own:
            serve_on(own, experiment, release, options, threads, lambda card: reports.send(("loaded", card)), verbosity)
    except TorchexpError as error:
        reports.send(("failed", (first_line(error), error.exit_code)))
    finally:
        reports.close()
        sock.close()


def stop_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux; elsewhere a
    killed parent leaves its workers to be stopped by hand)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the call: nobody will send the signal
        os.kill(os.getpid(), signal.SIGTERM)
