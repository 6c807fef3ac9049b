"""The experiment folder: names, creation, reading and the lock."""

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest
from conftest import read_line, snapshot

from torchexp import locks
from torchexp.errors import ExperimentError, LockError
from torchexp.folder import MAX_NAME_LENGTH, Experiment, validate_name

RECORD = {"seed": 3, "versions": {"torchexp": "0"}, "config": {"a": 1}}
DATA_STATE = {"validation_indexes": [1, 2]}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def created(tmp_path, name: str = "x") -> Experiment:
    experiment = Experiment(str(tmp_path / "experiments"), name)
    experiment.create(RECORD, DATA_STATE)
    return experiment


@pytest.mark.parametrize("name", ["x", "mnist-1", "run_2.b", "A" * MAX_NAME_LENGTH, "0"])
def test_validate_name_accepts_single_safe_folder_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("../x", r"experiment name '\.\./x' is not allowed"),
        ("/abs", r"experiment name '/abs' is not allowed"),
        ("a/b", r"experiment name 'a/b' is not allowed"),
        ("", r"no experiment name given: pass --experiment-name NAME"),
        (None, r"no experiment name given"),
        ("a" * 200, rf"experiment name is 200 characters long, more than the {MAX_NAME_LENGTH} allowed"),
        ("a\nb", r"experiment name 'a\\nb' is not allowed"),
        ("a\x00b", r"experiment name 'a\\x00b' is not allowed"),
        (".", r"experiment name '\.' is not allowed"),
        ("..", r"experiment name '\.\.' is not allowed"),
        (".hidden", r"experiment name '\.hidden' is not allowed"),
        ("-rf", r"experiment name '-rf' is not allowed"),
        ("a b", r"experiment name 'a b' is not allowed"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_created(tmp_path, name, message):
    with pytest.raises(ExperimentError, match=message):
        Experiment(str(tmp_path / "experiments"), name).create(RECORD, DATA_STATE)
    assert os.listdir(tmp_path) == []


def test_create_writes_the_layout_and_the_json_files(tmp_path):
    experiment = created(tmp_path)
    assert experiment.path == str(tmp_path / "experiments" / "x")
    assert sorted(os.listdir(experiment.path)) == ["checkpoints", "config.json", "data.json", "results", "tensorboard"]
    assert experiment.exists()
    assert experiment.read_definition() == RECORD
    assert experiment.read_data_state() == DATA_STATE
    with open(experiment.config_path) as file:
        assert json.load(file) == RECORD
    # No staging folder is left beside it.
    assert os.listdir(tmp_path / "experiments") == ["x"]


def test_create_refuses_an_existing_experiment_and_leaves_it_untouched(tmp_path):
    experiment = created(tmp_path)
    (tmp_path / "experiments" / "x" / "verbose.log").write_text("history\n")
    before = snapshot(tmp_path)
    with pytest.raises(ExperimentError, match=r"experiment 'x' already exists in .*experiments; choose another name"):
        Experiment(str(tmp_path / "experiments"), "x").create({"seed": 9}, {})
    assert snapshot(tmp_path) == before
    assert experiment.read_definition() == RECORD


def test_create_refuses_a_name_taken_by_a_plain_file(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "x").write_text("mine")
    with pytest.raises(ExperimentError, match=r"experiment 'x' already exists"):
        created(tmp_path)
    assert (tmp_path / "experiments" / "x").read_text() == "mine"


def test_create_refuses_an_experiments_path_that_is_a_file(tmp_path):
    (tmp_path / "experiments").write_text("not a folder")
    with pytest.raises(ExperimentError, match=r"experiments path .*experiments is a file, not a folder"):
        created(tmp_path)


def test_create_leaves_nothing_when_a_write_fails(tmp_path):
    with pytest.raises(TypeError, match=r"^Object of type object is not JSON serializable$"):
        Experiment(str(tmp_path / "experiments"), "x").create({"not json": object()}, {})
    assert os.listdir(tmp_path / "experiments") == []


def test_create_in_an_unusable_experiments_path_is_an_experiment_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ExperimentError, match=r"experiments path .*experiments is not usable: Read-only file system"):
        created(tmp_path)


