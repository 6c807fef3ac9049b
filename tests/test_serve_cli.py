"""`serve` as a real process: failures at start are one sentence and a non-zero exit, a
SIGTERM lets the requests in flight finish, and threads follow the process's CPU affinity.
Every address here is 127.0.0.1 or needs no lookup: nothing leaves the machine."""

import ast
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import REPO
from serve_fixtures import NAME, pixels_body, shared_release

IMAGE = np.full((28, 28), 30).tolist()


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


def serve_command(experiments: str, *arguments: str, name: str = NAME) -> list[str]:
    return [sys.executable, "-m", "mnist_classifier", "--experiments-path", experiments, "--experiment-name", name, "serve", *arguments]


def run_serve(experiments: str, *arguments: str, name: str = NAME) -> subprocess.CompletedProcess:
    return subprocess.run(serve_command(experiments, *arguments, name=name), cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def busy_port():
    """A port something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_port_in_use_is_one_sentence_at_start(experiments, busy_port):
    done = run_serve(experiments, "--port", str(busy_port))
    assert done.returncode == 1
    assert done.stderr == f"Error: port {busy_port} on 127.0.0.1 is in use: stop what listens there or pass another --port\n"
    assert done.stdout == ""


@pytest.mark.parametrize(
    "host, reason",
    [
        # A numeric address on an interface that does not exist: refused without asking DNS.
        ("fe80::1%no-such-interface", ""),
        # Not a host name at all: refused before any resolver is asked.
        ("no..such.host", "it is not a valid host name (label empty or too long)"),
    ],
)
def test_an_unknown_host_is_one_sentence_at_start(experiments, host, reason):
    done = run_serve(experiments, "--host", host, "--port", "0")
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: host {host!r} cannot be listened on: {reason}")
    assert done.stderr.count("\n") == 1


def test_no_release_is_one_sentence_saying_how_to_make_one(experiments, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(experiments, bare)
    for name in os.listdir(bare / NAME / "checkpoints"):
        if ".release." in name:
            os.remove(bare / NAME / "checkpoints" / name)
    done = run_serve(str(bare), "--port", "0")
    assert (done.returncode, done.stderr) == (4, f"Error: experiment '{NAME}' has no release checkpoint yet: create one with create_release\n")
    done = run_serve(experiments, "--epoch", "5", "--port", "0")
    assert done.returncode == 4
    assert done.stderr == f"Error: epoch 5 of experiment '{NAME}' has no release checkpoint (releases: 1): create one with create_release --epoch 5\n"


def test_a_corrupt_release_is_found_before_the_port_is_taken(experiments, tmp_path, busy_port):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(experiments, corrupt)
    path = corrupt / NAME / "checkpoints" / "1.checkpoint.release.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    done = run_serve(str(corrupt), "--port", str(busy_port))
    assert (done.returncode, done.stderr) == (4, "Error: checkpoint 1.checkpoint.release.pt does not match its SHA-256 (corrupted)\n")


def read_url(process: subprocess.Popen, timeout: float = 60) -> str:
    """The URL from the server's first line on stdout."""
    lines = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines and " at http://" in lines[0], f"no start line: {lines} {process.poll()}"
    return lines[0].split(" at ")[1].split()[0]


def open_predict_awaiting_body(port: int) -> tuple[socket.socket, bytes]:
    """Send a predict request's head with `Expect: 100-continue` and wait for the server's
    100 Continue: the request is then in the server, its handler waiting for the body.

    Returns:
        The connection, and the body to send.
    """
    body = json.dumps(pixels_body(IMAGE)).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    connection.sendall(head.encode())
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = connection.recv(64)
        assert chunk, f"the server closed the connection after {interim!r}"
        interim += chunk
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    return connection, body


def wait_until_refused(port: int, timeout: float = 30) -> None:
    """Return once 127.0.0.1:port refuses connections: the server has closed its listening socket."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"port {port} still accepts connections {timeout} s after SIGTERM"
        time.sleep(0.01)


def test_sigterm_finishes_requests_in_flight_then_exits_0(experiments):
    one_core = {min(os.sched_getaffinity(0))}
    process = subprocess.Popen(
        serve_command(experiments, "--port", "0"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one_core),
    )
    connections = []
    try:
        url = read_url(process)
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/v1/models/{NAME}").json()["threads"] == 1  # the one core it may use
            assert len(client.post(f"/v1/models/{NAME}:predict", json=pixels_body(IMAGE, IMAGE)).json()["predictions"]) == 2
        # Three requests in the server, waiting for their bodies, when the signal comes; the
        # bodies follow once the server has stopped listening, so the stop is under way.
        connections = [open_predict_awaiting_body(port) for _ in range(3)]
        process.send_signal(signal.SIGTERM)
        wait_until_refused(port)
        answers = []
        for connection, body in connections:
            connection.sendall(body)
        for connection, _ in connections:
            response = http.client.HTTPResponse(connection)
            response.begin()
            answers.append((response.status, json.loads(response.read())))
        assert [status for status, _ in answers] == [200] * 3
        assert all(len(answer["predictions"]) == 1 for _, answer in answers)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "livez", timeout=5)
        assert "Traceback" not in stderr
    finally:
        for connection, _ in connections:
            connection.close()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_the_serving_library_leaves_printing_to_the_command():
    """Only the command line imports click: the server hands its start line to a callback."""
    for path in sorted(pathlib.Path(REPO, "torchexp", "serving").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "click" not in imported, f"{path.name} imports click"
