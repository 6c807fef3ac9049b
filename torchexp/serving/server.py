"""One serving process: the port, the model, and uvicorn until a stop.

`launcher` binds the port and runs this in the process itself or in each worker. Ctrl-C or
SIGTERM stops gracefully: /readyz answers 503 at once, the listening socket closes,
requests in flight and in the queue finish, and the process exits with 0.
"""

import dataclasses
import errno
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from torchexp import checkpoints
from torchexp.errors import TorchexpError, first_line
from torchexp.folder import Experiment
from torchexp.logs import close_logger, make_logger
from torchexp.releases import find_release
from torchexp.serving.collector import tune_garbage_collector
from torchexp.serving.options import ServeOptions
from torchexp.serving.threads import apply_threads, choose_threads

GRACEFUL_TIMEOUT_S = 30  # longest wait for requests in flight after a stop is asked for
BACKLOG = 2048  # connections the kernel holds before the server accepts them (uvicorn's default)


def serve_on(
    sock: socket.socket,
    experiment: Experiment,
    release: checkpoints.Checkpoint,
    options: ServeOptions,
    threads: int,
    on_loaded: Callable[[dict], None],
    verbosity: str,
) -> None:
    """Load `release` and serve it on the listening `sock`, in this process, until a
    signal or a failure stops it; `on_loaded` gets the model's card (a dict) once loaded.

    Raises:
        CheckpointError, DeviceError, ProjectError: from loading the release.
        TorchexpError: the model failed to warm up.
    """
    logger = make_logger(f"{experiment.name}.serve", None, verbosity)
    try:
        apply_threads(threads)
        app = load_app(experiment, release, options, threads, logger)
        tune_garbage_collector()
        server = GracefulServer(make_uvicorn_config(app, verbosity), app)
        app.state.batcher.on_failure = server.stop_for
        on_loaded(dataclasses.asdict(app.state.card))
        run_until_stopped(server, sock)
    finally:
        close_logger(logger)
    if server.failure is not None:
        raise TorchexpError(f"serve stopped: {server.failure}")


def make_app(
    experiment: Experiment, options: ServeOptions = ServeOptions(), logger: logging.Logger | None = None
) -> Any:
    """Return the FastAPI app `serve` runs on the experiment's release (`options.epoch`'s, or
    the latest), not started: FastAPI's TestClient starts it, which is how a project's tests
    ask its release for predictions, and an application of your own may mount it.

    Raises:
        ConfigError: the runtime is not one of RUNTIMES.
        CheckpointError: the release (or the export its runtime runs) is missing or corrupt.
        ProjectError: the project's hooks failed to build the model.
    """
    release = find_release(experiment, options.epoch)
    logger = logger or make_logger(f"{experiment.name}.serve", None, "quiet")
    return load_app(experiment, release, options, choose_threads(options.threads, options.runtime), logger)


def load_app(
    experiment: Experiment, release: checkpoints.Checkpoint, options: ServeOptions, threads: int, logger: logging.Logger
) -> Any:
    """Load the release and return the FastAPI app serving it; its batcher is `app.state.batcher`.

    Raises:
        CheckpointError, DeviceError: from loading the release.
    """
    from torchexp.serving.batcher import Batcher
    from torchexp.serving.metrics import ServerMetrics
    from torchexp.serving.pipeline import Pipeline
    from torchexp.serving.predictors import load_predictor
    from torchexp.serving.protocol import ModelCard, create_app

    runner, predictor = load_predictor(experiment, release, options.runtime, options.device, threads)
    metrics = ServerMetrics()
    batcher = Batcher(
        Pipeline(runner, predictor),
        metrics,
        options.max_batch_size,
        options.max_delay_ms / 1000,
        options.max_queue,
        logger,
    )
    device = str(getattr(predictor, "device", "cpu"))
    card = ModelCard(experiment.name, release.epoch, predictor.runtime, device, threads, release.unit)
    app = create_app(card, batcher, metrics, options.max_body_bytes)
    app.state.batcher = batcher
    app.state.card = card
    return app


