"""Distributed training through torchrun: two Gloo processes on the CPU."""

import gc
import importlib.util
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

import torchexp.distributed
from conftest import assert_identical
from torchexp.distributed import World, any_across, join, leave, map_device, read_world, sum_across
from torchexp.errors import DeviceError, DistributedError

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_project.py")


def run_project(tmp_path, *args: str, processes: int = 0, restarts: int = 0, env: dict | None = None, name: str = "d") -> subprocess.CompletedProcess:
    """Run the test project, under torchrun with `processes` workers when it is non-zero."""
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", f"--max-restarts={restarts}"]
    command = [*launcher, PROJECT, "--experiments-path", str(tmp_path / "experiments"), "--experiment-name", name, *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHEXP_TIMEOUT_S": "60", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)


def init_project(tmp_path, *settings: str, name: str = "d") -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    result = run_project(tmp_path, "init", "--config-path", str(tmp_path / "config.json"), "--schema-path", str(tmp_path / "schema.json"), *settings, name=name)
    assert result.returncode == 0, result.stderr


def read_metrics(tmp_path, kind: str) -> list[dict]:
    lines = (tmp_path / "experiments" / "d" / "metrics.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["kind"] == kind]


def read_seen(tmp_path, rank: int) -> dict[int, list[int]]:
    """Return the sample indexes a rank trained on, by epoch."""
    seen: dict[int, list[int]] = {}
    for line in (tmp_path / "experiments" / f"seen-{rank}.txt").read_text().splitlines():
        epoch, *indexes = map(int, line.split())
        seen.setdefault(epoch, []).extend(indexes)
    return seen


def test_two_gloo_processes_shard_reduce_write_once_and_resume(tmp_path):
    init_project(tmp_path)
    result = run_project(tmp_path, "train", "--max-epochs", "2", "--device", "cpu", processes=2)
    assert result.returncode == 0, result.stderr

    first, second = read_seen(tmp_path, 0), read_seen(tmp_path, 1)
    for epoch in (1, 2):
        assert len(first[epoch]) == len(second[epoch]) == 32
        assert sorted(first[epoch] + second[epoch]) == list(range(64))
    assert first[1] != first[2], "each epoch draws a new order"

    train_logs = read_metrics(tmp_path, "train")
    assert [entry["epoch"] for entry in train_logs] == [1, 2], "only rank 0 logs"
    assert all(entry["metrics"]["rank"] == 0.5 for entry in train_logs), "metrics are means over both ranks"
    names = sorted(os.listdir(tmp_path / "experiments" / "d" / "checkpoints"))
    assert names == ["1.checkpoint.pt", "1.checkpoint.pt.json", "2.checkpoint.pt", "2.checkpoint.pt.json"]
    state = torch.load(tmp_path / "experiments" / "d" / "checkpoints" / "2.checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2

    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2)
    assert result.returncode == 0, result.stderr
    assert "resumed from 2.checkpoint.pt" in result.stderr
    assert [entry["epoch"] for entry in read_metrics(tmp_path, "train")] == [1, 2, 3]


@pytest.mark.slow  # the default suite restarts a group in the mid-epoch test; this one, at an epoch start
def test_a_dead_rank_is_restarted_by_torchrun_from_the_last_checkpoint(tmp_path):
    init_project(tmp_path)
    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2, restarts=1, env={"TORCHEXP_TEST_DIE_AT": "2"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "experiments" / "died").exists()
    assert "resumed from 1.checkpoint.pt" in result.stderr
    assert (tmp_path / "experiments" / "d" / "checkpoints" / "3.checkpoint.pt").exists()


def test_a_rank_killed_mid_epoch_is_restarted_from_the_mid_epoch_checkpoint_and_ends_bit_identical(tmp_path):
    """torchrun --max-restarts restarts both ranks when one is SIGKILLed; with the checkpoint
    clock on, they resume mid-epoch, and the end equals a run that never failed."""
    clock = ("--set", "trainer.checkpoint_every_minutes=0.0005")  # 30 ms: a mid-epoch checkpoint most steps
    init_project(tmp_path, *clock)
    init_project(tmp_path, *clock, name="straight")
    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2, restarts=3, env={"TORCHEXP_TEST_DIE_AT_STEP": "11"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "experiments" / "died").exists()
    assert "resumed from 3.checkpoint.interrupt.pt: 2 epochs done" in result.stderr  # step 11 of 12: epoch 3, mid-way
    straight = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2, name="straight")
    assert straight.returncode == 0, straight.stderr
    final = [torch.load(tmp_path / "experiments" / name / "checkpoints" / "3.checkpoint.pt", weights_only=True) for name in ("d", "straight")]
    assert_identical(final[0], final[1])


def test_a_dead_rank_without_restarts_ends_the_run_and_the_next_resumes(tmp_path):
    # torchrun stops the surviving rank within a tenth of a second of the death, so which
    # of the two reports it first is a race: only the outcome is checked here.
    init_project(tmp_path)
    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2, env={"TORCHEXP_TEST_DIE_AT": "2"})
    assert result.returncode != 0
    assert (tmp_path / "experiments" / "d" / "checkpoints" / "1.checkpoint.pt").exists()
    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2)
    assert result.returncode == 0, result.stderr
    assert "resumed from 1.checkpoint.pt" in result.stderr


