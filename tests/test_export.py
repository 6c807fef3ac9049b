"""`export`: a release as ONNX (checked in onnxruntime against torch) or as safetensors."""

import dataclasses
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import init_args, write_mnist
from mnist_classifier.__main__ import cli
from mnist_classifier.data import normalize, read_mnist
from torchexp.project import Project
from torchexp.sidecar import read_sidecar
from torchexp.errors import CheckpointError
from torchexp.folder import Experiment
from torchexp.export import CHECK_ATOL, CHECK_RTOL, export_path, load_check_batches, open_onnx_session
from torchexp.formats import onnx as onnx_format
from torchexp.inference import load_inference_runner

# One model of each family the project has: fully connected, and convolutions with batch norm
# (the fast preset's, whose first batch norm runs on a contiguous copy).
FAMILIES = ("mlp", "lean_cnn")


def run(root, name, *args):
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(root / "data"), "--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A folder with tiny MNIST and one experiment per model family, trained 1 epoch and released."""
    root = tmp_path_factory.mktemp("export")
    write_mnist(str(root / "data"))
    for family in FAMILIES:
        assert run(root, family, *init_args("--set", f"model.name={family}")).exit_code == 0
        assert run(root, family, "--quiet", "train", "--max-epochs", "1", "--device", "cpu").exit_code == 0
        assert run(root, family, "create_release", "--epoch", "1").exit_code == 0
    return root


@pytest.fixture(scope="module")
def onnx_exports(released, tmp_path_factory):
    """Each family's ONNX export, made once through the command line, in a copy of
    `released` (which the tests of a missing export use as it is)."""
    root = tmp_path_factory.mktemp("onnx") / "root"
    shutil.copytree(released, root)
    for family in FAMILIES:
        result = run(root, family, "export", "--format", "onnx")
        assert result.exit_code == 0, result.output
        assert "onnxruntime matches torch on the example instance and 40 test samples" in result.output
    return root


def copy_experiment(root, name, destination):
    """Copy an experiment and the data, so that a test may damage its copy."""
    shutil.copytree(root / "experiments" / name, destination / "experiments" / name)
    shutil.copytree(root / "data", destination / "data")
    return destination


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_runs_in_onnxruntime_like_torch_for_batches_of_1_and_7(onnx_exports, family):
    experiment = Experiment(str(onnx_exports / "experiments"), family)
    path = export_path(experiment, 1, "onnx")
    record = read_sidecar(path)
    assert record["format"] == "onnx" and record["epoch"] == 1 and record["opset"] == 18
    # The example instance at batch 1, then the 40 test samples as the test loader gives them (2 x 20).
    assert record["check"]["samples"] == 41 and record["check"]["tolerance_used"] <= 1
    assert record["check"]["argmax_agreement"] == 1.0

    session = open_onnx_session(path, 1)
    model = load_inference_runner(experiment, "release", "cpu").model
    images, _ = normalize(read_mnist(str(onnx_exports / "data"), train=False))
    for batch in (images[:1], images[3:10]):
        (output,) = session.run(["output"], {"input": batch.numpy()})
        with torch.no_grad():
            expected = model(batch).numpy()
        assert output.shape == (len(batch), 10)
        np.testing.assert_allclose(output, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL)