def bind_socket(host: str, port: int, shared: bool = False) -> socket.socket:
    """Return a socket listening on host:port (port 0: a free one); `shared`: a socket that
    holds the port for workers, each listening on a socket of its own (`listen_beside`).

    Workers do not accept on one shared socket: its waiting connections go to whichever
    process accepts first, and under a burst one worker took 31 of 32 clients. With
    SO_REUSEPORT the kernel spreads new connections over the workers' sockets instead.

    Raises:
        TorchexpError: the host is unknown or the port is in use or not allowed.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise TorchexpError(f"host {host!r} cannot be listened on: {error.strerror}") from error
    except UnicodeError as error:  # a name Python cannot encode for the resolver, e.g. "a..b"
        reason = first_line(error.__cause__ or error)
        raise TorchexpError(f"host {host!r} cannot be listened on: it is not a valid host name ({reason})") from error
    # Bound without SO_REUSEPORT first, so that a port any other server holds is refused,
    # one that shares its port included.
    sock = open_socket(family, kind, proto, address, listen=not shared, reuse_port=False)
    if not shared:
        return sock
    address = sock.getsockname()
    sock.close()
    return open_socket(family, kind, proto, address, listen=False, reuse_port=True)


def listen_beside(shared: socket.socket) -> socket.socket:
    """Return a socket of this worker's own listening on the port `shared` holds.

    Raises:
        TorchexpError: the port cannot be listened on.
    """
    return open_socket(shared.family, shared.type, shared.proto, shared.getsockname(), listen=True, reuse_port=True)


def open_socket(family: int, kind: int, proto: int, address: tuple, listen: bool, reuse_port: bool) -> socket.socket:
    """Return a socket bound to `address`, listening if asked.

    Raises:
        TorchexpError: the port is in use or not allowed.
    """
    sock = socket.socket(family, kind, proto)
    # Like uvicorn: a restarted server may take the port while old connections linger in
    # TIME_WAIT; a port another server listens on is still refused.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    host, port = address[:2]
    try:
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise TorchexpError(
                f"port {port} on {host} is in use: stop what listens there or pass another --port"
            ) from error
        raise TorchexpError(f"cannot listen on {host} port {port}: {error.strerror}") from error
    return sock


def describe_serving(card: dict, threads: int, sock: socket.socket, workers: int = 1) -> str:
    """The line `serve` prints once the release is loaded: the model, how it runs, its URL."""
    host, port = sock.getsockname()[:2]
    processes = f"{threads} thread{'' if threads == 1 else 's'}"
    if workers > 1:
        processes = f"{workers} workers x {processes}"
    return (
        f"serving {card['name']} (release of {card['unit']} {card['epoch']}, {card['runtime']} on {card['device']}, "
        f"{processes}) "
        f"at http://{format_host(host)}:{port}/ (Ctrl-C to stop)"
    )


def format_host(host: str) -> str:
    """An address as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def make_uvicorn_config(app: Any, verbosity: str) -> uvicorn.Config:
    """uvicorn's configuration: one process, its logs as quiet as torchexp's, no access log
    unless verbose (a line per request costs throughput)."""
    return uvicorn.Config(
        app,
        log_level={"quiet": "error", "verbose": "info"}.get(verbosity, "warning"),
        access_log=verbosity == "verbose",
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
        server_header=False,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server, marking the app not ready the moment a stop is asked for.

    Args:
        config: uvicorn's configuration.
        app: the FastAPI app of `load_app`.
    """

    def __init__(self, config: uvicorn.Config, app: Any):
        super().__init__(config)
        self.app = app
        self.failure: str | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.app.state.stopping = True
        super().handle_exit(sig, frame)

    def stop_for(self, reason: str) -> None:
        """Stop because the model cannot serve; callable from any thread."""
        self.failure = reason
        self.app.state.stopping = True
        self.should_exit = True


def run_until_stopped(server: Any, sock: socket.socket) -> None:
    """Run uvicorn on `sock` until a signal or a failure stops it.

    uvicorn catches SIGINT and SIGTERM, stops gracefully, then raises the signal again for
    the handlers that were there before it; the ones set here let that end the process
    with 0, the way a requested stop should, and ask for a stop if a signal arrives before
    uvicorn has set its own.
    """

    def request_stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
