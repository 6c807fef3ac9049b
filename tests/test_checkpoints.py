"""Checkpoint files: names, saves, verification, lookups and trusted loads."""

import hashlib
import json
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchexp.checkpoints import (
    KINDS,
    Checkpoint,
    describe_epochs,
    find_checkpoint,
    find_resume_checkpoint,
    find_training_checkpoint,
    list_checkpoints,
    make_filename,
    parse_filename,
    save_checkpoint,
)
from torchexp.errors import CheckpointError
from torchexp.sidecar import sidecar_path

STATE = {"model": {"weight": torch.arange(6.0).reshape(2, 3)}, "counters": {"epoch": 1}, "name": "x", "values": [1.5, None]}


def save(folder, epoch: int, kind: str = "standard", summary: dict | None = None) -> Checkpoint:
    path = save_checkpoint(str(folder), epoch, kind, {**STATE, "epoch": epoch}, summary or {"metrics": {"loss": 0.5}})
    return next(info for info in list_checkpoints(str(folder)) if info.path == path)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(KINDS))
def test_filename_round_trips(epoch, kind):
    assert parse_filename(make_filename(epoch, kind)) == (epoch, kind)


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("3.checkpoint.pt", (3, "standard")),
        ("12.checkpoint.release.pt", (12, "release")),
        ("4.checkpoint.interrupt.pt", (4, "interrupt")),
        ("3.checkpoint.pt.json", None),
        (".3.checkpoint.pt.abc.tmp", None),
        ("03.checkpoint.pt", None),  # make_filename never writes it
        ("3.checkpoint.other.pt", None),
        ("x.checkpoint.pt", None),
        ("-1.checkpoint.pt", None),
    ],
)
def test_parse_filename_accepts_only_names_make_filename_writes(name, parsed):
    assert parse_filename(name) == parsed


def test_make_filename_refuses_unknown_kinds():
    with pytest.raises(ValueError, match=r"checkpoint kind must be one of .* not 'best'"):
        make_filename(1, "best")


