"""The image folder example (examples/image_folder) end to end, as its user runs it: prepare
from tiny IDX files, init, train with two DataLoader workers that decode and augment PNG
files, test, create_release, predictions through the serving app in-process; a SIGKILL in
the middle of an epoch then a resume whose final checkpoint equals a straight run's, tensor
for tensor; and a missing data folder."""

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from conftest import REPO, assert_identical, snapshot, write_mnist
from torchexp.folder import Experiment
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app

EXAMPLE = os.path.join(REPO, "examples", "image_folder")
# The repository's venv installs the example (`pip install -e examples/image_folder`), which
# is how a user's processes find it; otherwise it is taken from its folder, by this test and
# by the process it starts (`environment`).
INSTALLED = importlib.util.find_spec("image_folder") is not None
if not INSTALLED:
    sys.path.append(EXAMPLE)

import image_folder.prepare  # noqa: E402
from image_folder.__main__ import cli  # noqa: E402
from image_folder.prepare import read_idx  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES = 160, 40  # of conftest's look-alike MNIST: digit d is a bright bar at row 2d + 4
SMALL = ("--set", "data.batch_size=16", "--set", "data.test_batch_size=20")
# A train process whose steps after the first epoch sleep, so that a kill lands in the middle
# of epoch 2, between two of its mid-epoch checkpoints: a kill while one is being replaced
# leaves none whole, and the resume would start from epoch 1's end. The arithmetic is the
# example's own.
SLOW_TRAIN = """
import sys, time
import torchexp
from image_folder.runner import ImageFolderRunner

class SlowRunner(ImageFolderRunner):
    def train_step(self, batch, device):
        if self.counters["epoch"] >= 1:
            time.sleep(0.3)
        return super().train_step(batch, device)

torchexp.make_cli("image_folder.data:ImageFolderData", SlowRunner)(sys.argv[1:], prog_name="image_folder")
"""


