"""Tests of image_folder on a folder of PNG files it writes itself: 3 classes of 12 x 16
images, in colour, of another size than MNIST's. The command line end to end (init, train
with two workers, a resume equal to a straight run, test, create_release), the served
predictions, `prepare` from IDX files, and the one-sentence errors."""

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from image_folder.__main__ import cli
from image_folder.data import normalize
from image_folder.model import build_model
from torchexp.folder import Experiment
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app

CLASSES = ("circle", "cross", "square")
HEIGHT, WIDTH = 12, 16
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 4
SMALL = ("--set", "data.batch_size=8", "--set", "data.test_batch_size=16", "--set", "data.val_split=0.2")


def draw(shape: str, rng: np.random.Generator) -> np.ndarray:
    """A colour image (HEIGHT x WIDTH x 3) of a bright shape on noise, somewhere near the middle."""
    image = rng.integers(0, 60, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    top, left = rng.integers(2, 5), rng.integers(3, 8)
    if shape == "square":
        image[top : top + 7, left : left + 7] = 250
    elif shape == "cross":
        image[top + 3, left : left + 7] = 250
        image[top : top + 7, left + 3] = 250
    else:
        rows, columns = np.ogrid[:HEIGHT, :WIDTH]
        ring = np.abs(np.hypot(rows - top - 3, columns - left - 3) - 3) < 0.8
        image[ring] = 250
    return image


def write_image_folder(root) -> None:
    """root/train/<class>/*.png and root/test/<class>/*.png, reproducibly."""
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(draw(shape, rng)).save(folder / f"{index:02d}.png")


def run(root, *args: str, name: str = "x", data=None):
    """Run the command line on an experiment under `root`, its images in root/data; return click's result."""
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(data or root / "data"), "--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


def invoke(root, *args: str, name: str = "x") -> str:
    result = run(root, *args, name=name)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Experiment x trained 3 epochs with two workers, tested and released."""
    root = tmp_path_factory.mktemp("trained")
    write_image_folder(root / "data")
    invoke(root, "init", *SMALL)
    invoke(root, "train", "--max-epochs", "3", "--num-workers", "2", "--device", "cpu")
    invoke(root, "test", "--device", "cpu")
    invoke(root, "create_release", "--epoch", "3")
    return root


def test_init_keeps_the_classes_the_size_and_the_validation_files(trained):
    state = json.loads((trained / "experiments" / "x" / "data.json").read_text())
    assert state["classes"] == list(CLASSES) and state["image_size"] == [HEIGHT, WIDTH]
    assert len(state["validation_files"]) == round(len(CLASSES) * TRAIN_PER_CLASS * 0.2)
    assert all((trained / "data" / path).is_file() for path in state["validation_files"])


def test_test_is_well_above_chance(trained):
    results = json.loads((trained / "experiments" / "x" / "results" / "3.standard.test.json").read_text())["results"]
    assert results["samples"] == len(CLASSES) * TEST_PER_CLASS and results["accuracy"] > 0.6  # chance: 1 / 3
    assert np.array(results["confusion_matrix"]).sum(1).tolist() == [TEST_PER_CLASS] * len(CLASSES)


def test_a_resume_with_workers_equals_a_straight_run(trained):
    invoke(trained, "init", *SMALL, name="resumed")
    for epochs in ("1", "3"):
        invoke(trained, "train", "--max-epochs", epochs, "--num-workers", "2", "--device", "cpu", name="resumed")
    checkpoints = trained / "experiments"
    straight = torch.load(checkpoints / "x" / "checkpoints" / "3.checkpoint.pt", weights_only=True)
    resumed = torch.load(checkpoints / "resumed" / "checkpoints" / "3.checkpoint.pt", weights_only=True)
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


@pytest.fixture(scope="module")
def client(trained):
    """A client of the release's server, not listening on any port."""
    with TestClient(make_app(Experiment(str(trained / "experiments"), "x"), ServeOptions(device="cpu", threads=1))) as client:
        yield client


def png_of(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_release_serves_pngs_of_any_size_and_rows_of_pixels(client):
    square = draw("square", np.random.default_rng(7))
    grey = np.asarray(Image.fromarray(square).convert("L"))
    large = np.asarray(Image.fromarray(square).resize((WIDTH * 4, HEIGHT * 4), Image.Resampling.NEAREST))
    answer = client.post("/v1/models/x:predict", json={"instances": [png_of(square), grey.tolist(), png_of(large)]})
    assert answer.status_code == 200, answer.text
    as_png, as_rows, as_large_png = answer.json()["predictions"]
    assert as_png == as_rows and as_png["class"] == as_large_png["class"] == "square"
    assert as_png["label"] == CLASSES.index("square") and len(as_png["probabilities"]) == len(CLASSES)


def test_the_example_is_a_test_image_the_release_serves(client):
    example = client.get("/openapi.json").json()
    assert json.dumps(example).count("iVBOR") >= 1  # a base64 PNG starts so
    answer = client.post("/v1/models/x:predict", json={"instances": [[[0] * WIDTH] * (HEIGHT - 1)]})
    assert answer.json() == {"error": f"instances[0]: an instance must be {HEIGHT} rows of {WIDTH} pixel values, not an array of shape [{HEIGHT - 1}, {WIDTH}]"}


def test_a_png_announcing_too_many_pixels_is_refused_before_it_is_decoded(client):
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 100_000, 100_000)
    answer = client.post("/v1/models/x:predict", json={"instances": [base64.b64encode(header).decode()]})
    assert answer.json() == {"error": f"instances[0]: the PNG image is 100000 x 100000 pixels, more than the {4096 * 4096} this server decodes"}


def test_a_missing_image_folder_is_one_sentence_naming_it_and_the_fix(tmp_path):
    result = run(tmp_path, "init", data=tmp_path / "nowhere")
    assert result.exit_code == 5
    train, test = tmp_path / "nowhere" / "train", tmp_path / "nowhere" / "test"
    assert result.output == (
        f"Error: the image folder {train} is missing: put the images in {train}/<class>/*.png and {test}/<class>/*.png, "
        f"or write MNIST's there with `python -m image_folder --data-path {tmp_path / 'nowhere'} prepare --mnist PATH`\n"
    )


def test_an_unreadable_image_is_one_sentence_naming_it(tmp_path):
    write_image_folder(tmp_path / "data")
    invoke(tmp_path, "init", *SMALL)
    gif = tmp_path / "data" / "train" / "cross" / "03.png"
    gif.write_bytes(b"GIF89a")
    # Read in this process, without workers: a worker's error reaches the command line
    # wrapped in torch's DataLoader message.
    result = run(tmp_path, "train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 5 and result.output.endswith(f"Error: the image {gif} cannot be read: the image is not a PNG (it does not start with the PNG signature)\n")
    first = tmp_path / "data" / "train" / "circle" / "00.png"  # init reads it for the images' size
    first.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run(tmp_path, "init", name="y")
    assert (result.exit_code, result.output) == (5, f"Error: the image {first} cannot be read: the PNG image is corrupt or truncated: its header cannot be read\n")


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in MNIST's IDX format."""
    path.write_bytes(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_prepare_writes_mnist_as_png_files_in_digit_folders_once(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(30) % 10).astype(np.uint8))
    data = tmp_path / "data"
    assert invoke(tmp_path, "prepare", "--mnist", str(tmp_path / "mnist"), "--limit", "20") == f"wrote 20 training and 20 test images as PNG files to {data} (train/, test/)\n"
    assert sorted(path.name for path in (data / "train" / "3").iterdir()) == ["03.png", "13.png"]
    assert np.array_equal(np.asarray(Image.open(data / "train" / "3" / "13.png")), images[13])
    assert invoke(tmp_path, "prepare", "--mnist", str(tmp_path / "mnist")) == f"the image folder {data} is there (train/, test/): nothing to do\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "mnist"]


def test_the_model_gives_one_logit_per_class_for_any_image_size():
    model = build_model(classes=5, height=HEIGHT, width=WIDTH, channels=4, hidden=8, dropout=0.0)
    assert model(normalize(torch.zeros(2, 1, HEIGHT, WIDTH, dtype=torch.uint8))).shape == (2, 5)
