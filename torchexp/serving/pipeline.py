"""One request's instances through the project's serving hooks and a predictor.

The project's Runner may declare what an instance is (`serve_schema`, checked first: see
schemas.py), turns each instance into a tensor (`serve_preprocess`) and each output row into
a JSON prediction (`serve_postprocess`); a predictor runs the stacked batch. The batch
worker thread calls all of it, never the event loop.
"""

import json
from typing import Any, Protocol

import orjson
import torch

from torchexp.errors import first_line
from torchexp.serving.schemas import InvalidInstance, load_schema


def describe_errors(body: Any, bad_request: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI's responses of a predict route: each status it answers, with `body` (a pydantic
    model of the error) and what it means; `bad_request` says what a 400 is for this protocol."""
    return {
        status: {"model": body, "description": description}
        for status, description in (
            (400, bad_request),
            (404, "No model of that name on this server"),
            (413, "The body is over the server's --max-body-bytes"),
            (500, "The model or the project's hooks failed"),
            (503, "The queue is full, or the model is not available"),
        )
    }


class RequestError(Exception):
    """A request the server answers with an HTTP error status and one sentence.

    Attributes:
        status: the HTTP status code.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Predictor(Protocol):
    """Runs the model on a stacked batch; `runtime` names it ("torch", or an export format's name)."""

    runtime: str

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the model's output for `batch` (first dimension: the instances)."""


class Pipeline:
    """The project's hooks around a predictor.

    Args:
        runner: the project's Runner (its serve_* hooks; its model is not used here).
        predictor: what runs a batch.

    Raises:
        ProjectError: the Runner's `serve_schema` declares something that is not a schema.
    """

    def __init__(self, runner: Any, predictor: Predictor):
        self.runner = runner
        self.predictor = predictor
        self.schema = load_schema(runner)  # None when the project declares none: nothing is checked
        # The shape of one preprocessed instance, learnt from the project's example at
        # warm-up: instances of another shape are refused before they reach the model.
        self.input_shape: tuple[int, ...] | None = None
        self.example_answer: bytes | None = None  # the example's answer at warm-up, for the V2 protocol's metadata

    def prepare(self, instances: list[Any]) -> list[torch.Tensor]:
        """Check the instances against the project's schema, if it declares one, then
        preprocess each with `serve_preprocess`.

        Raises:
            RequestError: 400 naming the first bad instance, e.g. "instances[3]: ...".
        """
        if self.schema is not None:
            try:
                self.schema.validate(instances)
            except InvalidInstance as error:
                raise RequestError(400, f"instances[{error.index}]: {error}") from None
        tensors = []
        for index, instance in enumerate(instances):
            try:
                tensor = self.runner.serve_preprocess(instance)
            except ValueError as error:
                raise RequestError(400, f"instances[{index}]: {first_line(error)}") from error
            if self.input_shape is not None and tuple(tensor.shape) != self.input_shape:
                raise RequestError(
                    400,
                    f"instances[{index}]: its shape {list(tensor.shape)} is not the model's input shape "
                    f"{list(self.input_shape)}",
                )
            tensors.append(tensor)
        return tensors

    def predict(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Run the predictor on the instances' tensors stacked into one batch."""
        return self.predictor.predict(torch.stack(tensors))

    def answer(self, outputs: torch.Tensor, tensors: list[torch.Tensor], instances: list[Any]) -> bytes:
        """Return the JSON body `{"predictions": [...]}` of one request.

        Raises:
            RequestError: 500 when a prediction is not JSON data (NaN, infinity, a tensor).
        """
        return encode_json(
            {
                "predictions": [
                    self.runner.serve_postprocess(*row) for row in zip(outputs, tensors, instances, strict=True)
                ]
            }
        )

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the project's `serve_example` through every step at each batch size, so
        that the first requests do not pay for allocations and kernel choices; a project
        without an example is not warmed up.

        Raises:
            RequestError: the example itself fails, a bug of the project's hooks.
        """
        example = self.runner.serve_example()
        if example is None:
            return
        tensor = self.prepare([example])[0]
        self.input_shape = tuple(tensor.shape)
        for size in batch_sizes:
            outputs = self.predict([tensor] * size)
            self.example_answer = self.answer(outputs[:1], [tensor], [example])


def encode_json(document: Any) -> bytes:
    """Return `document` as compact JSON, refusing NaN and infinity.

    orjson writes JSON several times faster than the standard library, but writes NaN and
    infinity as null where the standard library refuses them. A body with a null in it, or
    one orjson cannot write (a non-text key), is written again by the standard library,
    which decides: a null of the project's own is kept, a NaN refused.

    Raises:
        RequestError: 500 when the document is not JSON data (NaN, infinity, a tensor).
    """
    try:
        body = orjson.dumps(document)
        if b"null" not in body:
            return body
    except TypeError:
        pass
    try:
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise RequestError(500, f"the prediction cannot be sent as JSON: {first_line(error)}") from error
