"""keep_freed_memory: glibc's mmap off and its trim threshold raised, so that freed blocks are not faulted back in."""

import logging
import os
import subprocess
import sys

import pytest

from torchexp import memory, process

# Runs 20 training steps of the MNIST example's CNN on the CPU, then prints the minor page
# faults they took: the activations a step frees are what the next step allocates again.
FAULT_COUNTER = """
import resource, sys, torch
from mnist_classifier.model import CNN
from torchexp.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
model = CNN()
optimizer = torch.optim.Adadelta(model.parameters())
inputs, targets = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.nll_loss(model(inputs), targets).backward()
    optimizer.step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

# Allocates, fills and frees a 64 MiB tensor, above the highest mmap threshold glibc
# accepts (32 MiB) as one validation batch of 1,000 images is, 12 times to settle the heap
# (small allocations between the blocks move the first few; measured here, 3 left up to 5 of
# the next 9 faulting), then prints the minor page faults that 9 more took.
LARGE_BLOCK_FAULT_COUNTER = """
import resource, sys, torch
from torchexp.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(12):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    torch.empty(16 * 2**20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(memory.find_mallopt() is None, reason="the C library is not glibc")


def count_faults(mode: str, program: str = FAULT_COUNTER) -> tuple[str, int]:
    env = {key: value for key, value in os.environ.items() if key not in memory.USER_SETTINGS}
    result = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, env=env, check=True)
    applied, faults = result.stdout.split()
    return applied, int(faults)


@glibc_only
def test_training_steps_reuse_freed_memory_without_faulting_it_back_in():
    applied, kept = count_faults("keep")
    _, returned = count_faults("default")
    assert applied == "True"
    # Measured here: 130,000 to 220,000 faults by default, 2,000 to 7,000 kept.
    assert returned > 50_000
    assert kept < returned / 10


@glibc_only
def test_blocks_above_the_highest_mmap_threshold_are_kept_too():
    applied, kept = count_faults("keep", LARGE_BLOCK_FAULT_COUNTER)
    _, returned = count_faults("default", LARGE_BLOCK_FAULT_COUNTER)
    assert applied == "True"
    # 64 MiB is 16,384 pages of 4 KiB: mapped afresh, each of the 9 blocks faults them all in.
    # Kept, the heap reuses the block; measured here: no faults in 6 runs of 8, one block's
    # worth in 2 (a small allocation took the start of the freed space once).
    assert returned > 9 * 16_000
    assert kept <= 2 * 16_384


def test_malloc_settings_of_the_user_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setattr(memory, "find_mallopt", lambda: pytest.fail("mallopt must not be looked up"))
    assert memory.keep_freed_memory() is False


def test_another_c_library_is_left_alone(monkeypatch):
    class Musl:
        mallopt = staticmethod(lambda parameter, value: 0)

    for name in memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: Musl())
    assert memory.find_mallopt() is None
    assert memory.keep_freed_memory() is False


@glibc_only
def test_mallopt_turns_mmap_off_and_raises_the_trim_threshold(monkeypatch):
    calls = []
    for name in memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory, "find_mallopt", lambda: lambda parameter, value: calls.append((parameter, value)) or 1)
    assert memory.keep_freed_memory() is True
    assert calls == [(memory.M_MMAP_MAX, 0), (memory.M_TRIM_THRESHOLD, 2**30)]


@pytest.fixture
def recorded_settings(monkeypatch) -> list[str]:
    """The glibc settings keep_freed_memory_when_configured applies, recorded instead."""
    calls = []
    monkeypatch.delenv(process.MALLOPT, raising=False)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append("returned") or True)
    return calls


def configure(settings: tuple[tuple[bool | None, str], ...]) -> None:
    for setting, strategy in settings:
        memory.keep_freed_memory_when_configured(setting, logging.getLogger("test_memory"), strategy)


def test_by_default_ddp_keeps_freed_memory_and_fsdp_returns_it(recorded_settings):
    with process.running_command_line():
        configure(((None, "ddp"), (None, "fsdp"), (True, "fsdp"), (False, "ddp"), (False, "fsdp")))
    assert recorded_settings == ["kept", "returned", "kept", "returned"]


def test_a_library_callers_process_is_changed_only_where_its_config_asks(recorded_settings):
    configure(((None, "ddp"), (None, "fsdp")))
    assert recorded_settings == []
    configure(((True, "ddp"), (False, "fsdp")))
    assert recorded_settings == ["kept", "returned"]


def test_torchexp_mallopt_0_turns_it_off_even_in_the_command_line(recorded_settings, monkeypatch):
    monkeypatch.setenv(process.MALLOPT, "0")
    with process.running_command_line():
        configure(((None, "ddp"), (True, "ddp"), (False, "fsdp")))
    assert recorded_settings == []


@glibc_only
def test_returning_freed_memory_fixes_the_mmap_threshold(monkeypatch):
    calls = []
    for name in memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory, "find_mallopt", lambda: lambda parameter, value: calls.append((parameter, value)) or 1)
    assert memory.return_freed_memory() is True
    assert calls == [(memory.M_MMAP_THRESHOLD, 128 * 1024)]
