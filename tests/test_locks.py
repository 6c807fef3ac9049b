"""The one lock helper: an flock that stays with the process that took it."""

import json
import os
import signal
import subprocess
import sys

from conftest import read_line
from torchexp.folder import Experiment
from torchexp.locks import FileLock, is_locked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the experiment's lock, then starts a DataLoader with two forked workers that stay
# busy; prints the workers' pids once both are running.
HOLD_LOCK_WITH_WORKERS = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from torchexp.folder import Experiment

class Slow(Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, index):
        with open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w"):
            pass
        time.sleep(0.2)
        return torch.zeros(1)

with Experiment(sys.argv[1], "x").lock():
    batches = iter(DataLoader(Slow(), batch_size=1, num_workers=2, multiprocessing_context="fork"))
    next(batches)
    while len([name for name in os.listdir(sys.argv[1]) if name.startswith("worker-")]) < 2:
        time.sleep(0.05)
    print(" ".join(name[7:] for name in os.listdir(sys.argv[1]) if name.startswith("worker-")), flush=True)
    time.sleep(60)
"""


# Reads experiments where `import fcntl` fails, as on Windows: prints the names, and the
# history and state of experiment x.
READ_WITHOUT_FCNTL = """
import json, sys
sys.modules["fcntl"] = None  # import fcntl raises ImportError
import torchexp
experiments = torchexp.Experiments(sys.argv[1])
view = experiments["x"]
print(json.dumps([experiments.names(), view.history, view.running, view.state]))
"""


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_forked_workers_of_a_killed_holder_do_not_keep_its_lock(tmp_path):
    experiments = str(tmp_path / "experiments")
    experiment = Experiment(experiments, "x")
    experiment.create({"seed": 3, "versions": {}, "config": {}}, {})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_WITH_WORKERS, experiments], stdout=subprocess.PIPE, text=True, cwd=REPO)
    workers = [int(pid) for pid in read_line(holder.stdout, 120).split()]
    try:
        assert is_locked(experiment.lock_path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        # The orphaned workers notice their parent's death only every 5 s: they are still
        # there, and the lock must be free all the same.
        assert any(is_alive(pid) for pid in workers)
        assert not is_locked(experiment.lock_path)
        with experiment.lock():
            pass
    finally:
        for pid in workers:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_forked_child_holds_none_of_its_parents_locks(tmp_path):
    lock = FileLock(str(tmp_path / "lock"))
    assert lock.acquire()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it holds, then wait to be killed
        os.write(writer, b"held" if lock.native.is_locked else b"none")
        signal.pause()
    try:
        assert os.read(reader, 4) == b"none"
        lock.release()
        assert not is_locked(lock.path)  # the child's copy of the descriptor was closed
        other = FileLock(lock.path)
        assert other.acquire(blocking=False)
        other.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_experiments_are_read_where_fcntl_does_not_exist(tmp_path):
    experiments = str(tmp_path / "experiments")
    experiment = Experiment(experiments, "x")
    experiment.create({"seed": 3, "versions": {}, "config": {}}, {})
    with open(experiment.metrics_path, "w") as file:
        file.write(json.dumps({"kind": "train", "epoch": 1, "metrics": {"loss": 0.5}, "seconds": 2.0}) + "\n")
    with experiment.lock():  # taken through fcntl here, and seen without it there
        command = [sys.executable, "-c", READ_WITHOUT_FCNTL, experiments]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    names, history, running, state = json.loads(done.stdout)
    assert (names, history) == (["x"], [{"epoch": 1, "train": {"loss": 0.5}, "validation": {}, "seconds": 2.0}])
    # Without a way to lock files, no process can hold one: the view says so rather than fail.
    assert (running, state) == (False, "not started")
