"""Requests' instances to their answers: the path `serve` and the Python predictor share.

`serve`'s batch thread gathers requests and runs them here together; `torchexp.Predictor`
runs one request here in the caller's thread. Either way, each request's instances are
preprocessed by the project's `serve_preprocess`, run through the model in batches of at
most `max_batch_size` instances, and postprocessed into the JSON body a client gets, so
that both answer alike. Nothing here knows about HTTP or threads.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from torchexp.serving.pipeline import Pipeline, RequestError

WARM_UP_FAILED = "warm-up with the project's serve_example failed"  # how a failure of the example is told


@dataclasses.dataclass
class Failure:
    """Why a request got no answer: the step that failed and the exception it raised."""

    step: str  # "preprocessing failed", "the model failed on this batch" or "postprocessing failed"
    error: Exception


def check_instances(instances: Any) -> list[Any]:
    """Return the `instances` of a predict request when they are a non-empty list.

    Raises:
        RequestError: 400 naming what is wrong with them.
    """
    if not isinstance(instances, list):
        raise RequestError(400, f'"instances" must be a list, not {type(instances).__name__}')
    if not instances:
        raise RequestError(400, '"instances" is empty: send at least one instance')
    return instances


OnBatch = Callable[[int, float], None]  # called with a model batch's size and seconds


def answer_requests(
    pipeline: Pipeline, requests: list[list[Any]], max_batch_size: int, on_batch: OnBatch | None = None
) -> list[bytes | Failure]:
    """Answer requests run together: preprocess each request's instances, run all of them
    through the model in batches of at most `max_batch_size`, postprocess each request's.

    A request whose preprocessing or postprocessing fails, fails alone; a failure of the
    model fails every request of the batch.

    Args:
        pipeline: the project's hooks around the predictor.
        requests: each request's instances, in order.
        max_batch_size: most instances run through the model at once.
        on_batch: called with each model batch's size and seconds, e.g. for metrics.

    Returns:
        Each request's JSON body `{"predictions": [...]}`, or its Failure, in order.
    """
    answers: dict[int, bytes | Failure] = {}
    prepared = []
    for index, instances in enumerate(requests):
        try:
            prepared.append((index, pipeline.prepare(instances)))
        except Exception as error:
            answers[index] = Failure("preprocessing failed", error)
    if prepared:
        try:
            tensors = [tensor for _, request_tensors in prepared for tensor in request_tensors]
            outputs = predict_in_batches(pipeline, tensors, max_batch_size, on_batch)
        except Exception as error:
            failure = Failure("the model failed on this batch", error)  # one, shared by the batch's requests
            answers.update((index, failure) for index, _ in prepared)
        else:
            offset = 0
            for index, request_tensors in prepared:
                count = len(request_tensors)
                try:
                    answers[index] = pipeline.answer(outputs[offset : offset + count], request_tensors, requests[index])
                except Exception as error:
                    answers[index] = Failure("postprocessing failed", error)
                offset += count
    return [answers[index] for index in range(len(requests))]


def predict_in_batches(
    pipeline: Pipeline, tensors: list[torch.Tensor], max_batch_size: int, on_batch: OnBatch | None = None
) -> torch.Tensor:
    """Run the model on `tensors` in batches of at most `max_batch_size` (one request may
    hold more instances than that); return the outputs in order."""
    outputs = []
    for start in range(0, len(tensors), max_batch_size):
        chunk = tensors[start : start + max_batch_size]
        began = time.perf_counter()
        outputs.append(pipeline.predict(chunk))
        if on_batch is not None:
            on_batch(len(chunk), time.perf_counter() - began)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
