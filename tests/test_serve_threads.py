"""Inference and training threads come from the cores the process is given: affinity, then
a cgroup quota (`torchexp.cores`)."""

import logging
import os

import pytest
import torch

from torchexp import cores
from torchexp.serving import threads


@pytest.fixture
def cgroup_files(tmp_path, monkeypatch):
    """Point the cgroup paths at files of the test's own; return a function writing them."""
    paths = {"v2": tmp_path / "cpu.max", "quota": tmp_path / "cpu.cfs_quota_us", "period": tmp_path / "cpu.cfs_period_us"}
    monkeypatch.setattr(cores, "CGROUP_V2_CPU_MAX", str(paths["v2"]))
    monkeypatch.setattr(cores, "CGROUP_V1_QUOTA", str(paths["quota"]))
    monkeypatch.setattr(cores, "CGROUP_V1_PERIOD", str(paths["period"]))

    def write(**contents: str) -> None:
        for key, text in contents.items():
            paths[key].write_text(text)

    return write


def test_usable_cores_are_the_affinity_without_a_quota(cgroup_files, monkeypatch):
    assert cores.read_cpu_quota() is None
    assert cores.count_usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7})
    assert cores.count_usable_cores() == 3


def test_default_threads_leave_a_torch_worker_a_core_for_its_event_loop(cgroup_files, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads.choose_threads(None, "torch") == 7
    assert threads.choose_threads(None, "onnx") == 8
    # A compiled package and the model filled from safetensors run on torch's threads too.
    assert threads.choose_threads(None, "aoti") == 7
    assert threads.choose_threads(None, "safetensors") == 7
    assert threads.choose_threads(None, "torch", workers=2) == 3  # 4 cores each, one for the loop
    assert threads.choose_threads(None, "onnx", workers=3) == 2
    assert threads.choose_threads(5, "torch", workers=2) == 5  # --threads is per worker, as given
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert threads.choose_threads(None, "torch") == 1
    assert threads.choose_threads(None, "torch", workers=4) == 1


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"v2": "150000 100000\n"}, 2),  # 1.5 cores: two threads, as the quota allows bursts over both
        ({"v2": "max 100000\n"}, None),
        ({"v2": "100000 100000\n"}, 1),
        ({"quota": "50000\n", "period": "100000\n"}, 1),
        ({"quota": "-1\n", "period": "100000\n"}, None),
        ({"v2": "garbage"}, None),
    ],
)
def test_a_cgroup_quota_caps_the_cores(cgroup_files, monkeypatch, files, quota):
    cgroup_files(**files)
    assert cores.read_cpu_quota() == quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert cores.count_usable_cores() == (quota or 8)


def test_apply_threads_sets_torch_intra_op_threads():
    before = torch.get_num_threads()
    try:
        threads.apply_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_with_workers_leaves_them_their_cores(cgroup_files, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        cores.share_cores_with_workers(0, logging.getLogger("test"))
        assert torch.get_num_threads() == 8
        cores.share_cores_with_workers(2, logging.getLogger("test"))
        assert torch.get_num_threads() == 6
        monkeypatch.setenv("OMP_NUM_THREADS", "8")
        torch.set_num_threads(8)
        cores.share_cores_with_workers(2, logging.getLogger("test"))
        assert torch.get_num_threads() == 8  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores.share_cores_with_workers(16, logging.getLogger("test"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
