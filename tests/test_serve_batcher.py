"""Dynamic batching: requests that wait together run as one batch, off the event loop, in a
bounded queue; readiness follows warm-up and stopping; failures stay with their requests."""

import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_fixtures import NAME, build_app, pixels_body, record_predictions, shared_release
from torchexp.serving.server import GracefulServer, make_uvicorn_config

PREDICT = f"/v1/models/{NAME}:predict"
IMAGE = np.full((28, 28), 30).tolist()


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class WatchedQueue(queue.Queue):
    """The batcher's queue, telling when the worker waits on it for company: a `get` with
    a timeout, as gathering a batch does (waiting for a first request has none)."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.waiting = threading.Event()
        self.timeouts: list[float] = []

    def get(self, block: bool = True, timeout: float | None = None):
        if block and timeout is not None:
            self.timeouts.append(timeout)
            self.waiting.set()
        return super().get(block, timeout)


def start_held_request(client, pool, recorder):
    """Send one request and wait until the model is running it, held by `recorder`."""
    recorder.hold()
    first = pool.submit(client.post, PREDICT, json=pixels_body(IMAGE))
    assert recorder.entered.wait(10)
    return first


def test_requests_waiting_together_run_as_one_batch(experiments):
    app = build_app(experiments, max_delay_ms=1)
    recorder = record_predictions(app)
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        assert app.state.batcher.ready.wait(10)
        first = start_held_request(client, pool, recorder)
        waiting = [pool.submit(client.post, PREDICT, json=pixels_body(IMAGE)) for _ in range(7)]
        wait_until(lambda: app.state.batcher.queue.qsize() == 7)
        recorder.release()
        responses = [first.result(10)] + [future.result(10) for future in waiting]
        metrics = client.get("/metrics").text
    assert [response.status_code for response in responses] == [200] * 8
    assert len({str(response.json()) for response in responses}) == 1
    assert recorder.sizes[-2:] == [1, 7]
    assert 'torchexp_batch_size_bucket{le="8.0"} 2.0' in metrics  # the batch of one and the batch of seven


def test_a_lone_client_does_not_wait_for_company_but_concurrent_requests_do(experiments):
    app = build_app(experiments, max_delay_ms=60_000, max_batch_size=4)
    recorder = record_predictions(app)
    watched = app.state.batcher.queue = WatchedQueue(app.state.batcher.max_queue)
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        assert app.state.batcher.ready.wait(10)
        warm_up = len(recorder.sizes)
        # One request at a time: each runs at once, not after the minute's delay.
        for _ in range(3):
            assert pool.submit(client.post, PREDICT, json=pixels_body(IMAGE)).result(10).status_code == 200
        # A batch of several instances shows concurrency: the next batch waits for company
        # until it is full (--max-batch-size 4 here), not the minute's delay.
        first = start_held_request(client, pool, recorder)
        waiting = [pool.submit(client.post, PREDICT, json=pixels_body(IMAGE)) for _ in range(2)]
        wait_until(lambda: app.state.batcher.queue.qsize() == 2)
        recorder.release()
        assert [future.result(10).status_code for future in [first, *waiting]] == [200] * 3
        watched.waiting.clear()
        late = pool.submit(client.post, PREDICT, json=pixels_body(IMAGE))
        # The worker has taken the late request and waits for company, the minute's delay:
        # nothing can answer it before company comes.
        assert watched.waiting.wait(10)
        assert watched.timeouts[-1] > 50
        assert not late.done()
        company = [pool.submit(client.post, PREDICT, json=pixels_body(IMAGE)) for _ in range(app.state.batcher.max_batch_size - 1)]
        assert [future.result(10).status_code for future in [late, *company]] == [200] * app.state.batcher.max_batch_size
    assert recorder.sizes[warm_up:] == [1, 1, 1, 1, 2, app.state.batcher.max_batch_size]


def test_inference_runs_on_the_batch_thread_not_the_event_loop(experiments):
    app = build_app(experiments)
    recorder = record_predictions(app)
    with TestClient(app) as client:
        assert client.post(PREDICT, json=pixels_body(IMAGE)).status_code == 200
    assert recorder.threads and {thread.name for thread in recorder.threads} == {"torchexp-batcher"}
    assert recorder.loop_running and not any(recorder.loop_running)


def test_a_full_queue_answers_503_at_once_and_the_waiting_requests_complete(experiments):
    app = build_app(experiments, max_queue=1)
    recorder = record_predictions(app)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        assert app.state.batcher.ready.wait(10)
        first = start_held_request(client, pool, recorder)
        second = pool.submit(client.post, PREDICT, json=pixels_body(IMAGE))
        wait_until(lambda: app.state.batcher.queue.qsize() == 1)
        refused = client.post(PREDICT, json=pixels_body(IMAGE))
        recorder.release()
        assert refused.status_code == 503
        assert refused.json() == {"error": "the server is busy: 1 requests are already waiting (--max-queue); retry later"}
        assert first.result(10).status_code == 200 and second.result(10).status_code == 200
        assert client.post(PREDICT, json=pixels_body(IMAGE)).status_code == 200


def test_not_ready_while_warming_up_then_ready(experiments):
    app = build_app(experiments)
    recorder = record_predictions(app)
    recorder.hold()
    with TestClient(app) as client:
        assert recorder.entered.wait(10)  # warm-up is running the model
        readiness = client.get("/readyz")
        assert readiness.status_code == 503
        assert readiness.json() == {"error": "not ready: warming up the model"}
        assert client.get(f"/v1/models/{NAME}").json()["ready"] is False
        assert client.get("/livez").status_code == 200
        recorder.release()
        assert app.state.batcher.ready.wait(10)
        assert client.get("/readyz").status_code == 200


def test_not_ready_as_soon_as_a_stop_is_asked_for(experiments):
    app = build_app(experiments)
    with TestClient(app) as client:
        assert app.state.batcher.ready.wait(10)
        GracefulServer(make_uvicorn_config(app, "quiet"), app).handle_exit(signal.SIGTERM, None)
        assert client.get("/readyz").json() == {"error": "not ready: stopping"}
        assert client.post(PREDICT, json=pixels_body(IMAGE)).status_code == 200  # requests still in flight are served


def test_a_model_failure_is_500_for_its_batch_only(experiments):
    app = build_app(experiments)
    recorder = record_predictions(app)
    with TestClient(app) as client:
        assert app.state.batcher.ready.wait(10)
        predict = recorder.predict
        calls = []

        def fail_once(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("out of memory\nlong details")
            return predict(batch)

        recorder.predict = fail_once
        failed = client.post(PREDICT, json=pixels_body(IMAGE))
        assert failed.status_code == 500
        assert failed.json() == {"error": "the model failed on this batch: out of memory"}
        assert client.post(PREDICT, json=pixels_body(IMAGE)).status_code == 200


def test_a_failed_warm_up_refuses_requests_and_reports_once(experiments):
    app = build_app(experiments)
    app.state.batcher.pipeline.runner.serve_example = lambda: [[1]]
    failures = []
    app.state.batcher.on_failure = failures.append
    with TestClient(app) as client:
        wait_until(lambda: failures)
        reason = (
            "warm-up with the project's serve_example failed: "
            "instances[0]: an instance must be 28 x 28 pixel values, not an array of shape [1, 1]"
        )
        assert failures == [reason]
        assert client.get("/readyz").json() == {"error": f"not ready: {reason}"}
        refused = client.post(PREDICT, json=pixels_body(IMAGE))
        assert refused.status_code == 503
        assert refused.json() == {"error": f"the model is not available: {reason}"}


def test_stopping_finishes_what_is_queued(experiments):
    app = build_app(experiments, max_delay_ms=0)
    recorder = record_predictions(app)
    answers = []
    client = TestClient(app)
    client.__enter__()
    pool = ThreadPoolExecutor(4)
    try:
        assert app.state.batcher.ready.wait(10)
        first = start_held_request(client, pool, recorder)
        queued = [pool.submit(client.post, PREDICT, json=pixels_body(IMAGE)) for _ in range(3)]
        wait_until(lambda: app.state.batcher.queue.qsize() == 3)
        stopper = threading.Thread(target=app.state.batcher.stop)
        stopper.start()
        recorder.release()
        stopper.join(10)
        assert not stopper.is_alive() and not app.state.batcher.thread.is_alive()
        answers = [future.result(10).status_code for future in [first, *queued]]
    finally:
        pool.shutdown()
        client.__exit__(None, None, None)
    assert answers == [200] * 4