def test_list_checkpoints_orders_by_epoch_numerically_then_kind(tmp_path):
    for name in ["10.checkpoint.pt", "2.checkpoint.release.pt", "2.checkpoint.pt", "3.checkpoint.interrupt.pt", "1.checkpoint.pt", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    found = [(info.epoch, info.kind) for info in list_checkpoints(str(tmp_path))]
    assert found == [(1, "standard"), (2, "standard"), (2, "release"), (3, "interrupt"), (10, "standard")]
    assert [info.epoch for info in list_checkpoints(str(tmp_path), ("release",))] == [2]
    assert list_checkpoints(str(tmp_path / "missing")) == []


@pytest.mark.parametrize(
    "epochs, text", [([], "none"), ([1], "1"), ([1, 2, 3], "1-3"), ([1, 2, 3, 5, 7, 8], "1-3, 5, 7-8"), ([2, 2, 3], "2-3")]
)
def test_describe_epochs_is_compact(epochs, text):
    assert describe_epochs([Checkpoint(epoch, "standard", "", None) for epoch in epochs]) == text


def test_save_writes_the_checkpoint_and_its_record(tmp_path):
    info = save(tmp_path, 2, summary={"metrics": {"train": {"loss": 0.25}}, "iteration": 0})
    assert sorted(os.listdir(tmp_path)) == ["2.checkpoint.pt", "2.checkpoint.pt.json"]
    with open(tmp_path / "2.checkpoint.pt.json") as file:
        record = json.load(file)
    with open(info.path, "rb") as file:
        data = file.read()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["bytes"] == len(data)
    assert record["epoch"] == 2 and record["kind"] == "standard"
    assert record["metrics"] == {"train": {"loss": 0.25}}
    assert info.sidecar == record


def test_save_then_load_returns_the_same_state(tmp_path):
    state = save(tmp_path, 1).load()
    assert torch.equal(state["model"]["weight"], STATE["model"]["weight"])
    assert state["counters"] == {"epoch": 1} and state["values"] == [1.5, None] and state["epoch"] == 1


def test_save_replaces_an_existing_checkpoint_and_record(tmp_path):
    save(tmp_path, 1, summary={"metrics": {"loss": 1.0}})
    info = save(tmp_path, 1, summary={"metrics": {"loss": 0.1}})
    info.verify()
    assert info.sidecar["metrics"] == {"loss": 0.1}
    assert sorted(os.listdir(tmp_path)) == ["1.checkpoint.pt", "1.checkpoint.pt.json"]


def test_verify_accepts_an_intact_checkpoint(tmp_path):
    save(tmp_path, 1).verify()


def test_verify_detects_a_truncated_checkpoint(tmp_path):
    info = save(tmp_path, 1)
    size = os.path.getsize(info.path)
    os.truncate(info.path, size // 2)
    with pytest.raises(CheckpointError, match=rf"checkpoint 1.checkpoint.pt is {size // 2} bytes, but {size} were written \(truncated or replaced\)"):
        info.verify()


def test_verify_detects_a_flipped_byte(tmp_path):
    info = save(tmp_path, 1)
    with open(info.path, "r+b") as file:
        file.seek(os.path.getsize(info.path) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt does not match its SHA-256 \(corrupted\)"):
        info.verify()
    with pytest.raises(CheckpointError, match=r"SHA-256"):
        info.load()


def test_verify_detects_a_zero_byte_checkpoint(tmp_path):
    info = save(tmp_path, 1)
    open(info.path, "wb").close()
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt is 0 bytes, but \d+ were written"):
        info.verify()


def test_verify_detects_a_missing_record(tmp_path):
    save(tmp_path, 1)
    os.remove(tmp_path / "1.checkpoint.pt.json")
    (info,) = list_checkpoints(str(tmp_path))
    assert info.sidecar is None
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt has no valid sidecar 1.checkpoint.pt.json"):
        info.verify()


def test_verify_detects_a_garbled_record(tmp_path):
    save(tmp_path, 1)
    (tmp_path / "1.checkpoint.pt.json").write_text("{not json")
    (info,) = list_checkpoints(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"has no valid sidecar"):
        info.verify()


def test_find_checkpoint_prefers_kinds_in_order(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 1, "release")
    assert find_checkpoint(str(tmp_path), 1, ("standard", "release")).kind == "standard"
    assert find_checkpoint(str(tmp_path), 1, ("release", "standard")).kind == "release"


def test_find_checkpoint_lists_the_available_epochs(tmp_path):
    for epoch in (1, 2, 3):
        save(tmp_path, epoch)
    with pytest.raises(CheckpointError, match=rf"epoch 7 has no standard or release checkpoint in {tmp_path} \(available: 1-3\)"):
        find_checkpoint(str(tmp_path), 7, ("standard", "release"))


@pytest.mark.parametrize("epoch", [0, -2])
def test_find_checkpoint_refuses_epochs_below_one(tmp_path, epoch):
    with pytest.raises(CheckpointError, match=rf"epoch {epoch} is not valid: epochs count from 1"):
        find_checkpoint(str(tmp_path), epoch, ("standard",))


def test_find_training_checkpoint_lists_standard_epochs_and_explains_release_only(tmp_path):
    for epoch in (1, 2, 3):
        save(tmp_path, epoch)
    save(tmp_path, 5, "release")
    assert find_training_checkpoint(str(tmp_path), 2).epoch == 2
    with pytest.raises(CheckpointError, match=r"epoch 7 has no standard checkpoint in .* \(available: 1-3\)"):
        find_training_checkpoint(str(tmp_path), 7)
    with pytest.raises(CheckpointError, match=r"epoch 5 has only a release checkpoint, which holds weights but no training state \(standard checkpoints: 1-3\)"):
        find_training_checkpoint(str(tmp_path), 5)


def test_find_resume_checkpoint_returns_the_furthest_that_verifies(tmp_path):
    for epoch in (1, 2):
        save(tmp_path, epoch)
    save(tmp_path, 3, "interrupt", {"iteration": 4})
    save(tmp_path, 2, "release")
    info, skipped = find_resume_checkpoint(str(tmp_path))
    assert (info.epoch, info.kind, skipped) == (3, "interrupt", [])


def test_find_resume_checkpoint_orders_interrupts_by_iteration(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 2, "interrupt", {"iteration": 5})  # part way through epoch 2: behind 2.checkpoint.pt
    info, _ = find_resume_checkpoint(str(tmp_path))
    assert (info.epoch, info.kind) == (2, "standard")


def test_find_resume_checkpoint_skips_a_corrupt_newest_one_with_its_reason(tmp_path):
    for epoch in (1, 2, 3):
        save(tmp_path, epoch)
    os.truncate(tmp_path / "3.checkpoint.pt", 10)
    info, skipped = find_resume_checkpoint(str(tmp_path))
    assert info.epoch == 2
    assert [(bad.epoch, reason) for bad, reason in skipped] == [
        (3, f"checkpoint 3.checkpoint.pt is 10 bytes, but {skipped[0][0].sidecar['bytes']} were written (truncated or replaced)")
    ]


def test_find_resume_checkpoint_returns_none_when_nothing_verifies(tmp_path):
    save(tmp_path, 1)
    os.remove(tmp_path / "1.checkpoint.pt.json")
    info, skipped = find_resume_checkpoint(str(tmp_path))
    assert info is None and len(skipped) == 1
    assert find_resume_checkpoint(str(tmp_path / "empty")) == (None, [])


class Custom:
    """A class of the test module: unpickling it would import and run project code."""

    def __init__(self):
        self.value = 1


def test_load_refuses_a_checkpoint_holding_a_pickled_object(tmp_path):
    # Written by hand, with a valid record, so that only the weights_only load can refuse it.
    path = tmp_path / "1.checkpoint.pt"
    torch.save({"model": {}, "extra": Custom()}, path)
    with open(sidecar_path(str(path)), "w") as file:
        json.dump({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}, file)
    (info,) = list_checkpoints(str(tmp_path))
    info.verify()
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt cannot be loaded safely: Weights only load failed"):
        info.load()


def test_load_refuses_a_checkpoint_that_is_not_a_dictionary(tmp_path):
    path = tmp_path / "1.checkpoint.pt"
    torch.save([torch.zeros(1)], path)
    with open(sidecar_path(str(path)), "w") as file:
        json.dump({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}, file)
    (info,) = list_checkpoints(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt does not hold a state dictionary"):
        info.load()


def test_load_reports_a_file_that_verifies_but_is_not_a_torch_file(tmp_path):
    path = tmp_path / "1.checkpoint.pt"
    path.write_bytes(b"plain text, not a checkpoint")
    with open(sidecar_path(str(path)), "w") as file:
        json.dump({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}, file)
    (info,) = list_checkpoints(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"checkpoint 1.checkpoint.pt cannot be loaded safely"):
        info.load()


def test_resuming_hashes_the_chosen_checkpoint_once(tmp_path, monkeypatch):
    import torchexp.sidecar as module

    save(tmp_path, 1)
    hashed = []
    real_hash = module.hash_file
    monkeypatch.setattr(module, "hash_file", lambda path: hashed.append(path) or real_hash(path))
    info, skipped = find_resume_checkpoint(str(tmp_path))
    assert skipped == [] and info.load()["epoch"] == 1
    assert hashed == [info.path]