def environment() -> dict[str, str]:
    """The environment of the process this test starts: one thread, and the example's
    folder on PYTHONPATH when it is not installed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [EXAMPLE, env.get("PYTHONPATH")]))
    return env


def base_args(root, name: str = "x", data=None) -> list[str]:
    return ["--experiments-path", str(root / "experiments"), "--data-path", str(data or root / "data"), "--experiment-name", name]


def invoke(root, *args: str, name: str = "x", data=None, code: int = 0) -> str:
    """Run the example's command line in this process; return its output."""
    result = CliRunner().invoke(cli, [*base_args(root, name, data), *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder with tiny MNIST IDX files in mnist/ and their image folder in data/."""
    root = tmp_path_factory.mktemp("image_folder")
    write_mnist(str(root / "mnist"), TRAIN_IMAGES, TEST_IMAGES)
    output = invoke(root, "prepare", "--mnist", str(root / "mnist"))
    assert output == f"wrote {TRAIN_IMAGES} training and {TEST_IMAGES} test images as PNG files to {root / 'data'} (train/, test/)\n"
    return root


@pytest.fixture(scope="module")
def released(prepared):
    """Experiment x trained 2 epochs with two workers, tested and released."""
    invoke(prepared, "init", *SMALL)
    invoke(prepared, "train", "--max-epochs", "2", "--num-workers", "2", "--device", "cpu")
    invoke(prepared, "test", "--num-workers", "2", "--device", "cpu")
    invoke(prepared, "create_release")
    return prepared


def read_state(root, name: str = "x") -> dict:
    return json.loads((root / "experiments" / name / "data.json").read_text())


def test_prepare_writes_each_image_as_a_png_in_its_class_folder_once(prepared):
    data = prepared / "data"
    assert sorted(os.listdir(data / "train")) == [str(digit) for digit in range(10)]
    assert sum(len(os.listdir(data / "train" / digit)) for digit in os.listdir(data / "train")) == TRAIN_IMAGES
    images = read_idx(str(prepared / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte"))
    labels = read_idx(str(prepared / "mnist" / "MNIST" / "raw" / "train-labels-idx1-ubyte"))
    from image_folder.data import read_image

    assert torch.equal(read_image(str(data / "train" / str(labels[17]) / "017.png"))[0], torch.from_numpy(images[17].copy()))
    before = snapshot(str(prepared))
    assert invoke(prepared, "prepare", "--mnist", str(prepared / "mnist")) == f"the image folder {data} is there (train/, test/): nothing to do\n"
    assert snapshot(str(prepared)) == before


def test_prepare_that_fails_half_way_leaves_nothing(prepared, tmp_path, monkeypatch):
    written = []
    save = image_folder.prepare.Image.Image.save

    def fail_after_ten(image, path, **options):
        if len(written) == 10:
            raise OSError(28, "No space left on device")
        written.append(path)
        save(image, path, **options)

    monkeypatch.setattr(image_folder.prepare.Image.Image, "save", fail_after_ten)
    output = invoke(tmp_path, "prepare", "--mnist", str(prepared / "mnist"), code=5)
    assert output == f"Error: the image folder {tmp_path / 'data'} cannot be written: No space left on device\n"
    assert os.listdir(tmp_path) == []


def test_prepare_refuses_missing_mnist_files_and_a_folder_of_other_files(tmp_path):
    output = invoke(tmp_path, "prepare", "--mnist", str(tmp_path / "nowhere"), code=5)
    raw = tmp_path / "nowhere" / "MNIST" / "raw"
    assert output == (
        f"Error: MNIST's train-images-idx3-ubyte and train-labels-idx1-ubyte are not in {raw}: pass --mnist a folder "
        "holding MNIST/raw, as torchvision.datasets.MNIST(PATH, download=True) leaves it\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    output = invoke(tmp_path, "prepare", "--mnist", str(tmp_path / "nowhere"), code=5)
    assert output == f"Error: --data-path {tmp_path / 'data'} holds other files and no train/ and test/ folders: pass prepare a new or empty folder to write the images to\n"


def test_init_keeps_the_classes_the_validation_files_and_an_example(released):
    state = read_state(released)
    assert state["classes"] == [str(digit) for digit in range(10)] and state["image_size"] == [28, 28]
    assert (state["train_images"], state["test_images"]) == (TRAIN_IMAGES, TEST_IMAGES)
    assert len(state["validation_files"]) == TRAIN_IMAGES // 10
    assert all((released / "data" / path).is_file() and path.startswith("train/") for path in state["validation_files"])
    assert base64.b64decode(state["example"]["png"]).startswith(b"\x89PNG") and state["example"]["class"] == "0"


def test_training_with_workers_learns_and_test_reports_every_class(released):
    report = json.loads((released / "experiments" / "x" / "results" / "2.standard.test.json").read_text())["results"]
    print(f"image folder after 2 epochs: test accuracy {report['accuracy']:.4f}")
    assert report["samples"] == TEST_IMAGES and report["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert len(report["per_class_accuracy"]) == 10 and sum(map(sum, report["confusion_matrix"])) == TEST_IMAGES


@pytest.fixture(scope="module")
def client(released):
    """A client of the release's server, not listening on any port."""
    with TestClient(make_app(Experiment(str(released / "experiments"), "x"), ServeOptions(device="cpu", threads=1))) as client:
        yield client


def test_the_release_serves_a_png_and_rows_of_pixels_alike(client, released):
    state = read_state(released)
    png = state["example"]["png"]
    from image_folder.data import decode_image

    rows = decode_image(base64.b64decode(png), None)[0].tolist()
    answer = client.post("/v1/models/x:predict", json={"instances": [png, rows]})
    assert answer.status_code == 200, answer.text
    from_png, from_rows = answer.json()["predictions"]
    assert from_png == from_rows and set(from_png) == {"label", "class", "probabilities"}
    assert from_png["class"] == state["classes"][from_png["label"]] and abs(sum(from_png["probabilities"]) - 1) < 1e-5


@pytest.mark.parametrize(
    "instance, sentence",
    [
        ("not base64!", "the instance is not valid base64: Only base64 data is allowed"),
        (base64.b64encode(b"GIF89a....").decode(), "the image is not a PNG (it does not start with the PNG signature)"),
        ([[0] * 28] * 27, "an instance must be 28 rows of 28 pixel values, not an array of shape [27, 28]"),
        ([[300] * 28] * 28, "pixel values must be from 0 to 255, found 300"),
        ({"b64": "..."}, "an instance must be a PNG file in base64, or 28 rows of 28 pixel values 0-255, not an object"),
    ],
)
def test_a_malformed_instance_is_refused_in_one_sentence(client, instance, sentence):
    answer = client.post("/v1/models/x:predict", json={"instances": [instance]})
    assert (answer.status_code, answer.json()) == (400, {"error": f"instances[0]: {sentence}"})


def test_a_missing_image_folder_is_one_sentence_saying_where_to_put_the_files(released, tmp_path):
    nowhere = tmp_path / "nowhere"
    sentence = (
        f"Error: the image folder {nowhere / 'train'} is missing: put the images in {nowhere / 'train'}/<class>/*.png and "
        f"{nowhere / 'test'}/<class>/*.png, or write MNIST's there with `python -m image_folder --data-path {nowhere} prepare --mnist PATH`\n"
    )
    assert invoke(tmp_path, "init", name="y", data=nowhere, code=5) == sentence
    assert invoke(released, "test", "--device", "cpu", data=nowhere, code=5) == sentence


def load_final_checkpoint(root, name: str) -> dict:
    return torch.load(root / "experiments" / name / "checkpoints" / "2.checkpoint.pt", weights_only=True)


def test_sigkill_in_the_middle_of_an_epoch_then_resume_equals_a_straight_run(prepared, tmp_path):
    settings = (*SMALL, "--set", "trainer.checkpoint_every_steps=1")
    train = ("train", "--max-epochs", "2", "--num-workers", "2", "--device", "cpu")
    for name in ("straight", "killed"):
        invoke(prepared, "init", *settings, name=name)
    invoke(prepared, *train, name="straight")
    folder = prepared / "experiments" / "killed" / "checkpoints"
    command = [sys.executable, "-c", SLOW_TRAIN, *base_args(prepared, "killed"), *train]
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            # Epoch 2's first mid-epoch checkpoint is whole: the next is 300 ms of sleep away,
            # and 8 of the epoch's 9 steps are still to come.
            while not (folder / "2.checkpoint.interrupt.pt.json").exists():
                assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "no checkpoint of epoch 2 came"
                time.sleep(0.005)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not (folder / "2.checkpoint.pt").exists(), "the kill came after epoch 2's end"
    assert "resumed from 2.checkpoint.interrupt.pt" in invoke(prepared, *train, name="killed")
    assert_identical(load_final_checkpoint(prepared, "killed"), load_final_checkpoint(prepared, "straight"))
