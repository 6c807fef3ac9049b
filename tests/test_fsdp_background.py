"""Background saves (trainer.async_checkpoint) under FSDP on two Gloo ranks: rank 0 killed
in the background thread between the renames of a checkpoint's sidecar and its folder, and
every rank killed at a random moment, lose nothing, and the runs end bit-identical to a
synchronous one."""

import os
import random
import subprocess

import pytest

from conftest import assert_identical, kill_group_when
from fsdp_runs import ENV, command, init, load, published, run, train_straight


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-background")
    return root, train_straight(root)


def test_a_background_save_killed_in_flight_loses_nothing(straight):
    root, expected = straight
    init(root, "background", async_checkpoint=True)
    # Rank 0 dies in the background thread, in the 5th save (the standard checkpoint of
    # epoch 2), between the renames of its sidecar and its folder: training had gone on, and
    # that checkpoint never counts.
    died = run(root, "background", "train", "--max-epochs", "3", "--device", "cpu", env={"TORCHEXP_TEST_KILL_SAVE": "0:5:publish"}, check=False)
    assert died.returncode != 0
    assert published(root, "background") == ["1.checkpoint.dcp", "2.checkpoint.interrupt.dcp"]
    resumed = run(root, "background", "train", "--max-epochs", "3", "--device", "cpu")
    assert "removed 2.checkpoint.dcp.json, left by a save that was killed" in resumed.stderr
    assert "resumed from 2.checkpoint.interrupt.dcp: 1 epoch done; in epoch 2 after batch 6" in resumed.stderr
    # Training with background saves is training with synchronous ones, bit for bit.
    assert_identical(load(root, "background", "3.checkpoint.dcp"), expected)
    assert published(root, "background") == ["1.checkpoint.dcp", "2.checkpoint.dcp", "3.checkpoint.dcp"]


@pytest.mark.slow  # 20 s; the kill in flight above is the default suite's
def test_a_kill_of_every_rank_at_a_random_moment_with_background_saves_resumes_exactly(straight):
    root, expected = straight
    init(root, "random", async_checkpoint=True)
    process = subprocess.Popen(
        command(root, "random", "train", "--max-epochs", "3", "--device", "cpu"), env={**ENV, "TORCHEXP_TEST_STEP_SECONDS": "0.05"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    kill_group_when(process, lambda: bool(published(root, "random")), random.Random(os.getpid()).uniform(0, 0.6))
    run(root, "random", "train", "--max-epochs", "3", "--device", "cpu")
    assert_identical(load(root, "random", "3.checkpoint.dcp"), expected)
