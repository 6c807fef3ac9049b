"""The suite's own rules: the same property-test examples on every run and nothing written
into the checkout; ports no two tests are given; tests CI requires never skip there."""

import os
import socket

import pytest
from hypothesis import settings
from hypothesis.configuration import storage_directory

from conftest import FIRST_PORT, PORTS_PER_WORKER, REPO, free_port, import_or_skip


def test_property_tests_are_derandomized_and_keep_nothing_in_the_checkout():
    assert settings.default.derandomize and settings.default.database is None
    assert not str(storage_directory(intent_to_write=False).home_directory).startswith(REPO + os.sep)


def test_free_ports_are_never_handed_out_twice_and_stay_in_this_workers_range(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(FIRST_PORT + PORTS_PER_WORKER <= port < FIRST_PORT + 2 * PORTS_PER_WORKER for port in ports)
    with socket.socket() as taken:  # a port in use is passed over
        taken.bind(("127.0.0.1", ports[-1] + 1))
        assert free_port() == ports[-1] + 2


def test_a_module_ci_requires_fails_instead_of_skipping(monkeypatch):
    monkeypatch.delenv("TORCHEXP_REQUIRE_NOTHING", raising=False)
    with pytest.raises(pytest.skip.Exception):
        import_or_skip("no_such_module_here", "TORCHEXP_REQUIRE_NOTHING")
    monkeypatch.setenv("TORCHEXP_REQUIRE_NOTHING", "1")
    with pytest.raises(ModuleNotFoundError):
        import_or_skip("no_such_module_here", "TORCHEXP_REQUIRE_NOTHING")
