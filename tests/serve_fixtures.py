"""What the serve tests share: a small released MNIST experiment, a released experiment of
the project `torchexp create` writes, the app serving either, and predictors that record or
hold the batches they are given."""

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from click.testing import CliRunner
from conftest import CONFIG, SCHEMA, write_mnist

from mnist_classifier.__main__ import cli
from mnist_classifier.data import MNISTClassifierData
from mnist_classifier.runner import MNISTClassifierRunner
from torchexp.commands.context import App
from torchexp.folder import Experiment
from torchexp.logs import make_logger
from torchexp.releases import find_release
from torchexp.scaffold import create_project
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import GracefulServer, bind_socket, load_app, make_uvicorn_config
from torchexp.training import train_experiment

NAME = "served"
TEMPLATE_PROJECT = "served_points"  # the package of the `torchexp create` project: a name no other test imports


def make_release(root: str, model: str = "mlp", data_path: str | None = None, data_class: Any = None) -> str:
    """Create, train one epoch and release an MNIST experiment under `root`; return its
    experiments folder.

    Args:
        root: a temporary folder.
        model: model.name.
        data_path: a folder with MNIST/raw; default tiny look-alike MNIST written under root.
        data_class: the Data class to train with (e.g. one keeping part of the data); the
            experiment still records MNIST's own.
    """
    data_path = data_path or write_mnist(os.path.join(root, "data"))
    experiments = os.path.join(root, "experiments")
    base = ["--experiments-path", experiments, "--data-path", data_path, "--experiment-name", NAME, "--quiet"]

    def invoke(*arguments: str) -> None:
        result = CliRunner().invoke(cli, [*base, *arguments], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    invoke("init", "--config-path", CONFIG, "--schema-path", SCHEMA, "--set", f"model.name={model}", "--set", "data.batch_size=32")
    app = App(data_class or MNISTClassifierData, MNISTClassifierRunner, NAME, experiments, data_path, "quiet")
    train_experiment(app.project, app.open_experiment(), "cpu", 0, 1, 100)
    invoke("create_release", "--epoch", "1")
    return experiments


def make_template_release(root: str) -> str:
    """Create the `torchexp create` project (2-D points, no page) in `root`, train an
    experiment of it one epoch and release it; return its experiments folder.

    The caller puts `root/TEMPLATE_PROJECT` on sys.path first: the release names the
    project's Runner, which serving imports.
    """
    create_project(TEMPLATE_PROJECT, root)
    importlib.invalidate_caches()  # the import system saw the folder on sys.path missing
    cli = importlib.import_module(f"{TEMPLATE_PROJECT}.__main__").cli
    experiments = os.path.join(root, "experiments")
    base = ["--experiments-path", experiments, "--data-path", os.path.join(root, "data"), "--experiment-name", NAME, "--quiet"]
    for arguments in (["init"], ["train", "--max-epochs", "1", "--device", "cpu"], ["create_release", "--epoch", "1"]):
        result = CliRunner().invoke(cli, [*base, *arguments], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return experiments


def shared_release(tmp_path_factory) -> str:
    """The experiments folder of one tiny release, made once per session for the tests
    that only read it (those that change it copy it first)."""
    root = tmp_path_factory.getbasetemp() / "serve-shared-release"
    if not root.exists():
        make_release(str(root))
    return str(root / "experiments")


def build_app(experiments: str, **options: Any) -> Any:
    """The FastAPI app `serve` would run on the release, one thread, not started."""
    experiment = Experiment(experiments, NAME)
    settings = ServeOptions(**{"device": "cpu", "threads": 1, **options})
    return load_app(experiment, find_release(experiment, None), settings, 1, make_logger("serve-tests", None, "quiet"))


def pixels_body(*images: list) -> dict:
    return {"instances": list(images)}


class RecordingPredictor:
    """Wraps a predictor: records each batch's size and thread, and can hold batches until
    `release()` (after `hold()`), to line requests up behind a busy model."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.runtime = inner.runtime
        self.sizes: list[int] = []
        self.threads: list[threading.Thread] = []
        self.loop_running: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()

    def predict(self, batch: Any) -> Any:
        import asyncio

        self.sizes.append(len(batch))
        self.threads.append(threading.current_thread())
        try:
            asyncio.get_running_loop()
            self.loop_running.append(True)
        except RuntimeError:
            self.loop_running.append(False)
        self.entered.set()
        self.gate.wait(30)
        return self.inner.predict(batch)


def record_predictions(app: Any) -> RecordingPredictor:
    """Put a RecordingPredictor around the app's predictor (before the app starts)."""
    pipeline = app.state.batcher.pipeline
    pipeline.predictor = RecordingPredictor(pipeline.predictor)
    return pipeline.predictor


@contextlib.contextmanager
def serving_in_a_thread(app: Any) -> Iterator[str]:
    """Serve `app` with the real server on a free loopback port, in a thread, until the block
    ends; yield its host:port once the model is warmed up."""
    sock = bind_socket("127.0.0.1", 0)
    server = GracefulServer(make_uvicorn_config(app, "quiet"), app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert app.state.batcher.ready.wait(60)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
