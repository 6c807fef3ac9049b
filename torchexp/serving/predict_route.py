"""The predict path, answered in front of FastAPI.

A profile of `serve` under 32 clients put more than half of the event loop's time in
FastAPI's layers (its telemetry check, which reads the environment on every request, its
middleware stack, routing, the endpoint's dependency resolution) and a quarter in the
standard library's JSON parser; the model's own work ran on the batch thread. The app is
a `ServingApp`: FastAPI, whose first step hands `POST /v1/models/<name>:predict` for the
served model to `PredictRoute`, plain ASGI that reads the body, parses it with orjson,
queues the instances and sends the batcher's JSON answer, recording the request's metrics
itself. Every other request, a predict for another name included, goes through FastAPI,
whose predict route documents this one in the OpenAPI schema.
"""

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI

from torchexp.errors import first_line
from torchexp.serving.answers import check_instances
from torchexp.serving.batcher import Batcher
from torchexp.serving.metrics import ServerMetrics
from torchexp.serving.pipeline import RequestError

PREDICT_ENDPOINT = "/v1/models/{name}:predict"  # the route template, as metrics label it
# Bodies above this size are parsed on a worker thread, so that one large request does not
# hold up every other request on the event loop.
PARSE_ON_LOOP_BYTES = 256 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


class ServingApp(FastAPI):
    """FastAPI, answering the served model's predictions before its middleware stack.

    Attributes:
        predict_route: answers them; None (until `create_app` sets it) leaves every
            request to FastAPI.
    """

    predict_route: "PredictRoute | None" = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self.predict_route is not None and self.predict_route.matches(scope):
            await self.predict_route.answer(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class PredictRoute:
    """Answers the served model's predict requests as plain ASGI.

    Args:
        name: the served model's name.
        batcher: runs the predictions.
        metrics: where the request is counted and timed.
        max_body_bytes: larger request bodies are refused with 413 before being read whole.
    """

    def __init__(self, name: str, batcher: Batcher, metrics: ServerMetrics, max_body_bytes: int):
        self.path = PREDICT_ENDPOINT.format(name=name)
        self.batcher = batcher
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    def matches(self, scope: MutableMapping[str, Any]) -> bool:
        """Whether the request is a prediction of the served model."""
        return scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) == self.path

    async def answer(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """Read, parse and queue the request, and send its answer or its error."""
        started = asyncio.get_running_loop().time()
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
            instances = (
                await asyncio.to_thread(parse_instances, body)
                if len(body) > PARSE_ON_LOOP_BYTES
                else parse_instances(body)
            )
            status, answer = 200, await self.batcher.submit(instances)
        except ClientGone:
            return
        except RequestError as error:
            status, answer = error.status, json.dumps({"error": str(error)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})
        self.metrics.record_request(PREDICT_ENDPOINT, status, asyncio.get_running_loop().time() - started)


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The request's path below the app's mount point, as Starlette's router matches it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def read_body(scope: MutableMapping[str, Any], receive: Any, limit: int) -> bytes:
    """Return the request's body, refusing (413) one over `limit` bytes before reading it whole.

    Raises:
        RequestError: 413, from the declared Content-Length or while reading.
        ClientGone: the client disconnected.
    """
    declared = next((value for key, value in scope["headers"] if key == b"content-length"), b"")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"the request body is {int(declared)} bytes, over this server's limit of {limit} (--max-body-bytes)"
        )
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over this server's limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_instances(body: bytes) -> list[Any]:
    """Return the `instances` list of a predict request's body.

    orjson reads JSON several times faster than the standard library; what it refuses is
    read again by the standard library, whose sentence names the fault, and which accepts
    the NaN and Infinity that Python's own `json.dumps` writes (the project's hook then
    says what is wrong with them).

    Raises:
        RequestError: 400 when the body is not JSON or has no non-empty `instances` list.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = parse_with_stdlib(body)
    if not isinstance(document, dict) or "instances" not in document:
        raise RequestError(400, 'the request body must be a JSON object with "instances": a list of instances')
    return check_instances(document["instances"])


def parse_with_stdlib(body: bytes) -> Any:
    """Parse `body` with the standard library's JSON reader.

    Raises:
        RequestError: 400 naming why the body is not JSON.
    """
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestError(400, "the request body is JSON nested too deeply to read") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, f"the request body is not JSON: {first_line(error)}") from None
