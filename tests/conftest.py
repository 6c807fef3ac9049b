"""Shared fixtures: tiny MNIST IDX files, a CLI runner rooted in tmp_path, no MNIST
download, and a line read from a process that cannot hang a test."""

import importlib
import itertools
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Callable

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir
import torch
from click.testing import CliRunner

import mnist_classifier.data
from mnist_classifier.__main__ import cli

# Property tests draw the same examples on every run (a failure in CI is a failure here too),
# and keep no example database: nothing is written into the checkout (.hypothesis/).
hypothesis_settings.register_profile("torchexp", derandomize=True, database=None)
hypothesis_settings.load_profile("torchexp")
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "torchexp-tests-hypothesis"))  # its caches

FIRST_PORT = 20000  # the ports free_port hands out: 1000 per xdist worker
PORTS_PER_WORKER = 1000
PORT_COUNTER = itertools.count(os.getpid() * 7919 % PORTS_PER_WORKER)  # another test session here starts elsewhere
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "config.default.json")
SCHEMA = os.path.join(REPO, "config.schema.json")


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array in MNIST's IDX format."""
    with open(path, "wb") as file:
        file.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        file.write(struct.pack(f">{array.ndim}I", *array.shape))
        file.write(array.astype(np.uint8).tobytes())


def write_mnist(root: str, train_size: int = 96, test_size: int = 40, seed: int = 0) -> str:
    """Write a tiny learnable MNIST look-alike under root/MNIST/raw; return root.

    Each image of digit d is noise plus a bright bar at row 2 * d, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, size in (("train", train_size), ("t10k", test_size)):
        labels = np.arange(size) % 10
        images = rng.integers(0, 60, size=(size, 28, 28))
        for index, label in enumerate(labels):
            images[index, 2 * label + 4 : 2 * label + 6, 4:24] = 255
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root


MNIST_DOWNLOADS: list[str] = []  # the data paths an MNIST download was asked for


def refuse_mnist_download(data_path: str) -> None:
    """Stand in for `mnist_classifier.data.download_mnist` and fail as torchvision's
    download fails without network: it makes MNIST/raw, then raises RuntimeError. A test
    thus never downloads, whether or not the machine reaches the internet."""
    MNIST_DOWNLOADS.append(data_path)
    os.makedirs(os.path.join(data_path, "MNIST", "raw"), exist_ok=True)
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: the tests download nothing")


def kill_group_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float, timeout: float = 120) -> bool:
    """Once `ready()` (or once the process has ended), wait `delay` seconds more, then SIGKILL
    the process and its group (its loader workers, torchrun's ranks); return whether it was
    still running then. The process must have been started with start_new_session=True."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, "the process never got ready to be killed"
        time.sleep(0.005)
    time.sleep(delay)
    running = process.poll() is None
    if running:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return running


def read_line(pipe, timeout: float, prefix: str = "") -> str:
    """Return the first line of a process's text pipe that starts with `prefix`, or fail
    the test if none comes within `timeout` seconds or before the output ends: a silent
    or crashed process fails the test with what it printed instead of hanging it.

    A reader thread does the blocking reads, so that a partial line or text buffered in
    the pipe's file object cannot block the test as `select` plus `readline` could.
    """
    found, seen = [], []

    def read() -> None:
        while line := pipe.readline():
            seen.append(line)
            if line.startswith(prefix):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        why = f"within {timeout} s" if reader.is_alive() else "before the output ended"
        pytest.fail(f"no line starting with {prefix!r} {why}; read: {''.join(seen)!r}")
    return found[0]


def snapshot(root: str) -> dict[str, bytes]:
    """Every folder and file under `root`, hidden ones included, with the files' bytes:
    comparing two snapshots shows whether anything on disk changed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = b""
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, root)] = file.read()
    return found


def free_port() -> int:
    """A TCP port free on the loopback address now, from a range of its own per xdist worker,
    below the kernel's ephemeral ports (32768 on), and never handed out twice by a process:
    a port the kernel picks for us could be picked again by another worker's test before our
    server binds it. Each process starts at its own place in the range, so that two test
    sessions on one machine seldom meet."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    for _ in range(PORTS_PER_WORKER):
        port = FIRST_PORT + worker * PORTS_PER_WORKER + next(PORT_COUNTER) % PORTS_PER_WORKER
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port from {FIRST_PORT + worker * PORTS_PER_WORKER} on")


def import_or_skip(module: str, requirement: str):
    """pytest.importorskip, but a failure under `requirement`=1 (CI), where a test that does
    not run is a test that did not pass."""
    if os.environ.get(requirement) == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def assert_identical(actual, expected, where: str = "checkpoint") -> None:
    """Assert two checkpoint states are equal bit for bit, naming the first difference.
    NaN equals NaN: a diverged run's metrics are NaN in both."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), f"{where} differs"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: lengths differ"
        for index, (item, expected_item) in enumerate(zip(actual, expected)):
            assert_identical(item, expected_item, f"{where}[{index}]")
    else:
        assert actual == expected or (actual != actual and expected != expected), f"{where}: {actual!r} != {expected!r}"


# The modules that take longest, longest first (seconds of one worker, measured 2026-12-07).
# xdist hands whole modules to its workers in collection order: started first, they no longer
# leave one worker running alone at the end while the other waits.
LONGEST_MODULES = (
    "test_distributed.py",  # 98 s
    "test_loader_kills.py",  # 60 s
    "test_fsdp.py",  # 49 s
    "test_runner_resume.py",  # 44 s
    "test_scaffold.py",  # 35 s
    "test_mirror_registry.py",  # 30 s
    "test_mirror_tracking.py",  # 23 s
    "test_fsdp_background.py",  # 21 s
    "test_serve_workers.py",  # 17 s
)


def pytest_collection_modifyitems(items: list) -> None:
    """Run the longest modules first (a stable sort: each module's tests keep their order)."""
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the tests' models are tiny, and on a busy two-core machine
    OpenMP threads waiting for each other slow training tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def no_mnist_download():
    """Replace MNIST's download for the whole session, module fixtures included."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist_classifier.data, "download_mnist", refuse_mnist_download)
        yield


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite store) shared by the MLflow tests of one test process:
    each starts in about 10 s. Tests find their runs by the ids their experiments keep."""
    from mlflow_server import start_mlflow_server

    with start_mlflow_server(str(tmp_path_factory.mktemp("mlflow"))) as server:
        yield server


@pytest.fixture
def cli_in(tmp_path, data_path):
    """Run the MNIST CLI on tmp_path's experiments (an MLflow experiment named after the test's folder)."""

    def run(*args: str, name: str = "x", uri: str | None = None, code: int = 0):
        base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", name]
        if uri is not None:
            base += ["--mlflow-uri", uri]
        result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


@pytest.fixture
def mnist_downloads() -> list[str]:
    """The data paths MNIST's download is asked for during the test."""
    MNIST_DOWNLOADS.clear()
    return MNIST_DOWNLOADS


@pytest.fixture
def data_path(tmp_path) -> str:
    return write_mnist(str(tmp_path / "data"))


@pytest.fixture
def invoke(tmp_path, data_path):
    """Run the MNIST CLI on tmp_path's experiments and the tiny data; return the result."""

    def run(*args: str, name: str = "x"):
        base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", name]
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)

    return run


def init_args(*extra: str) -> list[str]:
    """Arguments of `init` with the repository's config and schema, small batches."""
    return ["init", "--config-path", CONFIG, "--schema-path", SCHEMA, "--set", "data.batch_size=16", "--set", "data.test_batch_size=20", *extra]


def read_package_data() -> dict[str, list[str]]:
    """The package data files setup.py installs, by package, as setuptools' build_py lists them."""
    import json
    import subprocess
    import sys

    script = (
        "import json, distutils.core\n"
        "build_py = distutils.core.run_setup('setup.py', stop_after='init').get_command_obj('build_py')\n"
        "build_py.ensure_finalized()\n"
        "print(json.dumps({package: files for package, _, _, files in build_py.data_files if files}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])