def test_the_sidecar_verifies_and_a_damaged_onnx_export_is_refused(onnx_exports, tmp_path):
    root = copy_experiment(onnx_exports, "mlp", tmp_path)
    path = export_path(Experiment(str(root / "experiments"), "mlp"), 1, "onnx")
    with open(path, "rb") as file:
        content = file.read()
    assert read_sidecar(path)["sha256"] == hashlib.sha256(content).hexdigest()
    open_onnx_session(path, 1)

    with open(path, "r+b") as file:  # one byte flipped in the middle
        file.seek(len(content) // 2)
        file.write(bytes([content[len(content) // 2] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=r"does not match its SHA-256 \(corrupted\): write it with export --format onnx again"):
        open_onnx_session(path, 1)

    with open(path, "wb") as file:  # truncated
        file.write(content[:1000])
    with pytest.raises(CheckpointError, match=r"is 1000 bytes, but \d+ were written \(truncated or replaced\): write it with export --format onnx again"):
        open_onnx_session(path, 1)

    os.remove(path + ".json")
    with pytest.raises(CheckpointError, match=r"ONNX export .*1.release.onnx has no valid sidecar 1.release.onnx.json: write it with export --format onnx again"):
        open_onnx_session(path, 1)

    os.remove(path)
    with pytest.raises(CheckpointError, match="does not exist: write it with export --format onnx"):
        open_onnx_session(path, 1)


def test_an_onnx_export_of_an_earlier_release_is_refused(onnx_exports, tmp_path):
    root = copy_experiment(onnx_exports, "mlp", tmp_path)
    experiment = Experiment(str(root / "experiments"), "mlp")
    release_record = os.path.join(experiment.checkpoints_path, "1.checkpoint.release.pt.json")
    record = read_sidecar(release_record[: -len(".json")])
    record["sha256"] = "0" * 64  # as if create_release had written epoch 1's release anew
    with open(release_record, "w") as file:
        json.dump(record, file)
    with pytest.raises(CheckpointError, match="was made from an earlier release of epoch 1: write it with export --format onnx again"):
        open_onnx_session(export_path(experiment, 1, "onnx"), 1)


def test_safetensors_export_holds_the_release_weights_exactly_and_its_metadata(released, tmp_path):
    root = copy_experiment(released, "lean_cnn", tmp_path)
    result = run(root, "lean_cnn", "export", "--format", "safetensors")
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    experiment = Experiment(str(root / "experiments"), "lean_cnn")
    path = export_path(experiment, 1, "safetensors")
    release = torch.load(os.path.join(experiment.checkpoints_path, "1.checkpoint.release.pt"), weights_only=True)
    with safe_open(path, framework="pt") as file:
        assert sorted(file.keys()) == sorted(release["model"])
        for key in file.keys():
            assert torch.equal(file.get_tensor(key), release["model"][key]), key
        metadata = file.metadata()
    assert metadata["experiment"] == "lean_cnn" and metadata["epoch"] == "1"
    assert json.loads(metadata["config"]) == release["config"]
    assert json.loads(metadata["classes"]) == release["classes"]
    assert metadata["torchexp"] == release["versions"]["torchexp"]
    record = read_sidecar(path)
    assert record["format"] == "safetensors" and record["check"]["round_trip"] == "equal"
    assert record["bytes"] == os.path.getsize(path)


def test_without_a_release_export_says_to_create_one(invoke):
    assert invoke(*init_args("--set", "model.name=mlp")).exit_code == 0
    result = invoke("export", "--format", "safetensors")
    assert result.exit_code == CheckpointError.exit_code
    assert result.output.strip() == "Error: experiment 'x' has no release checkpoint yet: create one with create_release"


def test_an_epoch_without_a_release_is_one_sentence_listing_the_releases(released):
    result = run(released, "mlp", "export", "--format", "onnx", "--epoch", "5")
    assert result.exit_code == CheckpointError.exit_code
    assert result.output.strip() == (
        "Error: epoch 5 of experiment 'mlp' has no release checkpoint (releases: 1): create one with create_release --epoch 5"
    )


def test_an_unknown_format_is_refused_by_the_option(released):
    result = run(released, "mlp", "export", "--format", "tflite")
    assert result.exit_code == 2
    assert "Invalid value for '--format': 'tflite' is not one of 'onnx', 'safetensors'" in result.output


class SkewedSession:
    """An onnxruntime session whose outputs are off by 0.01: a broken conversion."""

    def __init__(self, session):
        self.session = session

    def run(self, names, feed):
        return [output + 0.01 for output in self.session.run(names, feed)]


def test_an_onnx_export_that_does_not_reproduce_the_model_is_not_written(released, tmp_path, monkeypatch):
    root = copy_experiment(released, "mlp", tmp_path)
    make_session = onnx_format.make_session
    skewed = lambda content, threads: SkewedSession(make_session(content, threads))  # noqa: E731
    monkeypatch.setattr(onnx_format, "make_session", skewed)
    result = run(root, "mlp", "export", "--format", "onnx")
    assert result.exit_code == 1
    assert "does not reproduce the model: onnxruntime's outputs differ from torch's by up to 0.01" in result.output
    assert "so nothing was written" in result.output
    assert not os.path.exists(root / "experiments" / "mlp" / "exports")


def test_a_runner_without_an_example_instance_cannot_be_exported_to_onnx(released, monkeypatch):
    from mnist_classifier.runner import MNISTClassifierRunner

    monkeypatch.setattr(MNISTClassifierRunner, "serve_example", lambda self: None)
    result = run(released, "mlp", "export", "--format", "onnx", "--epoch", "1")
    assert result.exit_code == 1
    assert "MNISTClassifierRunner has no serve_example(), which export needs to trace the model" in result.output


def test_the_check_takes_test_samples_as_the_loader_gives_them_or_falls_back_to_the_example(released, caplog):
    experiment = Experiment(str(released / "experiments"), "mlp")
    logger = logging.getLogger("test_export")
    project = Project("mnist_classifier.data:MNISTClassifierData", "mnist_classifier.runner:MNISTClassifierRunner", str(released / "data"), "quiet")
    batches = load_check_batches(project, experiment, 27, logger)
    assert [tuple(batch.shape) for batch in batches] == [(20, 1, 28, 28), (7, 1, 28, 28)]

    not_a_folder = dataclasses.replace(project, data_path=str(released / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"))
    with caplog.at_level(logging.WARNING, logger="test_export"):
        assert load_check_batches(not_a_folder, experiment, 27, logger) == []
    assert "the export's check runs on the example instance only: the test set cannot be loaded" in caplog.text
