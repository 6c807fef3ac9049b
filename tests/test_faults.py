"""Faults a trainer must survive: torn writes, corrupt checkpoints, a second trainer,
checkpoints crafted to run code, and a full disk.

Every test starts from a copy of one experiment trained 2 epochs in this process, and
drives the real command line with CliRunner.
"""

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner

from conftest import CONFIG, REPO, SCHEMA, read_line, write_mnist
from mnist_classifier.__main__ import cli
from torchexp import checkpoints, files, sidecar
from torchexp.sidecar import sidecar_path

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


@dataclass
class Lab:
    """A copy of the trained template experiment, and how to run the CLI on it."""

    data: str
    experiments: str
    name: str = "x"

    def invoke(self, *args: str, name: str | None = None):
        base = ["--experiments-path", self.experiments, "--data-path", self.data, "--experiment-name", name or self.name]
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.experiments, self.name, *parts)

    def checkpoint(self, epoch: int, kind: str = "standard") -> str:
        return self.path("checkpoints", checkpoints.make_filename(epoch, kind))

    def info(self, epoch: int, kind: str = "standard") -> checkpoints.Checkpoint:
        return checkpoints.find_checkpoint(self.path("checkpoints"), epoch, (kind,))


def assert_clean_error(result, exit_code: int, *fragments: str) -> None:
    """The command failed with one `Error:` sentence, the right exit code and no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in result.output and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def temporaries(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Lab:
    root = tmp_path_factory.mktemp("faults")
    lab = Lab(write_mnist(str(root / "data")), str(root / "experiments"))
    settings = ["--set", "model.name=mlp", "--set", "data.batch_size=16", "--set", "data.test_batch_size=20"]
    result = lab.invoke("init", "--config-path", CONFIG, "--schema-path", SCHEMA, *settings)
    assert result.exit_code == 0, result.output
    result = lab.invoke("train", "--max-epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return lab


@pytest.fixture
def lab(template, tmp_path) -> Lab:
    experiments = str(tmp_path / "experiments")
    shutil.copytree(template.experiments, experiments)
    return Lab(template.data, experiments)


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The SHA-256 of every file torch.load reads."""
    seen = []
    real_load = torch.load

    def load(file, *args, **kwargs):
        seen.append(sha256(file) if isinstance(file, (str, os.PathLike)) else "<stream>")
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return seen


# 1. Atomic, verified writes ------------------------------------------------------------


