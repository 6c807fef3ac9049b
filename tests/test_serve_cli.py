"""`serve` as a real process: failures at start are one sentence and a non-zero exit, a
SIGTERM lets the requests in flight finish, and threads follow the process's CPU affinity."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_an_unknown_host_is_one_sentence_at_start(experiments):
    done = run_serve(experiments, "--host", "no-such-host.invalid", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: host 'no-such-host.invalid' cannot be listened on: ")
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


def test_sigterm_finishes_requests_in_flight_then_exits_0(experiments):
    one_core = {min(os.sched_getaffinity(0))}
    # Requests wait up to a second for others to batch with (once a batch has held several
    # instances): they are in flight when the signal comes.
    process = subprocess.Popen(
        serve_command(experiments, "--port", "0", "--max-delay-ms", "1000"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one_core),
    )
    try:
        url = read_url(process)
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(3) as pool:
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/v1/models/{NAME}").json()["threads"] == 1  # the one core it may use
            # A batch of two instances first: from then on, requests wait for company.
            assert len(client.post(f"/v1/models/{NAME}:predict", json=pixels_body(IMAGE, IMAGE)).json()["predictions"]) == 2
            in_flight = [pool.submit(client.post, f"/v1/models/{NAME}:predict", json=pixels_body(IMAGE)) for _ in range(3)]
            while "torchexp_queue_depth 3.0" not in client.get("/metrics").text:
                assert not any(future.done() for future in in_flight)
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            answers = [future.result(30) for future in in_flight]
        assert [answer.status_code for answer in answers] == [200] * 3
        assert all(len(answer.json()["predictions"]) == 1 for answer in answers)
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "livez", timeout=5)
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
