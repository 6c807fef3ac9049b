"""trainer.deterministic: deterministic algorithms while training, and the settings restored after."""

import os

import pytest
import torch

from test_runner import TinyRunner, train
from torchexp.rng import deterministic_algorithms


@pytest.fixture
def no_cublas_setting(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)


def test_deterministic_algorithms_are_on_inside_and_restored_after(no_cublas_setting):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # set for the block only


def test_a_users_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_algorithms(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_disabled_changes_nothing(no_cublas_setting):
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


class RecordingRunner(TinyRunner):
    def train_step(self, batch, device):
        self.deterministic_seen = torch.are_deterministic_algorithms_enabled()
        return super().train_step(batch, device)


@pytest.mark.parametrize("deterministic", [True, False])
def test_training_follows_trainer_deterministic(tmp_path, no_cublas_setting, deterministic):
    runner = train(tmp_path, RecordingRunner, deterministic=deterministic)
    assert runner.deterministic_seen is deterministic
    assert not torch.are_deterministic_algorithms_enabled()