def test_create_failing_midway_is_an_experiment_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(ExperimentError, match=r"experiment 'x' could not be created in .*experiments: No space left on device"):
        created(tmp_path)
    assert os.listdir(tmp_path / "experiments") == []


def test_create_refuses_a_folder_made_under_its_name_meanwhile(tmp_path, monkeypatch):
    experiment = Experiment(str(tmp_path / "experiments"), "x")
    monkeypatch.setattr(experiment, "check_free", lambda: os.makedirs(experiment.path))  # another process wins the race
    with pytest.raises(ExperimentError, match=r"experiment 'x' already exists"):
        experiment.create(RECORD, DATA_STATE)
    assert os.listdir(experiment.path) == []


def test_reading_a_missing_experiment_names_it(tmp_path):
    experiment = Experiment(str(tmp_path / "experiments"), "ghost")
    assert not experiment.exists()
    with pytest.raises(ExperimentError, match=r"experiment 'ghost' does not exist in .*experiments: create it with init"):
        experiment.read_definition()


def test_lock_is_held_and_records_the_pid(tmp_path):
    experiment = created(tmp_path)
    with experiment.lock():
        with open(experiment.lock_path) as file:
            assert file.read() == str(os.getpid())


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    experiment = created(tmp_path)
    with experiment.lock():
        with pytest.raises(LockError, match=rf"experiment 'x' is in use by process {os.getpid()}"):
            with Experiment(experiment.experiments_path, "x").lock():
                pass
    with experiment.lock():  # released on exit
        pass


HOLD_LOCK = """
import sys, time
from torchexp.folder import Experiment
with Experiment(sys.argv[1], "x").lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def start_holder(experiment: Experiment) -> subprocess.Popen:
    """Start a process that holds the experiment's lock; return once it does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, experiment.experiments_path], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert read_line(holder.stdout, 60).strip() == "locked"
    return holder


def test_lock_refuses_while_another_process_holds_it_and_names_that_process(tmp_path):
    experiment = created(tmp_path)
    holder = start_holder(experiment)
    try:
        with pytest.raises(LockError, match=rf"experiment 'x' is in use by process {holder.pid}; wait for it or stop it"):
            with experiment.lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with experiment.lock():  # the kernel released the dead holder's lock
        with open(experiment.lock_path) as file:
            assert file.read() == str(os.getpid())


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    experiment = created(tmp_path)
    holder = start_holder(experiment)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with open(experiment.lock_path) as file:
        assert file.read() == str(holder.pid)  # the dead process's pid is still written
    with experiment.lock():
        with open(experiment.lock_path) as file:
            assert file.read() == str(os.getpid())


def test_lock_file_with_a_stale_longer_pid_is_rewritten_whole(tmp_path):
    experiment = created(tmp_path)
    with open(experiment.lock_path, "w") as file:
        file.write("123456789012")
    with experiment.lock():
        with open(experiment.lock_path) as file:
            assert file.read() == str(os.getpid())


def test_lock_of_a_missing_experiment_is_refused_and_creates_nothing(tmp_path):
    with pytest.raises(ExperimentError, match=r"experiment 'ghost' does not exist"):
        with Experiment(str(tmp_path / "experiments"), "ghost").lock():
            pass
    assert os.listdir(tmp_path) == []


def test_a_refused_lock_fails_at_once_instead_of_waiting(tmp_path, monkeypatch):
    experiment = created(tmp_path)
    asked = []
    take = locks.FileLock.acquire
    monkeypatch.setattr(locks.FileLock, "acquire", lambda self, blocking=True: asked.append(blocking) or take(self, blocking))
    with experiment.lock():
        with pytest.raises(LockError, match=rf"^experiment 'x' is in use by process {os.getpid()}; wait for it or stop it$"):
            with Experiment(experiment.experiments_path, "x").lock():
                pass
    assert asked == [False, False]  # both tries ask without waiting: a held lock is refused, not waited for