def test_every_file_the_framework_writes_is_fsynced_then_renamed_into_place(tmp_path, monkeypatch):
    """init, train, test and create_release: every file but the append-only logs is
    written to a temporary file in its own folder, fsynced, renamed, and the folder fsynced."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(source, target, **kwargs):
        events.append(("replace", os.path.realpath(source), os.path.realpath(target)))
        return real_replace(source, target, **kwargs)

    def rename(source, target, **kwargs):
        events.append(("rename", os.path.realpath(source), os.path.realpath(target)))
        return real_rename(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    lab = Lab(write_mnist(str(tmp_path / "data")), str(tmp_path / "experiments"))
    commands = [
        ["init", "--config-path", CONFIG, "--schema-path", SCHEMA, "--set", "model.name=mlp", "--set", "data.batch_size=16"],
        ["train", "--max-epochs", "2", "--device", "cpu"],
        ["test", "--epoch", "2", "--device", "cpu"],
        ["create_release", "--epoch", "2"],
    ]
    for args in commands:
        result = lab.invoke(*args)
        assert result.exit_code == 0, result.output

    # init builds the experiment in a staging folder, renamed into place whole.
    staged = {event[1]: event[2] for event in events if event[0] == "rename"}
    written = {}
    for index, event in enumerate(events):
        if event[0] != "replace":
            continue
        _, source, target = event
        folder = os.path.dirname(target)
        assert os.path.dirname(source) == folder, f"{target} was not written beside itself"
        assert ("fsync", source) in events[:index], f"{target} was renamed before it was fsynced"
        assert ("fsync", folder) in events[index + 1 :], f"the folder of {target} was not fsynced"
        for stage, final in staged.items():
            target = target.replace(stage, final)
        written[target] = True

    logs = {"metrics.jsonl", "provenance.jsonl", "verbose.log", ".lock"}  # appended logs, and the lock
    found = []
    for folder, _, names in os.walk(lab.path()):
        if os.path.basename(folder) == "tensorboard":
            continue  # TensorBoard's own event files
        found += [os.path.join(folder, name) for name in names if name not in logs]
    # config, data, 2 checkpoints and a release with their 3 records, 1 test report, the declared directions
    assert len(found) == 10, found
    for path in found:
        assert path in written, f"{os.path.relpath(path, lab.path())} was not written atomically"


def test_each_checkpoint_records_its_sha256_and_a_flipped_byte_is_refused(lab, loads):
    for epoch in (1, 2):
        info = lab.info(epoch)
        assert info.sidecar["sha256"] == sha256(info.path)
        assert info.sidecar["bytes"] == os.path.getsize(info.path)
    path = lab.checkpoint(2)
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        byte = file.read(1)
        file.seek(-1, io.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint 2\.checkpoint\.pt does not match its SHA-256"):
        lab.info(2).load()
    assert loads == []  # refused before torch read a byte of it


@pytest.mark.parametrize("code, fails", [(errno.EIO, True), (errno.EINVAL, False)])
def test_a_folder_sync_failure_is_reported_unless_the_file_system_cannot_sync_folders(tmp_path, monkeypatch, code, fails):
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = str(tmp_path / "file.json")
    if fails:
        with pytest.raises(files.StorageError, match=r"could not write .*file.json: Input/output error \(while syncing its folder\)"):
            files.write_json_atomic(path, {"a": 1})
    else:
        files.write_json_atomic(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1}  # the rename itself stands either way
    assert temporaries(str(tmp_path)) == []


# 2. Corruption detected and survived ---------------------------------------------------


def corrupt(path: str, how: str) -> str:
    """Damage a checkpoint (or its record) as a crash, a bad disk or a person might."""
    data = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "garbled":
        middle = len(data) // 2
        open(path, "wb").write(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :])
    elif how == "zero-byte":
        open(path, "wb").close()
    elif how == "record missing":
        os.remove(sidecar_path(path))
    elif how == "record garbled":
        open(sidecar_path(path), "wb").write(b'{"sha256": "\x00\xff')
    elif how == "record with another sha256":
        record = json.load(open(sidecar_path(path)))
        record["sha256"] = hashlib.sha256(b"another file").hexdigest()
        json.dump(record, open(sidecar_path(path), "w"))
    return sha256(path)


CORRUPTIONS = {
    "truncated": "truncated or replaced",
    "garbled": "does not match its SHA-256",
    "zero-byte": "is 0 bytes, but",
    "record missing": "has no valid sidecar",
    "record garbled": "has no valid sidecar",
    "record with another sha256": "does not match its SHA-256",
}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_train_skips_a_corrupt_newest_checkpoint_saying_which_and_why(lab, loads, how):
    original = torch.load(lab.checkpoint(2), weights_only=True)
    loads.clear()
    corrupt(lab.checkpoint(2), how)
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipping checkpoint 2.checkpoint.pt ")]
    assert len(skipped) == 1 and CORRUPTIONS[how] in skipped[0], result.output
    assert "resumed from 1.checkpoint.pt: 1 epoch done" in result.output
    assert loads == [sha256(lab.checkpoint(1))], "torch.load read something besides the checkpoint of epoch 1"
    # Epoch 2 trained again from epoch 1 gives back the checkpoint that was lost.
    retrained = lab.info(2).load()
    for key, tensor in original["model"].items():
        assert torch.equal(retrained["model"][key], tensor), key
    lab.info(3).load()


def test_train_says_so_when_no_checkpoint_verifies(lab):
    for epoch in (1, 2):
        corrupt(lab.checkpoint(epoch), "truncated")
    result = lab.invoke("train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint 2.checkpoint.pt" in result.output and "skipping checkpoint 1.checkpoint.pt" in result.output
    assert "no checkpoint to resume from: training from scratch" in result.output
    lab.info(1).load()


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "record missing"])
def test_commands_naming_a_corrupt_checkpoint_refuse_it(lab, loads, how):
    bad = corrupt(lab.checkpoint(2), how)
    results = sorted(os.listdir(lab.path("results")))
    assert_clean_error(lab.invoke("test", "--epoch", "2", "--device", "cpu"), 4, "Error: checkpoint 2.checkpoint.pt", CORRUPTIONS[how])
    assert_clean_error(lab.invoke("create_release", "--epoch", "2"), 4, "Error: checkpoint 2.checkpoint.pt")
    assert_clean_error(lab.invoke("train", "--epoch", "2", "--max-epochs", "3", "--device", "cpu"), 4, "checkpoint 2.checkpoint.pt")
    assert sorted(os.listdir(lab.path("results"))) == results
    assert not os.path.exists(lab.checkpoint(2, "release"))
    assert bad not in loads


def test_a_verified_checkpoint_without_training_state_is_refused_by_name(lab):
    state = torch.load(lab.checkpoint(2), weights_only=True)
    del state["optimizer"]
    checkpoints.save_checkpoint(lab.path("checkpoints"), 3, "standard", state, {"iteration": 0})
    result = lab.invoke("train", "--max-epochs", "4", "--device", "cpu")
    assert_clean_error(result, 4, "checkpoint 3.checkpoint.pt does not fit this runner")
    assert not os.path.exists(lab.checkpoint(4))


# 6. One trainer per experiment ---------------------------------------------------------

HOLD_LOCK = """
import sys
from torchexp.folder import Experiment
with Experiment(sys.argv[1], sys.argv[2]).lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(lab):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, lab.experiments, lab.name], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert read_line(holder.stdout, 60) == "locked\n"
        before = sorted(os.listdir(lab.path("checkpoints")))
        result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
        assert_clean_error(result, 7, f"experiment 'x' is in use by process {holder.pid}")
        assert sorted(os.listdir(lab.path("checkpoints"))) == before
    finally:
        holder.kill()  # SIGKILL: no chance to clean up, as after a crash
        holder.wait()
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lab.info(3).load()


