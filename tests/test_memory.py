"""keep_freed_memory: glibc's mmap off and its trim threshold raised, so that freed blocks are not
faulted back in. The page faults it saves are measured by benchmarks/page_faults.py."""

import logging

import pytest

from torchexp import memory, process

glibc_only = pytest.mark.skipif(memory.find_mallopt() is None, reason="the C library is not glibc")





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


@pytest.fixture
def mallopt_calls(monkeypatch) -> list[tuple[int, int]]:
    """The (parameter, value) calls of glibc's mallopt, recorded instead, without the user's settings."""
    calls = []
    for name in memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory, "find_mallopt", lambda: lambda parameter, value: calls.append((parameter, value)) or 1)
    return calls


@glibc_only
def test_mallopt_turns_mmap_off_and_raises_the_trim_threshold(mallopt_calls):
    assert memory.keep_freed_memory() is True
    assert mallopt_calls == [(memory.M_MMAP_MAX, 0), (memory.M_TRIM_THRESHOLD, 2**30)]


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
def test_returning_freed_memory_fixes_the_mmap_threshold(mallopt_calls):
    assert memory.return_freed_memory() is True
    assert mallopt_calls == [(memory.M_MMAP_THRESHOLD, 128 * 1024)]
