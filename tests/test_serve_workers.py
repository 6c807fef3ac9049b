"""`serve --workers N` as real processes: N workers listen on the one port and answer, SIGTERM to the parent stops them all, a dead worker stops the others with one
sentence, and a killed parent's workers stop by themselves. Loopback only."""

import os
import pathlib
import signal
import subprocess
import time

import httpx
import pytest

from conftest import REPO, read_line
from serve_fixtures import NAME, pixels_body, shared_release
from test_serve_cli import IMAGE, serve_command, wait_until_refused


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


def start_workers(experiments: str, *arguments: str) -> tuple[subprocess.Popen, str, int]:
    """Start `serve --workers 2 --threads 1 --port 0`, check its start line and wait until
    it answers; return it, its URL and port."""
    process = subprocess.Popen(
        serve_command(experiments, "--port", "0", "--workers", "2", "--threads", "1", *arguments),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = read_line(process.stdout, 120)
    assert line.startswith(f"serving {NAME} (release of epoch 1, torch on cpu, 2 workers x 1 thread) at http://127.0.0.1:"), line
    url = line.split(" at ")[1].split()[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the workers did not warm up in 120 s"
            time.sleep(0.1)
    return process, url, int(url.rstrip("/").rsplit(":", 1)[1])


def list_workers(pid: int) -> list[int]:
    """The serve workers among a process's children (multiprocessing's resource tracker is not one)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as file:
        children = [int(child) for child in file.read().split()]
    return [child for child in children if b"spawn_main" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes()]


def listening_inodes(port: int) -> set[str]:
    """The socket inodes of what listens on 127.0.0.1:port (state 0A is LISTEN)."""
    with open("/proc/net/tcp", encoding="ascii") as file:
        rows = [line.split() for line in file.readlines()[1:]]
    return {fields[9] for fields in rows if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A"}


def socket_inodes(pid: int) -> set[str]:
    folder = f"/proc/{pid}/fd"
    links = [os.readlink(os.path.join(folder, fd)) for fd in os.listdir(folder)]
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {[pid for pid in pids if is_running(pid)]} still run {timeout} s later"
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)


def test_workers_share_one_port_and_sigterm_stops_them_all(experiments):
    process, url, port = start_workers(experiments)
    try:
        workers = list_workers(process.pid)
        assert len(workers) == 2
        # Each worker listens on a socket of its own on the port; the parent listens on none.
        listening = listening_inodes(port)
        assert len(listening) == 2
        assert [len(socket_inodes(pid) & listening) for pid in workers] == [1, 1]
        assert not socket_inodes(process.pid) & listening
        with httpx.Client(base_url=url, timeout=30) as client:
            answers = [client.post(f"/v1/models/{NAME}:predict", json=pixels_body(IMAGE, IMAGE)) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [200] * 4
        assert all(len(answer.json()["predictions"]) == 2 for answer in answers)
        process.send_signal(signal.SIGTERM)
        wait_until_refused(port)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0
        assert stdout == "" and "Traceback" not in stderr
        wait_until_gone(workers)
    finally:
        stop(process)


def test_a_dead_worker_stops_the_others_with_one_sentence(experiments):
    process, _, port = start_workers(experiments)
    try:
        first, second = list_workers(process.pid)
        os.kill(first, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1
        assert stderr.strip().splitlines()[-1] == f"Error: serve worker 1 (process {first}) stopped unexpectedly (signal 9); its log is above"
        wait_until_gone([second])
        wait_until_refused(port)
    finally:
        stop(process)


def test_workers_of_a_killed_parent_stop_by_themselves(experiments):
    process, _, port = start_workers(experiments)
    try:
        workers = list_workers(process.pid)
        process.kill()
        process.wait(timeout=30)
        wait_until_gone(workers)
        wait_until_refused(port)
    finally:
        stop(process)


def test_a_worker_that_cannot_load_gives_its_own_sentence_and_exit_code(experiments):
    done = subprocess.run(
        serve_command(experiments, "--port", "0", "--workers", "2", "--runtime", "onnx"), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 4  # a CheckpointError's, as with one process
    assert done.stderr.startswith("Error: ") and "ONNX" in done.stderr and done.stderr.count("\n") == 1
    assert done.stdout == ""