def test_a_lock_file_naming_a_dead_process_does_not_block(lab):
    with open(lab.path(".lock"), "w") as file:
        file.write("999999999")
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output


# 7. No code runs on load ---------------------------------------------------------------


class Payload:
    """Unpickled, it creates `marker`: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def craft(path: str, marker: str, form: str) -> None:
    """Write a checkpoint that runs code when unpickled, with a matching SHA-256 record."""
    state = {"format": 1, "model": Payload(marker), "counters": {"epoch": 3, "iteration": 0, "step": 15}}
    if form == "zip":
        torch.save(state, path)
    elif form == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as file:
            pickle.dump(state, file)
    epoch, kind = checkpoints.parse_filename(os.path.basename(path))
    record = {"epoch": epoch, "kind": kind, "sha256": sha256(path), "bytes": os.path.getsize(path), "iteration": 0}
    files.write_json_atomic(sidecar_path(path), record)


FORMS = ["zip", "legacy", "raw pickle"]


@pytest.mark.parametrize("form", FORMS)
def test_the_crafted_checkpoint_does_run_code_when_unpickled(tmp_path, form):
    """Guards the next test: its files would run code under a plain unpickler."""
    marker = str(tmp_path / "marker")
    craft(str(tmp_path / "3.checkpoint.pt"), marker, form)
    try:
        torch.load(str(tmp_path / "3.checkpoint.pt"), weights_only=False)
    except Exception:  # the raw pickle is no torch file; the payload ran before that was found
        pass
    assert os.path.exists(marker)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("form", FORMS)
def test_train_test_and_create_release_refuse_a_checkpoint_that_would_run_code(lab, tmp_path, form):
    marker = str(tmp_path / "marker")
    craft(lab.checkpoint(3), marker, form)
    craft(lab.checkpoint(4, "release"), marker, form)
    lab.info(3).verify()  # only weights_only stands in the way
    results = sorted(os.listdir(lab.path("results")))
    unsafe = "Error: checkpoint 3.checkpoint.pt cannot be loaded safely"
    assert_clean_error(lab.invoke("train", "--max-epochs", "5", "--device", "cpu"), 4, unsafe)
    assert_clean_error(lab.invoke("train", "--epoch", "3", "--max-epochs", "5", "--device", "cpu"), 4, unsafe)
    assert_clean_error(lab.invoke("test", "--epoch", "3", "--device", "cpu"), 4, unsafe)
    assert_clean_error(lab.invoke("test", "--device", "cpu"), 4, "Error: checkpoint 4.checkpoint.release.pt cannot be loaded safely")
    assert_clean_error(lab.invoke("create_release", "--epoch", "3"), 4, unsafe)
    assert not os.path.exists(marker), "the checkpoint's code ran"
    assert sorted(os.listdir(lab.path("results"))) == results
    assert not os.path.exists(lab.checkpoint(3, "release")) and not os.path.exists(lab.checkpoint(5))


# 9. Disk full --------------------------------------------------------------------------


class FillingFile:
    """A file that accepts `room` bytes, then fails like a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self.room:
            raise OSError(errno.ENOSPC, NO_SPACE)
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def limit_every_file(monkeypatch, room: int) -> None:
    """Give each file opened with os.fdopen (as write_atomic does) `room` bytes of disk."""
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FillingFile(real_fdopen(fd, *args, **kwargs), room))


