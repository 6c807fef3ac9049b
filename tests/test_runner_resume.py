"""Exact resume: across processes, after SIGINT/SIGTERM mid-epoch, and after SIGKILL at any moment.

Every test compares with one reference experiment trained 4 epochs straight, in this
process, and asserts bit-identical results: torch.equal on every tensor of the final
checkpoint (model, optimizer, scheduler, RNG states, partial sums), the same metric
history, and the same per-iteration losses, which depend on the data order.

The configuration exercises what exact resume must get right: a shuffled loader, random
augmentation (the global RNG), dropout (the MLP), a step scheduler and, in the process
tests, two data loader worker processes.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner

from conftest import CONFIG, REPO, SCHEMA, assert_identical, write_mnist
from mnist_classifier.__main__ import cli
from mnist_classifier.runner import MNISTClassifierRunner
from torchexp import checkpoints
from torchexp.sidecar import read_sidecar

EPOCHS = 4
TRAIN_IMAGES = 600  # 480 for training after the 20 % validation split
BATCH = 8
PER_EPOCH = TRAIN_IMAGES * 4 // 5 // BATCH  # 60 iterations per epoch
INIT_SETTINGS = ("model.name=mlp", f"data.batch_size={BATCH}", "data.test_batch_size=50", "data.augment=true")


@dataclass
class World:
    """The data, the experiments folder and the reference run every test compares with."""

    data: str
    experiments: str
    reference_batches: list


def base_args(world: World, name: str) -> list[str]:
    return ["--experiments-path", world.experiments, "--data-path", world.data, "--experiment-name", name]


def invoke(world: World, name: str, *args: str):
    """Run the CLI in this process; exceptions other than SystemExit fail the test."""
    return CliRunner().invoke(cli, [*base_args(world, name), *args], catch_exceptions=False)


def init(world: World, name: str, *extra: str) -> None:
    settings = [item for setting in (*INIT_SETTINGS, *extra) for item in ("--set", setting)]
    result = invoke(world, name, "init", "--config-path", CONFIG, "--schema-path", SCHEMA, "--seed", "3", *settings)
    assert result.exit_code == 0, result.output


# One intra-op thread everywhere: on a busy two-core machine, OpenMP threads that wait
# for each other make training many times slower. Results do not depend on it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(world: World, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_classifier", *base_args(world, name), *args]


def run_cli(world: World, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a new process, as a user does."""
    return subprocess.run(command(world, name, *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def experiment_path(world: World, name: str, *parts: str) -> str:
    return os.path.join(world.experiments, name, *parts)


def load_checkpoint_file(world: World, name: str, filename: str) -> dict:
    return torch.load(experiment_path(world, name, "checkpoints", filename), weights_only=True)


def iteration_metrics(world: World, name: str) -> dict[int, dict]:
    """Per-step metrics from metrics.jsonl; a step logged again after a resume replaces the old one."""
    found = {}
    with open(experiment_path(world, name, "metrics.jsonl"), encoding="utf-8") as file:
        for line in file:
            entry = json.loads(line)
            if entry["kind"] == "iteration":
                found[entry["step"]] = entry["metrics"]
    return found


def assert_same_as_reference(world: World, name: str) -> None:
    """The run's final checkpoint, records and per-step losses equal the reference's."""
    final = checkpoints.make_filename(EPOCHS, "standard")
    assert_identical(load_checkpoint_file(world, name, final), load_checkpoint_file(world, "straight", final))
    for epoch in range(1, EPOCHS + 1):
        path = checkpoints.make_filename(epoch, "standard")
        record = read_sidecar(experiment_path(world, name, "checkpoints", path))
        reference = read_sidecar(experiment_path(world, "straight", "checkpoints", path))
        assert record is not None and reference is not None
        assert record["metrics"] == reference["metrics"], f"metrics of epoch {epoch} differ"
    assert iteration_metrics(world, name) == iteration_metrics(world, "straight")


def fingerprint(batch) -> str:
    images, labels = batch
    return hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Tiny data, and the reference experiment `straight` trained 4 epochs without a stop."""
    root = tmp_path_factory.mktemp("resume")
    world = World(write_mnist(str(root / "data"), train_size=TRAIN_IMAGES, test_size=40), str(root / "experiments"), [])
    init(world, "straight")
    with pytest.MonkeyPatch.context() as patch:
        original = MNISTClassifierRunner.train_step

        def train_step(self, batch, device):
            if self.model.training:
                world.reference_batches.append((self.counters["epoch"] + 1, self.counters["iteration"] + 1, fingerprint(batch)))
            return original(self, batch, device)

        patch.setattr(MNISTClassifierRunner, "train_step", train_step)
        result = invoke(world, "straight", "train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(world.reference_batches) == EPOCHS * PER_EPOCH
    return world


def test_reference_orders_differ_between_epochs(world):
    """Guards the other tests: a loader that repeated one order would make them weaker."""
    orders = [[fp for epoch, _, fp in world.reference_batches if epoch == e] for e in (1, 2)]
    assert orders[0] != orders[1]


def test_train_2_then_resume_to_4_in_new_processes_is_bit_identical(world):
    init(world, "resumed")
    first = run_cli(world, "resumed", "train", "--max-epochs", "2", "--num-workers", "2", "--log-period", "1", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    assert "training from scratch" in first.stderr
    second = run_cli(world, "resumed", "train", "--max-epochs", str(EPOCHS), "--num-workers", "2", "--log-period", "1", "--device", "cpu")
    assert second.returncode == 0, second.stderr
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in second.stderr
    assert_same_as_reference(world, "resumed")


def record_batches_step(seen: list):
    """A train_step that records (epoch, iteration, fingerprint) of each training batch."""
    original = MNISTClassifierRunner.train_step

    def train_step(self, batch, device):
        if self.model.training:
            seen.append((self.counters["epoch"] + 1, self.counters["iteration"] + 1, fingerprint(batch)))
        return original(self, batch, device)

    return train_step


def deliver(signum: int) -> None:
    """Send this process a signal and let its Python handler run before returning.

    Handlers run between bytecodes; the loop's backward jumps are such points, and two
    signals sent back to back could otherwise be merged into one.
    """
    os.kill(os.getpid(), signum)
    for _ in range(50):
        time.sleep(0.001)


def send_at(signum: int, epoch: int, iteration: int, monkeypatch) -> None:
    """Make this process receive `signum` while training step (epoch, iteration) runs."""
    original = MNISTClassifierRunner.train_step

    def train_step(self, batch, device):
        if (self.counters["epoch"] + 1, self.counters["iteration"] + 1) == (epoch, iteration):
            deliver(signum)
        return original(self, batch, device)

    monkeypatch.setattr(MNISTClassifierRunner, "train_step", train_step)


@pytest.mark.parametrize(
    "signum, epoch, iteration",
    [
        (signal.SIGTERM, 1, 1),  # the first step of the run
        (signal.SIGINT, 3, 25),  # mid-epoch, after two epochs of scheduler steps
        (signal.SIGINT, 2, PER_EPOCH),  # the last step of an epoch: partial sums complete, validation not run
    ],
)
def test_signal_mid_epoch_saves_the_position_and_resume_is_bit_identical(world, monkeypatch, signum, epoch, iteration):
    name = f"stopped-{signum}-{epoch}-{iteration}"
    init(world, name)
    seen = []
    monkeypatch.setattr(MNISTClassifierRunner, "train_step", record_batches_step(seen))
    send_at(signum, epoch, iteration, monkeypatch)
    result = invoke(world, name, "train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu")
    assert result.exit_code == 130, result.output
    interrupt = checkpoints.make_filename(epoch, "interrupt")
    signal_name = signal.Signals(signum).name
    assert f"{signal_name} received: finishing the current step, then saving" in result.output
    assert f"Error: training stopped by {signal_name} at epoch {epoch}, iteration {iteration}; saved {interrupt}" in result.output
    folder = experiment_path(world, name, "checkpoints")
    info = checkpoints.find_checkpoint(folder, epoch, ("interrupt",))
    info.verify()
    assert info.sidecar["iteration"] == iteration
    assert [i.epoch for i in checkpoints.list_checkpoints(folder, ("standard",))] == list(range(1, epoch))

    monkeypatch.undo()
    monkeypatch.setattr(MNISTClassifierRunner, "train_step", record_batches_step(seen))
    result = invoke(world, name, "train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"resumed from {interrupt}: {epoch - 1} epoch{'s' if epoch != 2 else ''} done" in result.output
    assert seen == world.reference_batches, "the data order or augmentation differs from the uninterrupted run"
    assert checkpoints.list_checkpoints(folder, ("interrupt",)) == []
    assert_same_as_reference(world, name)


@pytest.mark.parametrize("kind", ["interrupt", "standard"])
def test_second_ctrl_c_during_the_save_corrupts_nothing(world, monkeypatch, kind):
    """A Ctrl-C while a checkpoint is being written is acknowledged, not obeyed."""
    name = f"twice-{kind}"
    init(world, name)
    if kind == "interrupt":
        send_at(signal.SIGINT, 2, 10, monkeypatch)
    real_save = torch.save

    def save(obj, file, *args, **kwargs):
        # Two more Ctrl-C while the interrupt checkpoint is written; or, while epoch 2's
        # checkpoint is written, the first Ctrl-C and then a second one.
        if obj["partial"] is not None or (kind == "standard" and obj["counters"]["epoch"] == 2):
            deliver(signal.SIGINT)
            deliver(signal.SIGINT)
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = invoke(world, name, "train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu")
    assert result.exit_code == 130, result.output
    assert "already stopping: the checkpoint is being saved, please wait" in result.output
    if kind == "interrupt":
        assert "at epoch 2, iteration 10; saved 2.checkpoint.interrupt.pt" in result.output
    else:
        assert "training stopped by SIGINT after epoch 2, which is saved" in result.output
    folder = experiment_path(world, name, "checkpoints")
    for info in checkpoints.list_checkpoints(folder):
        info.load()
    assert not [file for file in os.listdir(folder) if file.endswith(".tmp")]

    monkeypatch.undo()
    result = invoke(world, name, "train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_same_as_reference(world, name)


def read_steps(path: str) -> list[int]:
    """The steps of the iteration lines of a metrics.jsonl being written by another process."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line being written
            continue
        if entry["kind"] == "iteration":
            steps.append(entry["step"])
    return steps


def test_ctrl_c_on_the_process_group_mid_epoch_then_resume_in_a_new_process(world, tmp_path):
    """A terminal's Ctrl-C: SIGINT to the trainer and its two loader workers, mid-epoch.

    The process group is frozen with SIGSTOP before the signal, so that where the
    trainer stands is known: it finishes the step it is in and saves that position.
    """
    name = "ctrl-c"
    init(world, name)
    args = ["train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--num-workers", "2", "--device", "cpu"]
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(command(world, name, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True)
        metrics = experiment_path(world, name, "metrics.jsonl")
        deadline = time.monotonic() + 120
        position = None
        while position is None:
            assert process.poll() is None, "training ended before it could be interrupted"
            assert time.monotonic() < deadline, "training never reached epoch 2"
            steps = read_steps(metrics)
            if steps and steps[-1] > PER_EPOCH and (steps[-1] - 1) % PER_EPOCH < PER_EPOCH - 5:
                os.killpg(process.pid, signal.SIGSTOP)
                last = read_steps(metrics)[-1]
                if (last - 1) % PER_EPOCH + 1 < PER_EPOCH - 1:
                    position = last
                    os.killpg(process.pid, signal.SIGINT)
                os.killpg(process.pid, signal.SIGCONT)
            time.sleep(0.002)
        assert process.wait(timeout=120) == 130
        stderr.seek(0)
        output = stderr.read()
    epoch, logged = (position - 1) // PER_EPOCH + 1, (position - 1) % PER_EPOCH + 1
    interrupt = checkpoints.make_filename(epoch, "interrupt")
    info = checkpoints.find_checkpoint(experiment_path(world, name, "checkpoints"), epoch, ("interrupt",))
    info.verify()
    # Stopped after logging step `logged`, it finished that step or the one it had begun.
    assert info.sidecar["iteration"] in (logged, logged + 1)
    assert f"training stopped by SIGINT at epoch {epoch}, iteration {info.sidecar['iteration']}; saved {interrupt}" in output
    assert output.count("SIGINT received") == 1, output  # said once, not once per loader worker
    assert "Traceback" not in output

    resumed = run_cli(world, name, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {interrupt}: {epoch - 1} epoch" in resumed.stderr
    assert_same_as_reference(world, name)


def snapshot_hashes(world: World, name: str) -> dict[str, str]:
    return {
        file: hashlib.sha256(open(experiment_path(world, name, file), "rb").read()).hexdigest()
        for file in ("config.json", "data.json")
    }


def describe_landing(folder: str, launch: dict[str, int], steps: list[int]) -> str:
    """Where a SIGKILL landed, read from what it left in the checkpoints folder."""
    names = [name for name in os.listdir(folder) if launch.get(name) != mtime(folder, name)]
    temporary = [name for name in names if name.endswith(".tmp")]
    if temporary:
        target = temporary[0][1:].rsplit(".", 2)[0]  # .<name>.<random>.tmp
        return f"during a {'record' if target.endswith('.json') else 'checkpoint'} write ({target})"
    every = os.listdir(folder)
    unrecorded = [name for name in names if checkpoints.parse_filename(name) and name + ".json" not in every]
    if unrecorded:
        return f"between {unrecorded[0]} and its record"
    if not steps:
        return "before training (start-up)"
    last = steps[-1]
    return f"after epoch {(last - 1) // PER_EPOCH + 1}, iteration {(last - 1) % PER_EPOCH + 1} (between writes)"


def mtime(folder: str, name: str) -> int | None:
    try:
        return os.stat(os.path.join(folder, name)).st_mtime_ns
    except FileNotFoundError:
        return None


def wait_and_kill(process: subprocess.Popen, strategy: str, target: int, moment: tuple[int, float], folder: str, launch: dict, metrics: str) -> bool:
    """SIGKILL the trainer as `strategy` says; return False when it ended first.

    Strategies:
        write: as soon as the temporary file of epoch `target`'s checkpoint exists.
        record: as soon as epoch `target`'s checkpoint exists without its record.
        random: at `moment` = (steps, seconds): that many seconds after the run's
            that-many-th training step, wherever it then is (a step, validation, a save).
    """
    started = len(read_steps(metrics))
    checkpoint = checkpoints.make_filename(target, "standard")
    deadline = time.monotonic() + 120
    kill_at = None
    while process.poll() is None:
        assert time.monotonic() < deadline, f"no moment for the {strategy} kill came"
        names = os.listdir(folder)
        if strategy == "write":
            due = any(name.startswith(f".{checkpoint}.") and name not in launch for name in names)
        elif strategy == "record":
            due = checkpoint in names and checkpoint + ".json" not in names and mtime(folder, checkpoint) != launch.get(checkpoint)
        else:
            if kill_at is None and len(read_steps(metrics)) >= started + moment[0]:
                kill_at = time.monotonic() + moment[1]
            due = kill_at is not None and time.monotonic() >= kill_at
        if due:
            process.kill()
            process.wait()
            return True
        time.sleep(0.0005)
    return False


@pytest.mark.parametrize("kills", [3, pytest.param(12, marks=pytest.mark.slow)])
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_result(world, kills, tmp_path):
    """Kill the trainer during a checkpoint write, between a checkpoint and its record, and
    at random moments (seeded), resuming each time; then let it finish."""
    name = f"killed-{kills}"
    init(world, name)
    before = snapshot_hashes(world, name)
    folder = experiment_path(world, name, "checkpoints")
    metrics = experiment_path(world, name, "metrics.jsonl")
    rng = random.Random(kills)
    landings = []
    args = ["train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu"]
    skipped_expected = temporary_left = False
    for attempt in range(kills):
        strategy = ["write", "record", "random"][attempt] if attempt < 3 else rng.choice(["write", "record", "random"])
        resume, _ = checkpoints.find_resume_checkpoint(folder)
        done = resume.epoch if resume is not None else 0
        # The default run lets each process save one checkpoint before it is killed; the
        # long one kills half of them at their first save, so that they progress slowly.
        target = min(done + (2 if kills <= 3 else rng.choice([1, 2])), EPOCHS)
        moment = (rng.randint(1, PER_EPOCH * 3 // 2), rng.uniform(0, 0.03))
        launch = {file: mtime(folder, file) for file in os.listdir(folder)}
        stderr_path = tmp_path / f"stderr-{attempt}"
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(command(world, name, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        if attempt == 0:
            # One trainer per experiment: a second one is refused, naming this one.
            while not read_steps(metrics) and process.poll() is None:
                time.sleep(0.01)
            second = invoke(world, name, *args)
            assert second.exit_code == 7 and f"in use by process {process.pid}" in second.output, second.output
        killed = wait_and_kill(process, strategy, target, moment, folder, launch, metrics)
        output = stderr_path.read_text()
        assert "Traceback" not in output, output
        if skipped_expected:
            assert "skipping checkpoint" in output and "has no valid sidecar" in output, output
        if temporary_left:
            assert "left by a save that was killed" in output, output
        if not killed:
            landings.append(f"kill {attempt + 1} ({strategy}): none, training had finished")
            break
        where = describe_landing(folder, launch, read_steps(metrics))
        landings.append(f"kill {attempt + 1} ({strategy}, resumed at epoch {done}): {where}")
        # Nothing recorded is ever corrupt; a checkpoint without its record is the only trace.
        found = checkpoints.list_checkpoints(folder)
        for info in found:
            if info.sidecar is not None:
                info.verify()
        skipped_expected = any(info.sidecar is None for info in found)
        temporary_left = where.startswith("during a")
        assert snapshot_hashes(world, name) == before
    print("\n".join(landings))
    # The write and record kills aim at a save; the save may just have ended when one lands.
    assert any("during a" in landing or "and its record" in landing for landing in landings), landings

    final = run_cli(world, name, *args)
    assert final.returncode == 0, final.stderr
    for info in checkpoints.list_checkpoints(folder):
        info.load()
    assert not [file for file in os.listdir(folder) if file.endswith(".tmp")], "temporary files were left behind"
    assert_same_as_reference(world, name)
    # What the killed runs logged after their last checkpoint was dropped when the next
    # one resumed: metrics.jsonl holds every step and every epoch once.
    assert read_steps(metrics) == list(range(1, EPOCHS * PER_EPOCH + 1))
    with open(metrics, encoding="utf-8") as file:
        epochs = [entry["epoch"] for entry in map(json.loads, file) if entry["kind"] == "train"]
    assert epochs == list(range(1, EPOCHS + 1))


def test_sigkill_after_a_clock_checkpoint_resumes_from_it_and_ends_as_the_uninterrupted_run(world, tmp_path):
    """trainer.checkpoint_every_minutes writes mid-epoch checkpoints; a SIGKILL mid-epoch 2
    then costs only the steps since the last one, and the end is bit-identical."""
    name = "clocked"
    init(world, name, "trainer.checkpoint_every_minutes=0.002")  # every 0.12 s: several per epoch
    folder = experiment_path(world, name, "checkpoints")
    interrupt = os.path.join(folder, checkpoints.make_filename(2, "interrupt"))
    args = ["train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu"]
    process = subprocess.Popen(command(world, name, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Until the pair verifies: the sidecar is renamed into place first, and a kill right after
    # it, before the file's rename, would leave a pair that does not verify.
    while not ((read_sidecar(interrupt) or {}).get("iteration", 0) >= 10 and checkpoints.Checkpoint(2, "interrupt", interrupt, read_sidecar(interrupt)).verified):
        assert process.poll() is None and time.monotonic() < deadline, "no mid-epoch checkpoint of epoch 2 came"
        time.sleep(0.001)
    process.kill()
    process.wait()
    saved = checkpoints.find_resume_checkpoint(folder)[0]
    assert saved.kind == "interrupt" and saved.epoch == 2 and saved.sidecar["iteration"] >= 10
    result = run_cli(world, name, *args)
    assert result.returncode == 0, result.stderr
    assert "resumed from 2.checkpoint.interrupt.pt: 1 epoch done" in result.stderr
    assert checkpoints.list_checkpoints(folder, ("interrupt",)) == []  # retired by the epoch's own
    assert_same_as_reference(world, name)


@pytest.mark.slow  # 30 s; the default suite's SIGKILL tests are the 3 kills and the clock checkpoint above
def test_sigkill_across_saves_removals_and_verify_loses_nothing_and_every_checkpoint_verifies(world):
    """trainer.keep_checkpoints=2 removes a checkpoint after every epoch from the third, and
    the clock saves mid-epoch ones: kills land in writes and removals (seeded moments), and
    one in verify."""
    name = "kept"
    init(world, name, "trainer.keep_checkpoints=2", "trainer.checkpoint_every_minutes=0.003")
    folder = experiment_path(world, name, "checkpoints")
    metrics = experiment_path(world, name, "metrics.jsonl")
    rng = random.Random(17)
    args = ["train", "--max-epochs", str(EPOCHS), "--log-period", "1", "--device", "cpu"]
    progress = (0, 0)
    for attempt in range(3):
        process = subprocess.Popen(command(world, name, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_and_kill(process, "random", 0, (rng.randint(PER_EPOCH // 2, PER_EPOCH * 2), rng.uniform(0, 0.05)), folder, {}, metrics):
            break
        listed = checkpoints.list_checkpoints(folder)
        for item in listed:
            if item.sidecar is not None:
                item.verify()  # what is listed with its sidecar is whole
        resume, _ = checkpoints.find_resume_checkpoint(folder)
        assert resume is not None or progress == (0, 0), f"kill {attempt + 1} left no checkpoint to resume from: {os.listdir(folder)}"
        if resume is not None:
            assert resume.progress >= progress, "a kill took the last good checkpoint"
            progress = resume.progress
    verifying = subprocess.Popen(command(world, name, "verify", "--device", "cpu"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(1.0, 3.0))  # somewhere in start-up or the re-run: verify writes only its own line
    verifying.kill()
    verifying.wait()
    result = run_cli(world, name, *args)
    assert result.returncode == 0, result.stderr
    assert_same_as_reference_at_the_end(world, name)
    names = os.listdir(folder)
    losses = [entry["metrics"]["loss"] for entry in map(json.loads, open(metrics, encoding="utf-8")) if entry["kind"] == "validation"]
    best = min(range(EPOCHS), key=lambda index: (losses[index], index)) + 1
    assert {item.epoch for item in checkpoints.list_checkpoints(folder)} == {3, 4, best}
    assert not [name for name in names if name.startswith(".")], names
    for item in checkpoints.list_checkpoints(folder):
        item.verify()
    verified = run_cli(world, name, "verify", "--device", "cpu")
    assert verified.returncode == 0 and verified.stdout.startswith("epoch 4: bit-identical ("), verified.stdout + verified.stderr


def assert_same_as_reference_at_the_end(world: World, name: str) -> None:
    """The run's final checkpoint equals the reference's, and so do the epochs' metrics."""
    final = checkpoints.make_filename(EPOCHS, "standard")
    assert_identical(load_checkpoint_file(world, name, final), load_checkpoint_file(world, "straight", final))
    assert iteration_metrics(world, name) == iteration_metrics(world, "straight")
