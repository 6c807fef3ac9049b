"""A serving process's garbage collector: its objects at start frozen, young collections rarer."""

import gc
import weakref

import pytest

from serve_fixtures import NAME, shared_release
from torchexp.folder import Experiment
from torchexp.releases import find_release
from torchexp.serving import server
from torchexp.serving.collector import YOUNG_GENERATION_THRESHOLD, tune_garbage_collector
from torchexp.serving.options import ServeOptions


class Node:
    next: "Node"


@pytest.fixture
def restored_collector():
    """Give the test process its collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_objects_held_are_frozen_and_the_young_generation_is_collected_less_often(restored_collector):
    gc.set_threshold(700, 11, 12)
    cycle = Node()
    cycle.next = cycle
    garbage = weakref.ref(cycle)
    del cycle  # only the collector can free it
    held = [{"kept": index} for index in range(1000)]
    tune_garbage_collector()
    assert garbage() is None  # collected before the freeze, not kept for ever
    assert gc.get_freeze_count() >= len(held)
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 11, 12)


def test_serve_tunes_the_collector_once_the_release_is_loaded(tmp_path_factory, restored_collector, monkeypatch):
    experiment = Experiment(shared_release(tmp_path_factory), NAME)
    seen = {}

    def record_collector(uvicorn_server, sock):  # instead of serving: what the server would run with
        seen.update(frozen=gc.get_freeze_count(), threshold=gc.get_threshold(), loaded=uvicorn_server.config.app.state.card.name)

    monkeypatch.setattr(server, "run_until_stopped", record_collector)
    gc.unfreeze()
    sock = server.bind_socket("127.0.0.1", 0)
    try:
        server.serve_on(sock, experiment, find_release(experiment, None), ServeOptions(device="cpu", port=0), 1, lambda card: None, "quiet")
    finally:
        sock.close()
    assert seen["loaded"] == NAME
    assert seen["frozen"] > 10_000  # torch, FastAPI, the model: all the process holds
    assert seen["threshold"][0] == YOUNG_GENERATION_THRESHOLD
