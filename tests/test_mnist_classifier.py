"""The MNIST classifier example: models, data split, training and test metrics."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CONFIG, REPO, SCHEMA, init_args, write_mnist
from mnist_classifier.data import MNISTClassifierData, augment, normalize, read_mnist
from mnist_classifier.model import MODELS, ContiguousBatchNorm2d, build_model
from mnist_classifier.runner import NORMALIZED_BYTES, MNISTClassifierRunner, one_cycle_factor, read_byte_rows, read_pixel_instance
from torchexp.config import Config, build_config
from torchexp.errors import DataError
from torchexp.folder import Experiment
from torchexp.logs import close_logger, make_logger
from torchexp.trackers.fanout import RunTrackers
from torchexp import evaluation, loop

TRAIN_SIZE, TEST_SIZE = 96, 40


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_give_log_probabilities_of_ten_classes(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    output = model(torch.randn(3, 1, 28, 28))
    assert output.shape == (3, 10)
    assert torch.allclose(output.exp().sum(1), torch.ones(3), atol=1e-5)
    assert (output <= 0).all()


def test_lean_cnn_is_fast_cnn_with_eight_channels_in_its_first_convolution():
    shapes = {name: [tuple(t.shape) for t in build_model(name).state_dict().values()] for name in ("fast_cnn", "lean_cnn")}
    # fast_cnn keeps its shapes, so its existing checkpoints and releases still load.
    assert shapes["fast_cnn"][:2] == [(16, 1, 5, 5), (16,)] and (32, 16, 5, 5) in shapes["fast_cnn"]
    assert shapes["lean_cnn"][:2] == [(8, 1, 5, 5), (8,)] and (32, 8, 5, 5) in shapes["lean_cnn"]
    assert shapes["lean_cnn"][-4:] == shapes["fast_cnn"][-4:]  # the same classifier


def test_contiguous_batch_norm_matches_batch_norm_on_channels_last_input():
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 6, 6) * 3 + 1).to(memory_format=torch.channels_last).requires_grad_(True)
    outputs, gradients, running_means = [], [], []
    for norm in (torch.nn.BatchNorm2d(8), ContiguousBatchNorm2d(8)):
        output = norm(x)
        (output * torch.arange(8).view(1, 8, 1, 1)).sum().backward()
        outputs.append(output.detach())
        gradients.append(x.grad.clone())
        running_means.append(norm.running_mean.clone())
        x.grad = None
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-5)
    assert torch.allclose(running_means[0], running_means[1]) and running_means[0].abs().sum() > 0


def test_cnn_applies_relu_after_conv2():
    model = build_model("cnn").eval()
    with torch.no_grad():
        model.conv2.bias.fill_(-100.0)  # without a ReLU every value after conv2 would be negative
    seen = {}
    model.dropout1.register_forward_hook(lambda module, inputs, output: seen.update(pooled=inputs[0]))
    model(torch.randn(2, 1, 28, 28))
    assert (seen["pooled"] >= 0).all()


def data_for(data_path, val_split: float = 0.25, seed: int = 0, **data_conf) -> MNISTClassifierData:
    conf = {"data": {"val_split": val_split, "batch_size": 16, "test_batch_size": 30, "augment": False, **data_conf}}
    data = MNISTClassifierData(Config(conf), seed)
    data.state = data.create(data_path)
    data.load_datasets(data_path)
    data.load_loaders(data_path, 0)
    return data


def test_validation_split_is_drawn_from_the_seed_and_sized_by_val_split(data_path):
    data = data_for(data_path, val_split=0.25)
    indexes = data.state["validation_indexes"]
    assert data.state["train_size"] == TRAIN_SIZE
    assert len(indexes) == 24 and len(set(indexes)) == 24 and indexes == sorted(indexes)
    assert json.loads(json.dumps(data.state)) == data.state  # plain JSON for data.json
    assert data_for(data_path, val_split=0.25).state == data.state
    assert data_for(data_path, val_split=0.25, seed=1).state != data.state
    assert len(data.datasets["train"][0]) == 72 and len(data.datasets["validation"][0]) == 24
    assert len(data.datasets["test"][0]) == TEST_SIZE
    # The validation images are the held-out training images, and no others.
    images, _ = read_mnist(data_path, train=True)
    assert torch.equal(data.datasets["validation"][0], images[indexes])


def test_val_split_zero_gives_an_empty_validation_set(data_path):
    data = data_for(data_path, val_split=0.0)
    assert data.state["validation_indexes"] == []
    assert len(data.datasets["train"][0]) == TRAIN_SIZE
    assert len(data.loaders["validation"]) == 0


def test_loaders_normalize_and_batch(data_path):
    data = data_for(data_path)
    images, labels = next(iter(data.loaders["train"]))
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert [len(batch[1]) for batch in data.loaders["test"]] == [30, 10]


def test_augment_keeps_shapes_and_the_background_value():
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    labels = torch.arange(4)
    plain, _ = normalize((images, labels))
    moved, moved_labels = augment((images, labels))
    assert moved.shape == plain.shape == (4, 1, 28, 28)
    assert torch.equal(moved_labels, labels)
    assert torch.allclose(moved, plain, atol=1e-5)  # a blank image stays blank after any affine move


def centroid(images: torch.Tensor) -> torch.Tensor:
    """The (row, column) of each N x 1 x 28 x 28 normalized image's ink."""
    ink = (images[:, 0] * 0.3081 + 0.1307).clamp(min=0)  # undo normalize: 0 where black
    rows, columns = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = ink.sum((1, 2))
    return torch.stack([(ink * rows).sum((1, 2)) / mass, (ink * columns).sum((1, 2)) / mass], 1)


