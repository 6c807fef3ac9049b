"""Provenance: what produced an experiment, recorded at init and every train, carried by
checkpoints, releases and exports, and named when a resume finds it changed."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

import torchexp
from conftest import REPO, init_args, write_mnist
from mnist_classifier.__main__ import cli
from torchexp.provenance import describe_changes, digest_data, read_last, watching_reads

MLP = ("--set", "model.name=mlp", "--set", "trainer.max_epochs=2")
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def run(root: str, *args: str):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", "x"]
    result = CliRunner().invoke(cli, [*base, *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def root(tmp_path) -> str:
    write_mnist(str(tmp_path / "data"))
    run(str(tmp_path), *init_args(*MLP))
    return str(tmp_path)


def read_records(root: str) -> list[dict]:
    with open(os.path.join(root, "experiments", "x", "provenance.jsonl")) as file:
        return [json.loads(line) for line in file]


def test_init_and_every_train_record_code_data_environment_and_settings(root):
    run(root, "train", "--max-epochs", "1", "--device", "cpu")
    init, train = read_records(root)
    assert (init["event"], train["event"]) == ("init", "train")
    assert set(init["data"]["files"]) == {"MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte"}  # what create read
    assert set(train["data"]["files"]) == {f"MNIST/raw/{name}" for name in MNIST_FILES}  # what load_datasets read
    raw = os.path.join(root, "data", "MNIST", "raw", "train-images-idx3-ubyte")
    assert train["data"]["files"]["MNIST/raw/train-images-idx3-ubyte"]["sha256"] == torchexp.files.hash_file(raw)
    assert train["environment"]["torch"] == torch.__version__ and train["environment"]["cpu_flags"] is not None
    assert train["settings"] == {"precision": "fp32", "deterministic": False}
    commit = os.popen(f"git -C {REPO} rev-parse HEAD").read().strip()
    assert train["code"]["commit"] == commit and isinstance(train["code"]["dirty"], bool)
    view = torchexp.Experiments(os.path.join(root, "experiments"))["x"]
    assert view.provenance == train
    sidecar = view.checkpoints[0].sidecar
    assert sidecar["provenance"] == {key: value for key, value in train.items() if key != "event"}


def test_info_shows_the_provenance(root):
    run(root, "train", "--max-epochs", "1", "--device", "cpu")
    output = run(root, "info").output
    provenance = output.split("provenance:\n")[1].split("config:")[0]
    assert "recorded: train at " in provenance and "code: git commit " in provenance
    assert "over 4 files (MNIST/raw/t10k-images-idx3-ubyte, MNIST/raw/t10k-labels-idx1-ubyte, " in provenance
    assert f"torch {torch.__version__}" in provenance and "settings: trainer.precision fp32, trainer.deterministic False" in provenance


def test_a_release_and_its_exports_carry_the_provenance_of_their_epoch(root):
    run(root, "train", "--max-epochs", "1", "--device", "cpu")
    run(root, "create_release", "--epoch", "1")
    run(root, "export", "--format", "safetensors")
    folder = os.path.join(root, "experiments", "x")
    expected = torchexp.Experiments(os.path.join(root, "experiments"))["x"].checkpoints[0].sidecar["provenance"]
    release = torch.load(os.path.join(folder, "checkpoints", "1.checkpoint.release.pt"), weights_only=True)
    assert release["provenance"] == expected
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "exports", "1.release.safetensors"), framework="pt") as file:
        assert json.loads(file.metadata()["provenance"]) == expected
    with open(os.path.join(folder, "exports", "1.release.safetensors.json")) as file:
        assert json.load(file)["provenance"] == expected


def test_a_resume_under_another_provenance_warns_once_naming_what_changed(root):
    run(root, "train", "--max-epochs", "1", "--device", "cpu")
    path = os.path.join(root, "experiments", "x", "provenance.jsonl")
    last = read_records(root)[-1]
    last["environment"]["torch"] = "2.13.0"
    last["code"] = {"commit": "a1b2c3d4e5f6", "dirty": False}
    with open(path, "a") as file:
        file.write(json.dumps(last) + "\n")
    with open(os.path.join(root, "data", "MNIST", "raw", "t10k-labels-idx1-ubyte"), "r+b") as file:
        file.seek(-1, os.SEEK_END)
        byte = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([(byte[0] + 1) % 10]))
    output = run(root, "train", "--max-epochs", "2", "--device", "cpu").output
    warnings = [line for line in output.splitlines() if "provenance differs" in line]
    assert len(warnings) == 1
    commit = read_records(root)[-1]["code"]["commit"][:7]
    assert f"code: commit a1b2c3d -> {commit}" in warnings[0]
    assert "data digest of MNIST/raw/t10k-labels-idx1-ubyte changed" in warnings[0]
    assert f"torch 2.13.0 -> {torch.__version__}" in warnings[0]
    assert "train-images" not in warnings[0]  # unchanged files are not named


def test_a_first_train_does_not_warn(root):
    assert "provenance differs" not in run(root, "train", "--max-epochs", "1", "--device", "cpu").output


def test_reads_are_watched_only_inside_the_block_and_only_for_reading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHEXP_READ_HOOK", "1")  # as the command line's process
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"abc")
    (data / "b.bin").write_bytes(b"de")
    with watching_reads() as reads:
        open(data / "a.bin", "rb").close()
        with open(data / "c.bin", "wb") as file:
            file.write(b"written, not read")
        torch.load  # noqa: B018 - an attribute, not a read
    open(data / "b.bin", "rb").close()
    assert reads == [str(data / "a.bin")]
    digest = digest_data([*reads, "/etc/hostname"], str(data))
    assert list(digest["files"]) == ["a.bin"]  # files outside --data-path are not the data set's


def test_digests_of_unchanged_files_are_reused_and_changes_are_named(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"abc")
    first = digest_data([str(data / "a.bin")], str(data))
    monkeypatch.setattr("torchexp.provenance.hash_file", lambda path: pytest.fail("an unchanged file was hashed again"))
    assert digest_data([str(data / "a.bin")], str(data), first) == first
    assert describe_changes({"data": first}, {"data": first}) == []
    assert read_last(str(tmp_path / "missing.jsonl")) is None
