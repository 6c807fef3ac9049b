"""trainer.strategy fsdp under torchrun, two Gloo processes on the CPU: FSDP2 training,
sharded checkpoints that survive kills of any rank mid-save and mid-epoch, resumes on
another number of processes, and single-file releases that serve and export."""

import json
import os
import shutil

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import assert_identical
from fsdp_runs import folder, init, invoke, load, published, run, train_straight
from torchexp import Experiments
from torchexp.folder import Experiment
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app

SAMPLE = [0.25] * 16


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An FSDP experiment trained 3 epochs without a stop, its final checkpoint loaded whole."""
    root = tmp_path_factory.mktemp("fsdp")
    return root, train_straight(root)


def test_fsdp_shards_every_state_and_writes_one_folder_of_shards_per_checkpoint(straight):
    root, state = straight
    assert published(root, "straight") == ["1.checkpoint.dcp", "2.checkpoint.dcp", "3.checkpoint.dcp"]
    files = sorted(os.listdir(folder(root, "straight") / "3.checkpoint.dcp"))
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    sidecar = json.loads((folder(root, "straight") / "3.checkpoint.dcp.json").read_text())
    assert sorted(sidecar["files"]) == files and sidecar["strategy"] == "fsdp"
    assert sidecar["bytes"] == sum(os.path.getsize(folder(root, "straight") / "3.checkpoint.dcp" / name) for name in files)
    # The whole model and AdamW state, gathered from both ranks' shards.
    assert state["model"]["blocks.0.linear.weight"].shape == (16, 16) and state["model"]["head.weight"].shape == (2, 16)
    assert set(state["optimizer"]["state"]["head.weight"]) == {"exp_avg", "exp_avg_sq", "step"}
    assert state["counters"] == {"epoch": 3, "iteration": 0, "step": 9} and state["world_size"] == 2
    assert state["history"]["validation"][-1]["loss"] < state["history"]["validation"][0]["loss"]


def test_a_rank_killed_mid_save_resumes_mid_epoch_bit_identically_and_verifies(straight):
    root, expected = straight
    init(root, "killed")
    # Rank 1 dies once its shards of the 4th save (the mid-epoch checkpoint of step 6) are
    # written: the checkpoint of step 4, in the middle of epoch 2, is the one to resume from.
    # (Rank 0 killed between the renames of its sidecar and its folder: test_fsdp_background.)
    died = run(root, "killed", "train", "--max-epochs", "3", "--device", "cpu", env={"TORCHEXP_TEST_KILL_SAVE": "1:4:shards"}, check=False)
    assert died.returncode != 0
    assert published(root, "killed") == ["1.checkpoint.dcp", "2.checkpoint.interrupt.dcp"]
    assert any(name.endswith(".tmp") for name in os.listdir(folder(root, "killed")))
    finished = run(root, "killed", "train", "--max-epochs", "3", "--device", "cpu")
    assert "resumed from 2.checkpoint.interrupt.dcp: 1 epoch done; in epoch 2 after batch 2" in finished.stderr
    assert "left by a save that was killed" in finished.stderr
    assert not [name for name in os.listdir(folder(root, "killed")) if name.startswith(".")]
    assert_identical(load(root, "killed", "3.checkpoint.dcp"), expected)

    verified = run(root, "killed", "verify")  # epoch 3, from the standard checkpoint of epoch 2
    assert "epoch 3: bit-identical" in verified.stdout, verified.stdout


def test_another_number_of_processes_resumes_resharded_and_says_it_is_not_bit_identical(straight, tmp_path):
    root, _ = straight
    shutil.copytree(root / "experiments" / "straight", tmp_path / "experiments" / "two")
    one = invoke(tmp_path, "two", "train", "--max-epochs", "4", "--device", "cpu")
    sentence = "checkpoint saved by 2 processes, resumed by 1 process: training goes on, but the data order changes and the run is no longer bit-identical to a straight one, which holds only for the same number of processes"
    assert sentence in one
    state = load(tmp_path, "two", "4.checkpoint.dcp")
    assert state["world_size"] == 1 and state["counters"]["step"] == 15  # 6 steps an epoch in one process
    back = run(tmp_path, "two", "train", "--max-epochs", "5", "--device", "cpu")
    assert "checkpoint saved by 1 process, resumed by 2 processes: training goes on, but the data order changes" in back.stderr
    final = load(tmp_path, "two", "5.checkpoint.dcp")
    assert final["world_size"] == 2 and final["history"]["validation"][-1]["loss"] < final["history"]["validation"][0]["loss"]
    refused = invoke(tmp_path, "two", "verify", "--epoch", "5", code=4)
    assert "checkpoint 5.checkpoint.dcp was trained by 2 processes, and 1 verify it: verify it under torchrun --nproc-per-node 2" in refused


def test_a_release_of_an_fsdp_run_is_one_file_that_tests_serves_and_exports(straight, tmp_path):
    root, expected = straight
    shutil.copytree(root / "experiments" / "straight", tmp_path / "experiments" / "x")
    assert "3.checkpoint.release.pt" in invoke(tmp_path, "x", "create_release", "--epoch", "3")
    release = torch.load(folder(tmp_path, "x") / "3.checkpoint.release.pt", weights_only=True)
    assert_identical(release["model"], expected["model"])
    invoke(tmp_path, "x", "test", "--epoch", "3")
    for format in ("onnx", "safetensors"):
        assert f"3.release.{format}" in invoke(tmp_path, "x", "export", "--format", format, "--check-samples", "10")
    with TestClient(make_app(Experiment(str(tmp_path / "experiments"), "x"), ServeOptions(device="cpu", threads=1))) as client:
        answer = client.post("/v1/models/x:predict", json={"instances": [SAMPLE]})
    assert answer.status_code == 200, answer.text
    model = Experiments(str(tmp_path / "experiments"))["x"].load_model("release")
    assert_identical(model.state_dict(), expected["model"])
    with torch.no_grad():
        assert answer.json()["predictions"][0] == pytest.approx(model(torch.tensor([SAMPLE])).tolist()[0], abs=1e-6)