def test_augment_moves_each_image_differently_by_a_small_amount_and_repeats_with_the_seed():
    # One image with an off-centre bar and a dot, eight times: only the random move tells them apart.
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[8:12, 6:20] = 255
    image[18:21, 16:19] = 200
    images, labels = image.expand(8, 28, 28).clone(), torch.arange(8)
    plain, _ = normalize((images, labels))
    torch.manual_seed(7)
    first, _ = augment((images, labels))
    second, _ = augment((images, labels))
    moved = (first - plain).abs().amax((1, 2, 3))
    assert (moved > 0.5).all(), moved  # every image moved (one grey level is 0.013 here)
    for draw in (first, second):
        for a in range(8):
            for b in range(a + 1, 8):
                assert (draw[a] - draw[b]).abs().max() > 0.5, f"images {a} and {b} moved the same"
    assert ((first - second).abs().amax((1, 2, 3)) > 0.5).all()  # each draw moves them anew
    # At most 10 degrees and 10 % of scale about the centre, 1.4 pixels of shift on each axis:
    # this ink, 4 pixels from the centre, moves less than 3 pixels (a flip or a big turn, more).
    assert (centroid(first) - centroid(plain)).norm(dim=1).max() < 3.5
    torch.manual_seed(7)
    again, _ = augment((images, labels))
    assert torch.equal(again, first)


def test_training_images_of_another_size_are_refused(data_path, tmp_path):
    data = data_for(data_path)
    other = write_mnist(str(tmp_path / "other"), train_size=50)
    with pytest.raises(DataError, match=r"MNIST in .*other/MNIST/raw has 50 training images, but the experiment was created with 96"):
        data.load_datasets(other)


def test_truncated_mnist_files_are_a_data_error(data_path):
    path = os.path.join(data_path, "MNIST", "raw", "t10k-images-idx3-ubyte")
    os.truncate(path, 100)
    with pytest.raises(DataError, match=r"MNIST files in .*MNIST/raw cannot be read"):
        read_mnist(data_path, train=False)


