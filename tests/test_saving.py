"""Background saves (trainer.async_checkpoint) in one process: training goes on while a
checkpoint is written, one save at a time, `train` returns once the last is whole, a
failure in the background is said, and the checkpoints equal synchronous ones bit for bit."""

import json
import threading
import time

import pytest
import torch
from click.testing import CliRunner

import fsdp_project
from conftest import assert_identical
from torchexp import checkpoints, sidecar
from torchexp.errors import StorageError
from torchexp.saving import CheckpointSaver, copy_tensors


def invoke(root, name: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(fsdp_project.cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", name, *args])
    assert result.exit_code == code, result.output
    return result.output


def init(root, name: str, **trainer) -> None:
    (root / "schema.json").write_text('{"type": "object"}')
    (root / f"{name}.json").write_text(json.dumps({"trainer": {"checkpoint_every_steps": 5, **trainer}}))
    invoke(root, name, "init", "--config-path", str(root / f"{name}.json"), "--schema-path", str(root / "schema.json"))


def final_state(root, name: str) -> dict:
    return checkpoints.list_checkpoints(str(root / "experiments" / name / "checkpoints"), ("standard",))[-1].load()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_background_saves_overlap_training_one_at_a_time_and_equal_synchronous_ones(tmp_path, monkeypatch, strategy):
    init(tmp_path, "sync", strategy=strategy)
    invoke(tmp_path, "sync", "train", "--max-epochs", "3", "--device", "cpu")
    init(tmp_path, "async", strategy=strategy, async_checkpoint=True)
    writes: list[tuple[float, float, str]] = []
    steps: list[float] = []
    run = CheckpointSaver.run

    def slowly(saver, write, kind):
        started = time.monotonic()
        assert threading.current_thread() is not threading.main_thread()
        time.sleep(0.15)
        run(saver, write, kind)
        writes.append((started, time.monotonic(), saver.name))

    monkeypatch.setattr(CheckpointSaver, "run", slowly)
    train_step = fsdp_project.ProjectRunner.train_step
    monkeypatch.setattr(fsdp_project.ProjectRunner, "train_step", lambda self, batch, device: (steps.append(time.monotonic()), train_step(self, batch, device))[1])
    invoke(tmp_path, "async", "train", "--max-epochs", "3", "--device", "cpu")

    assert len(writes) == 10  # 3 epoch ends, and mid-epoch checkpoints at steps 5, 10, ... 35 of 36
    assert all(first[1] <= second[0] for first, second in zip(writes, writes[1:])), "two saves were in flight at once"
    assert any(start < step < end for start, end, _ in writes for step in steps), "training waited for every write"
    assert writes[-1][2].endswith(("3.checkpoint.pt", "3.checkpoint.dcp"))  # written before train returned
    assert_identical(final_state(tmp_path, "async"), final_state(tmp_path, "sync"))


def test_a_failed_background_write_is_said_in_one_sentence_and_the_checkpoint_never_counts(tmp_path, monkeypatch):
    init(tmp_path, "x", async_checkpoint=True, checkpoint_every_steps=None)

    def refuse(path, *args):
        if path.endswith("2.checkpoint.pt"):
            raise StorageError(f"could not write {path}: No space left on device")
        return write(path, *args)

    write = sidecar.write_with_sidecar
    monkeypatch.setattr(sidecar, "write_with_sidecar", refuse)
    output = invoke(tmp_path, "x", "train", "--max-epochs", "3", "--device", "cpu", code=8)
    assert "2.checkpoint.pt: No space left on device" in output and "Traceback" not in output
    names = [item.name for item in checkpoints.list_checkpoints(str(tmp_path / "experiments" / "x" / "checkpoints"))]
    assert names == ["1.checkpoint.pt"]


def test_a_copy_for_the_background_shares_no_memory_with_training():
    weights = torch.ones(3)
    state = {"model": {"w": weights}, "history": [{"loss": 1.0}], "pair": (weights, 2)}
    copied = copy_tensors(state)
    weights.add_(1)
    assert copied["model"]["w"].tolist() == [1.0, 1.0, 1.0] and copied["pair"][0].tolist() == [1.0, 1.0, 1.0]
    assert copied["history"] == [{"loss": 1.0}] and copied["pair"][1] == 2