def test_a_hung_rank_makes_the_others_fail_after_the_timeout_with_a_clear_error(tmp_path):
    init_project(tmp_path)
    # The timeout also bounds joining the group, so it leaves room for a slow start.
    env = {"TORCHEXP_TEST_HANG_AT": "2", "TORCHEXP_TIMEOUT_S": "10"}
    result = run_project(tmp_path, "train", "--max-epochs", "3", "--device", "cpu", processes=2, env=env)
    assert result.returncode != 0
    assert "Error: rank 0 lost contact with the other training processes (one died or hung for over the timeout)" in result.stderr
    assert (tmp_path / "experiments" / "d" / "checkpoints" / "1.checkpoint.pt").exists()


def test_resuming_with_another_world_size_warns_that_the_order_changes(tmp_path):
    init_project(tmp_path)
    assert run_project(tmp_path, "train", "--max-epochs", "1", "--device", "cpu", processes=2).returncode == 0
    result = run_project(tmp_path, "train", "--max-epochs", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "saved by 2 processes, resumed by 1 process: training goes on, but the data order changes and the run is no longer bit-identical" in result.stderr
    assert len(read_seen(tmp_path, 0)[2]) == 64


def test_single_process_world_is_the_default(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = read_world()
    assert world == World() and world.is_main and not world.distributed
    value = torch.tensor(3.0)
    assert sum_across(value) is value and any_across(True, torch.device("cpu"))


def test_devices_map_onto_local_ranks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    world = World(rank=3, local_rank=1, size=4)
    assert map_device("cuda", world) == "cuda:1"
    assert map_device("auto", world) == "cuda:1"
    assert map_device("cpu", world) == "cpu"
    assert map_device("cuda:0", World()) == "cuda:0"
    with pytest.raises(DeviceError, match="'cuda:0' names one GPU, but 4 processes train"):
        map_device("cuda:0", world)


def test_leave_frees_modules_caught_in_cycles_before_destroying_the_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # so that only leave() can free the cycle
    try:
        holder = {"model": torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))}
        holder["itself"] = holder
        model = weakref.ref(holder["model"])
        del holder
        leave()
        assert model() is None, "the module would be freed during interpreter shutdown, after the group"
        assert not dist.is_initialized()
    finally:
        gc.enable()
        leave()


def test_train_drops_its_runner_before_leaving_the_process_group(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("distributed_project", PROJECT)
    project = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(project)
    init_project(tmp_path)
    experiment_path = str(tmp_path / "experiments" / "d")
    alive_at_leave = []

    def record_leave() -> None:
        gc.collect()
        runners = [o for o in gc.get_objects() if type(o) is project.ProjectRunner and o.experiment.path == experiment_path]
        alive_at_leave.append(len(runners))

    monkeypatch.setattr(torchexp.distributed, "leave", record_leave)
    arguments = ["--experiments-path", str(tmp_path / "experiments"), "--experiment-name", "d", "train", "--max-epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(project.cli, arguments)
    assert result.exit_code == 0, result.output
    assert alive_at_leave == [0]


def test_failing_to_join_the_group_is_a_distributed_error(monkeypatch):
    def time_out(*args, **kwargs):
        raise dist.DistStoreError("wait timeout after 10000ms, keys: /default_pg/0//cpu//0")

    monkeypatch.setattr(dist, "rendezvous", time_out)  # where the store's wait times out
    monkeypatch.setenv("TORCHEXP_TIMEOUT_S", "10")
    with pytest.raises(DistributedError, match=r"^rank 1 could not join the other 3 training processes within 10 s: wait timeout"):
        join(World(rank=1, local_rank=1, size=4), torch.device("cpu"))