def make_runner(tmp_path, data_path, model="mlp", test_batch_size=30) -> MNISTClassifierRunner:
    conf = build_config(CONFIG, SCHEMA, [f"model.name={model}", "data.batch_size=16", f"data.test_batch_size={test_batch_size}"])
    experiment = Experiment(str(tmp_path / "experiments"), "m")
    data = MNISTClassifierData(Config(conf), 0)
    state = data.create(data_path)
    experiment.create({"seed": 0, "versions": {}, "config": conf}, state)
    data.state = state
    data.load_datasets(data_path)
    data.load_loaders(data_path, 0)
    logger = make_logger("m", experiment.log_path, "quiet")
    tracker = RunTrackers(experiment.tensorboard_path, experiment.metrics_path)
    return MNISTClassifierRunner(experiment, Config(conf), 0, data, logger, tracker, quiet=True)


def test_test_metrics_are_over_samples_in_eval_mode(tmp_path, data_path):
    runner = make_runner(tmp_path, data_path, model="cnn")  # cnn has dropout: train mode would be random
    try:
        runner.init_model(torch.device("cpu"))
        runner.model.train()
        first = runner.test(1, torch.device("cpu"))
        second = runner.test(1, torch.device("cpu"))
        assert runner.model.training  # test put back the mode it found
        runner.model.eval()
        images, labels = runner.data.datasets["test"]
        with torch.no_grad():
            output = runner.model(normalize((images, labels))[0])
    finally:
        runner.tracker.close()
        close_logger(runner.logger)
    assert first == second
    # Batches of 30 and 10 samples: the mean over samples, not over the two batches.
    assert first["samples"] == TEST_SIZE
    assert first["accuracy"] == (output.argmax(1) == labels).sum().item() / TEST_SIZE
    assert first["loss"] == pytest.approx(torch.nn.functional.nll_loss(output, labels).item(), rel=1e-5)
    confusion = torch.tensor(first["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum().item() == TEST_SIZE
    assert confusion.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    per_class = (confusion.diag().float() / confusion.sum(1).float()).tolist()
    assert first["per_class_accuracy"] == pytest.approx(per_class)


def test_training_learns_the_tiny_data_set(tmp_path, data_path):
    runner = make_runner(tmp_path, data_path)
    try:
        loop.train(runner, torch.device("cpu"), 3, 100)
        results = evaluation.run_test(runner, torch.device("cpu"), 3, release=False)
    finally:
        runner.tracker.close()
        close_logger(runner.logger)
    assert results["accuracy"] > 0.9
    assert runner.history["train"][-1]["loss"] < runner.history["train"][0]["loss"]
    # The step scheduler (gamma 0.7 each epoch) is applied.
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(0.7**3)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_and_the_onecycle_schedule_can_be_built(tmp_path, data_path, optimizer):
    runner = make_runner(tmp_path, data_path)
    runner.config.data["training"].update(optimizer=optimizer, scheduler="onecycle", lr=0.01)
    runner.init_model(torch.device("cpu"))
    runner.init_optimizer(torch.device("cpu"))
    runner.init_others(torch.device("cpu"))
    close_logger(runner.logger)
    assert type(runner.optimizer).__name__.lower() == optimizer
    assert runner.scheduler_interval == "iteration"
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.04)  # warm-up starts at 4 % of lr


def test_one_cycle_factor_warms_up_peaks_and_anneals():
    total = 100
    assert one_cycle_factor(0, total) == pytest.approx(0.04)
    assert one_cycle_factor(25, total) == pytest.approx(1.0)
    assert one_cycle_factor(100, total) == pytest.approx(1e-4)
    assert one_cycle_factor(500, total) == pytest.approx(1e-4)  # past the schedule: stays at the floor
    factors = [one_cycle_factor(step, total) for step in range(total)]
    assert factors.index(max(factors)) == 25


def test_init_on_the_tiny_data_writes_the_split_to_data_json(invoke, tmp_path):
    result = invoke(*init_args("--set", "data.val_split=0.5"))
    assert result.exit_code == 0, result.output
    with open(tmp_path / "experiments" / "x" / "data.json") as file:
        state = json.load(file)
    assert state["train_size"] == TRAIN_SIZE and len(state["validation_indexes"]) == 48


def test_training_without_a_validation_split_works(invoke, tmp_path):
    assert invoke(*init_args("--set", "data.val_split=0", "--set", "model.name=mlp")).exit_code == 0
    result = invoke("train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "epoch 1: train loss" in result.output and "validation" not in result.output
    with open(tmp_path / "experiments" / "x" / "checkpoints" / "1.checkpoint.pt.json") as file:
        assert json.load(file)["metrics"]["validation"] == {}


def test_mnist_is_read_as_torchvision_reads_it_without_importing_it(data_path):
    script = (
        "import sys, torch\n"
        "from mnist_classifier.data import read_mnist\n"
        f"images, labels = read_mnist({data_path!r}, train=True)\n"
        "print('torchvision' in sys.modules)\n"
        "from torchvision.datasets import MNIST\n"
        f"dataset = MNIST({data_path!r}, train=True)\n"
        "print(torch.equal(images, dataset.data), torch.equal(labels, dataset.targets), labels.dtype)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["False", "True", "True", "torch.int64"]


def test_a_file_that_is_not_idx_is_a_data_error(data_path):
    path = os.path.join(data_path, "MNIST", "raw", "t10k-labels-idx1-ubyte")
    with open(path, "wb") as file:
        file.write(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"cannot be read: t10k-labels-idx1-ubyte is not an IDX file of unsigned bytes"):
        read_mnist(data_path, train=False)


def test_the_byte_lookup_is_normalize_of_every_byte_value():
    images, _ = normalize((torch.arange(256, dtype=torch.uint8).view(1, 16, 16), None))
    assert torch.equal(torch.from_numpy(NORMALIZED_BYTES), images.flatten())


def test_integer_pixels_are_read_as_bytes_and_give_the_tensor_of_the_general_path():
    digit = digit_like_image()
    pixels = read_pixel_instance(digit)
    assert pixels.dtype == np.uint8 and pixels.tolist() == digit
    served = MNISTClassifierRunner.serve_preprocess(None, digit)
    expected, _ = normalize((torch.tensor([digit], dtype=torch.uint8), None))
    assert served.dtype == torch.float32 and torch.equal(served, expected[0])
    # Floats take numpy's path, and give the same values where they are whole.
    floats = MNISTClassifierRunner.serve_preprocess(None, [[value + 0.0 for value in row] for row in digit])
    assert torch.equal(floats, served)


@pytest.mark.parametrize("instance", [
    [[0.5] * 28] * 28,  # fractions
    [[True] * 28] * 28,  # booleans, which bytes() would read as 1
    [[0] * 28] * 27 + [[1] * 28],  # nothing above 1: may be booleans
    [[0] * 28] * 27 + [[256] + [0] * 27],
    [[0] * 28] * 27 + [[-1] + [0] * 27],
    [[0] * 28] * 27 + [[0] * 27],  # ragged
    [[0] * 28] * 27,
    [[7] * 28] * 27 + [(7,) * 28],  # a tuple row: not what JSON gives
    [["7"] * 28] * 28,
    {"b64": ""},
], ids=["fractions", "booleans", "zeros-and-ones", "256", "negative", "ragged", "27-rows", "tuple-row", "strings", "object"])
def test_only_rows_of_integers_above_one_up_to_255_are_read_as_bytes(instance):
    assert read_byte_rows(instance) is None


def test_an_image_of_booleans_is_still_refused():
    with pytest.raises(ValueError, match="an instance must be 28 x 28 numbers from 0 to 255"):
        read_pixel_instance([[True, False] * 14] * 28)


def digit_like_image() -> list[list[int]]:
    """A digit-like 28 x 28 image of integers 0-255."""
    image = [[0] * 28 for _ in range(28)]
    for row in range(6, 22):
        image[row][12:16] = [64, 255, 200, 17]
    return image
