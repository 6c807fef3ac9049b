"""A real MLflow tracking server for tests: `mlflow server` in a subprocess on a loopback
port, its backend store SQLite in a test's folder (or a given database URL), its artifacts
proxied through the server into that folder, so that clients log runs, artifacts and
models through HTTP exactly as they would against a shared server.

Starting took 14-18 s on two busy cores: importing the CLI (~6 s), creating a new SQLite
store (~7 s: every migration runs) and importing the app in uvicorn's process (~6 s). The
migrations now run once per test process, into a template copied for each new store, so
that a server starts in 9-12 s, the first one after the template's 7 s. The server is uvicorn with one worker, and MLflow's job runner (a huey consumer,
started for database stores, for GenAI jobs these tests never run) is switched off: both
cut the processes started.
"""

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator

from conftest import free_port
from torchexp.search.storage import choose_driver

STARTUP_TIMEOUT = 120  # seconds; a new SQLite store runs every migration, slow on a busy machine
STOP_TIMEOUT = 15  # seconds a stopped server has to exit before it is killed
POLL_INTERVAL = 0.2  # seconds between two readiness checks
SERVED_ARTIFACT_ROOT = "mlflow-artifacts:/"  # what --serve-artifacts gives new experiments: uploads go through the server
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey job runner process
    "PYTHONUNBUFFERED": "1",  # the log is complete when a failed start shows it
}


@dataclass
class MlflowServer:
    """A running `mlflow server`: its address, process and log file."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: str

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash would end them."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def read_log(self) -> str:
        """Everything the server has printed so far, stdout and stderr together."""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()


def build_command(folder: str, backend_store_uri: str, port: int) -> list[str]:
    """The `mlflow server` command line: artifacts go through the server (mlflow-artifacts:/)
    into `folder`/artifacts, so that a client needs no access to the server's disk."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination", os.path.join(folder, "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


@functools.cache
def make_template_store() -> str:
    """The path of an empty SQLite store with every migration applied, made once per process."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tempfile.mkdtemp(prefix="mlflow-template-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "mlflow.db")
    # The artifact root the server gives experiment 0 too, so a copy equals a store the
    # server would have made itself.
    SqlAlchemyStore(f"sqlite:///{path}", SERVED_ARTIFACT_ROOT).engine.dispose()
    return path


def prepare_sqlite_store(folder: str) -> str:
    """The URL of `folder`/mlflow.db, copied from the template unless it exists (a restart)."""
    path = os.path.join(os.path.abspath(folder), "mlflow.db")
    if not os.path.exists(path):
        shutil.copyfile(make_template_store(), path)
    return f"sqlite:///{path}"


def is_healthy(url: str) -> bool:
    """Whether the server at `url` answers its /health endpoint with 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(server: MlflowServer, timeout: float) -> None:
    """Poll /health until it answers; fail with the server's log if the server exits first
    or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not is_healthy(server.url):
        if server.process.poll() is not None:
            raise AssertionError(f"mlflow server exited with {server.process.returncode} before answering {server.url}/health:\n{server.read_log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"mlflow server did not answer {server.url}/health within {timeout} s:\n{server.read_log()}")
        time.sleep(POLL_INTERVAL)


def stop_server(server: MlflowServer) -> None:
    """SIGTERM the server's process group and wait; SIGKILL it if it lingers."""
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(STOP_TIMEOUT)
    # The group, not the process: a worker that outlived its parent must go too.
    server.kill()


@contextlib.contextmanager
def start_mlflow_server(folder: str, backend_store_uri: str | None = None, port: int | None = None) -> Iterator[MlflowServer]:
    """Start `mlflow server` on 127.0.0.1 and yield it once /health answers; stop it on exit.

    Args:
        folder: where the SQLite store (mlflow.db), the artifacts and the server's log go.
        backend_store_uri: the backend store's SQLAlchemy URL, such as postgres_server()'s
            (a bare postgresql:// gets the installed driver, psycopg2); sqlite:///`folder`/mlflow.db
            when None.
        port: the port to listen on; a free one when None. Pass a killed server's port to
            restart it on the same address.
    """
    port = port or free_port()
    store = choose_driver(backend_store_uri) if backend_store_uri else prepare_sqlite_store(folder)
    log_path = os.path.join(folder, f"mlflow-server-{port}.log")
    env = {**os.environ, **SERVER_ENV}
    with open(log_path, "ab") as log:
        # A session of its own: kill() signals the group, uvicorn's worker included.
        process = subprocess.Popen(build_command(os.path.abspath(folder), store, port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = MlflowServer(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        wait_until_healthy(server, STARTUP_TIMEOUT)
        yield server
    finally:
        stop_server(server)
