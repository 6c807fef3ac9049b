"""Dynamic batching: requests that arrive together run through the model as one batch.

The event loop only enqueues a request and awaits its future. One worker thread takes the
first waiting request, then more until the batch holds `max_batch_size` instances or
`max_delay_s` has passed since that first request arrived; it preprocesses, predicts and
postprocesses them, and resolves each request's future on its event loop. One worker is
enough: the model uses every thread it is given, so two batches at once would only
compete for the same cores. The queue is bounded: a full queue refuses at once (503)
rather than letting latency grow without limit.
"""

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from torchexp.errors import first_line
from torchexp.hooks import describe_failure
from torchexp.serving.answers import WARM_UP_FAILED, Failure, answer_requests
from torchexp.serving.metrics import ServerMetrics
from torchexp.serving.pipeline import Pipeline, RequestError

STOP = object()  # put in the queue to make the worker finish what is queued, then exit


@dataclasses.dataclass
class Job:
    """One HTTP request's instances, waiting for their predictions."""

    instances: list[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float  # time.perf_counter() when enqueued


Answer = tuple[Job, bytes | None, RequestError | None]  # a job, and its body or its error


class Batcher:
    """A bounded queue of requests and the one thread that runs them in batches.

    Args:
        pipeline: the project's hooks around the predictor.
        metrics: where queue waits, batch sizes and inference times go.
        max_batch_size: most instances run through the model at once.
        max_delay_s: longest wait, after a request arrives, for others to batch with it.
        max_queue: most requests waiting; more are refused with 503.
        logger: where failures of the model or the hooks are logged.
        on_failure: called with one sentence, from the worker thread, when warm-up fails.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: ServerMetrics,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        logger: logging.Logger,
        on_failure: Callable[[str], None] | None = None,
    ):
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.logger = logger
        self.on_failure = on_failure
        self.queue: queue.Queue = queue.Queue(max_queue)
        self.ready = threading.Event()
        self.failure: str | None = None
        self.held: Job | None = None  # taken from the queue but too big for the batch being built
        self.last_batch_size = 0  # instances in the batch gathered last
        self.thread: threading.Thread | None = None
        # Read when /metrics is scraped: counting each request in and out took a lock twice
        # per request, a sixth of the event loop's time under load.
        metrics.queue_depth.set_function(self.count_waiting)

    def count_waiting(self) -> int:
        """Requests waiting for the model: queued, or taken but held for the next batch."""
        return self.queue.qsize() + (self.held is not None)

    def start(self) -> None:
        """Start the worker: it warms the model up, then takes requests. An app stopped
        and started again (as test clients do) gets a new worker."""
        self.ready.clear()
        self.failure = None
        self.thread = threading.Thread(target=self.work, name="torchexp-batcher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Finish every queued request, then stop the worker."""
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(STOP)
            self.thread.join()

    async def submit(self, instances: list[Any]) -> bytes:
        """Queue one request's instances and return its JSON answer once they have run.

        Raises:
            RequestError: 503 when the queue is full or the model failed to warm up; 400
                for a bad instance; 500 when the model or a hook failed.
        """
        if self.failure is not None:
            raise RequestError(503, f"the model is not available: {self.failure}")
        loop = asyncio.get_running_loop()
        job = Job(instances, loop.create_future(), loop, time.perf_counter())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise RequestError(
                503, f"the server is busy: {self.max_queue} requests are already waiting (--max-queue); retry later"
            ) from None
        return await job.future

    def work(self) -> None:
        """The worker thread: warm-up, then batches until STOP, then what is left."""
        try:
            self.pipeline.warm_up(tuple(sorted({1, self.max_batch_size})))
        except Exception as error:  # the project's example or model is broken: refuse, but stay alive
            self.refuse_all(error)
            return
        self.ready.set()
        stopping = False
        while not (stopping and self.held is None and self.queue.empty()):
            first = self.held or self.queue.get()
            self.held = None
            if first is STOP:
                stopping = True
                continue
            jobs, stopping = self.gather(first, stopping)
            self.run(jobs)

    def gather(self, first: Job, stopping: bool) -> tuple[list[Job], bool]:
        """Return `first` and the jobs that join its batch, and whether STOP was seen.

        What is queued always joins. Waiting up to --max-delay-ms for more only pays when
        instances come together: after a batch of a single instance, a lone client sending
        one at a time would wait the whole delay on every request for company that never
        comes, so it does not.
        """
        jobs, size = [first], len(first.instances)
        deadline = first.arrived + (self.max_delay_s if self.last_batch_size > 1 else 0.0)
        while size < self.max_batch_size:
            try:
                # Once stopping, nothing more will arrive: take what is queued, without waiting.
                wait = 0 if stopping else deadline - time.perf_counter()
                job = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is STOP:
                stopping = True
                continue
            if size + len(job.instances) > self.max_batch_size:
                self.held = job
                break
            jobs.append(job)
            size += len(job.instances)
        self.last_batch_size = size
        return jobs, stopping

    def run(self, jobs: list[Job]) -> None:
        """Preprocess, predict and answer a batch of jobs; a bad job fails alone."""
        started = time.perf_counter()
        for job in jobs:
            self.metrics.queue_seconds.observe(started - job.arrived)
        requests = [job.instances for job in jobs]
        results = answer_requests(self.pipeline, requests, self.max_batch_size, self.record_batch)
        answers: list[Answer] = []
        errors: dict[int, RequestError] = {}  # a failure of the model, shared by the batch's jobs, is logged once
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Failure):
                if id(result) not in errors:
                    errors[id(result)] = self.as_request_error(result.error, result.step)
                answers.append((job, None, errors[id(result)]))
            else:
                answers.append((job, result, None))
        hand_back(answers)

    def record_batch(self, size: int, seconds: float) -> None:
        """Count one batch the model ran, and its time."""
        self.metrics.inference_seconds.observe(seconds)
        self.metrics.batch_size.observe(size)

    def as_request_error(self, error: Exception, what: str) -> RequestError:
        """Return a RequestError for `error`; anything else than one is a server fault, logged."""
        if isinstance(error, RequestError):
            return error
        hook = describe_failure(error, inference=True)
        self.logger.error(f"{what}: {hook or f'{type(error).__name__}: {first_line(error)}'}", exc_info=error)
        return RequestError(500, f"{what}: {hook or first_line(error)}")

    def refuse_all(self, error: Exception) -> None:
        """After a failed warm-up: report it, then answer every request with 503 until STOP."""
        self.failure = f"{WARM_UP_FAILED}: {describe_failure(error, inference=True) or first_line(error)}"
        self.logger.error(self.failure, exc_info=error)
        if self.on_failure is not None:
            self.on_failure(self.failure)
        while (job := self.queue.get()) is not STOP:
            hand_back([(job, None, RequestError(503, f"the model is not available: {self.failure}"))])


def hand_back(answers: list[Answer]) -> None:
    """Settle each job's future on its event loop, with one wake-up per loop for the whole
    batch rather than one per request; a client that went away is skipped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].loop, []).append(answer)
    for loop, loop_answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle, loop_answers)
        except RuntimeError:  # the loop is closed: nobody waits for these answers any more
            pass


def settle(answers: list[Answer]) -> None:
    """Set each future's result or exception, on its event loop's thread."""
    for job, body, error in answers:
        if job.future.done():
            continue
        if error is None:
            job.future.set_result(body)
        else:
            job.future.set_exception(error)