def fill_disk(monkeypatch, where: str) -> None:
    """Make the next checkpoint save fail with ENOSPC at `where`."""
    if where == "torch.save":

        def save(obj, file, *args, **kwargs):
            raise OSError(errno.ENOSPC, NO_SPACE)

        monkeypatch.setattr(torch, "save", save)
    elif where == "mid-checkpoint":
        limit_every_file(monkeypatch, 1 << 20)  # records fit, checkpoints do not
    else:  # the record, once the checkpoint's bytes are written
        real_write = sidecar.write_temporary

        def write(path, write_bytes):
            if path.endswith(".pt.json"):
                return real_write(path, lambda file: write_bytes(FillingFile(file, room=10)))
            return real_write(path, write_bytes)

        monkeypatch.setattr(sidecar, "write_temporary", write)


@pytest.mark.parametrize("where", ["torch.save", "mid-checkpoint", "record"])
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one_and_says_so(lab, monkeypatch, where):
    fill_disk(monkeypatch, where)
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    failed = "3.checkpoint.pt.json" if where == "record" else "3.checkpoint.pt"
    assert_clean_error(result, 8, f"{failed}: {NO_SPACE}", "Error: could not write")
    folder = lab.path("checkpoints")
    assert temporaries(folder) == []
    for epoch in (1, 2):
        lab.info(epoch).load()
    monkeypatch.undo()
    # Space is back: training resumes from epoch 2 (skipping an unrecorded 3, if any).
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "resumed from 2.checkpoint.pt" in result.output
    lab.info(3).load()


def test_a_full_disk_during_an_interrupt_save_keeps_the_last_checkpoint(lab, monkeypatch):
    from mnist_classifier.runner import MNISTClassifierRunner

    real_step = MNISTClassifierRunner.train_step

    def step_then_ctrl_c(self, batch, device):
        if self.counters["iteration"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch, device)

    monkeypatch.setattr(MNISTClassifierRunner, "train_step", step_then_ctrl_c)
    fill_disk(monkeypatch, "mid-checkpoint")
    result = lab.invoke("train", "--max-epochs", "3", "--device", "cpu")
    assert_clean_error(result, 8, f"3.checkpoint.interrupt.pt: {NO_SPACE}")
    assert temporaries(lab.path("checkpoints")) == []
    assert not os.path.exists(lab.checkpoint(3, "interrupt"))
    lab.info(2).load()


def test_a_full_disk_during_init_leaves_no_experiment(lab, monkeypatch):
    limit_every_file(monkeypatch, 10)
    result = lab.invoke("init", "--config-path", CONFIG, "--schema-path", SCHEMA, name="y")
    assert_clean_error(result, 8, NO_SPACE)
    assert sorted(os.listdir(lab.experiments)) == ["x"]


def test_a_full_disk_while_writing_test_results_leaves_no_report(lab, monkeypatch):
    limit_every_file(monkeypatch, 10)
    result = lab.invoke("test", "--epoch", "2", "--device", "cpu")
    assert_clean_error(result, 8, f"2.standard.test.json: {NO_SPACE}")
    assert os.listdir(lab.path("results")) == []
