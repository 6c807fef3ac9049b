"""The HTTP API: KServe V1 / TF Serving's REST protocol, health, metrics and the project's page.

    GET  /                          KServe V1's server liveness, {"status": "alive"}; a request
                                    whose Accept header prefers text/html (a browser's) gets
                                    the project's page instead, or, when the project has none,
                                    torchexp's page of this API (offline, unlike /docs)
    GET  /static/<file>             the files of the project's page, when it has one
    GET  /v1/models/<name>          {"name", "ready", ...}: the model's metadata and readiness
    POST /v1/models/<name>:predict  {"instances": [...]} -> {"predictions": [...]}, answered in
                                    front of FastAPI (predict_route.py)
    GET  /livez, /readyz            liveness (the process answers) apart from readiness
                                    (warmed up and not stopping), for probes and load balancers
    GET  /metrics                   Prometheus text format
    GET  /docs, /openapi.json       FastAPI's OpenAPI page and schema, with the project's
                                    instance schema (its Runner's `serve_schema`), if any
    GET, POST /v2/...               the Open Inference Protocol (KServe V2): open_inference.py

GET / follows KServe's own REST client, whose V1 liveness check is a GET of the server's
base URL with httpx's default `Accept: */*`, reading `status` from the JSON answer; a tie
between JSON and HTML goes to JSON (page.py says how the Accept header is read).

Every error is answered as `{"error": "<one sentence>"}` with a 4xx or 5xx status.
"""

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from torchexp.serving.batcher import Batcher
from torchexp.serving.metrics import ServerMetrics
from torchexp.serving.open_inference import add_open_inference_routes
from torchexp.serving.page import PAGE_POLICY, describe_api, load_page, prefers_html
from torchexp.serving.pipeline import RequestError, describe_errors
from torchexp.serving.predict_route import PredictRoute, ServingApp
from torchexp.serving.schemas import add_openapi_definitions, describe_name_parameter
from torchexp.version import __version__

DESCRIPTION = (
    "A torchexp release served with the KServe V1 / TF Serving REST protocol, and with the Open Inference "
    "Protocol (KServe V2) under /v2.\n\n"
    'GET / is the server\'s liveness as KServe V1 defines it, `{"status": "alive"}`, for every '
    "client whose Accept header does not prefer text/html to application/json (no header, "
    "`*/*`, `application/json`). A browser, whose Accept header does, gets the project's "
    "page there instead, or is sent to this page when the project has none."
)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What the server says about the model it serves."""

    name: str  # the experiment's name: the <name> in /v1/models/<name>
    epoch: int  # the release's epoch (its step, for an experiment trained by steps)
    runtime: str  # "torch" or "onnx"
    device: str
    threads: int
    unit: str = "epoch"  # what `epoch` counts: "epoch" or "step"


class ErrorBody(BaseModel):
    error: str


class AliveBody(BaseModel):
    status: Literal["alive"]


class PredictBody(BaseModel):
    predictions: list[Any]


class ModelBody(BaseModel):
    name: str
    ready: bool
    epoch: int
    unit: Literal["epoch", "step"]
    runtime: str
    device: str
    threads: int
    max_batch_size: int


ERRORS = describe_errors(ErrorBody, "Not JSON, no `instances` list, or a bad instance (the sentence names it)")


def create_app(card: ModelCard, batcher: Batcher, metrics: ServerMetrics, max_body_bytes: int) -> ServingApp:
    """Build the server's FastAPI app around a batcher.

    The batcher's worker starts with the app (lifespan startup) and, at shutdown, finishes
    what is queued before the app stops.

    Args:
        card: the model's name, epoch, runtime, device and threads.
        batcher: runs the predictions; its pipeline's runner supplies the project's hooks.
        metrics: the server's metrics, which the app records and serves.
        max_body_bytes: larger request bodies are refused with 413 before being read whole.

    Raises:
        TorchexpError: the project's `serve_page` names a folder without a readable index.html.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.stopping = False
        batcher.start()
        yield
        app.state.stopping = True
        await asyncio.to_thread(batcher.stop)

    app = ServingApp(
        title=f"torchexp: {card.name}",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.stopping = False  # set at shutdown, and by the server when a stop is asked for
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.predict_route = PredictRoute(card.name, batcher, metrics, max_body_bytes)  # records its own metrics
    add_error_handlers(app)
    add_model_routes(app, card, batcher)
    add_open_inference_routes(
        app, card, batcher, max_body_bytes, lambda name: check_name(name, card), lambda: is_ready(app, batcher)
    )
    add_health_routes(app, batcher, metrics)
    add_root(app, card, batcher.pipeline.runner)
    return app


def add_model_routes(app: FastAPI, card: ModelCard, batcher: Batcher) -> None:
    """The KServe V1 routes: metadata/readiness and predict."""
    example = batcher.pipeline.runner.serve_example()
    # The project's declared instance, if any (its definitions become OpenAPI components).
    items, definitions = batcher.pipeline.schema.openapi() if batcher.pipeline.schema is not None else ({}, {})
    add_openapi_definitions(app, definitions)
    instances_schema = {
        "type": "array",
        "minItems": 1,
        "items": items,
        "description": "Instances as the project's serve_preprocess hook reads them.",
    }
    name_parameter = describe_name_parameter(card.name)
    request_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["instances"], "properties": {"instances": instances_schema}},
                **({"example": {"instances": [example]}} if example is not None else {}),
            }
        },
    }

    @app.get(
        "/v1/models/{name}",
        response_model=ModelBody,
        responses={404: ERRORS[404]},
        openapi_extra={"parameters": name_parameter},
    )
    async def model_metadata(name: str) -> dict[str, Any]:
        """The model's name, readiness, release epoch and runtime."""
        check_name(name, card)
        ready = is_ready(app, batcher)
        return {**dataclasses.asdict(card), "ready": ready, "max_batch_size": batcher.max_batch_size}

    @app.post(
        "/v1/models/{name}:predict",
        response_model=PredictBody,
        responses=ERRORS,
        openapi_extra={"parameters": name_parameter, "requestBody": request_body},
    )
    async def predict(name: str) -> Response:
        """Predict: `{"instances": [...]}` in, `{"predictions": [...]}` out, one per instance, in order."""
        # PredictRoute answers the served model's predictions before routing (predict_route.py);
        # a request that gets here names another model.
        check_name(name, card)
        raise RuntimeError(f"PredictRoute did not answer a predict request for {name!r}")


def add_health_routes(app: FastAPI, batcher: Batcher, metrics: ServerMetrics) -> None:
    """Liveness, readiness and Prometheus metrics."""

    @app.get("/livez")
    async def livez() -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    @app.get(
        "/readyz", responses={503: {"model": ErrorBody, "description": "Warming up, stopping, or failed to warm up"}}
    )
    async def readyz() -> Any:
        """200 once the model is warmed up, 503 before that and while stopping."""
        if is_ready(app, batcher):
            return {"ready": True}
        reason = batcher.failure or ("stopping" if app.state.stopping else "warming up the model")
        return JSONResponse({"error": f"not ready: {reason}"}, status_code=503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        """Requests, latency, queue wait, batch sizes and errors, in Prometheus' text format."""
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)


def add_root(app: FastAPI, card: ModelCard, runner: Any) -> None:
    """GET /: liveness for API clients, the project's page (files under /static) for browsers."""
    page = load_page(runner, card.name)
    if page is not None:
        app.mount("/static", StaticFiles(directory=page.folder), name="static")
    # The answer depends on the Accept header: caches must not give one client's to another.
    vary = {"Vary": "Accept"}

    @app.get(
        "/",
        summary="Liveness (KServe V1), or the project's page for a browser",
        response_model=AliveBody,
        responses={200: {"content": {"text/html": {}}}},
    )
    async def root(request: Request) -> Response:
        """Liveness, as KServe V1 defines it: `{"status": "alive"}` while the process answers.
        A request whose Accept header prefers text/html (a browser's) gets the project's
        page instead, or, when the project has none, torchexp's page of this API."""
        if not prefers_html(request.headers.get("accept", "")):
            return JSONResponse({"status": "alive"}, headers=vary)
        index = page.index if page is not None else describe_api(card.name, list_routes(app))
        return HTMLResponse(index, headers={**vary, "Content-Security-Policy": PAGE_POLICY})


def list_routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, summary) of the app's API routes, as OpenAPI lists them."""
    return [
        (method, route.path, route.summary or route.name.replace("_", " "))
        for route in app.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in sorted(route.methods or ())
    ]


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error as {"error": "<one sentence>"}."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        messages = {
            404: f"{request.url.path} is not a path of this server: see /docs",
            405: f"{request.method} is not allowed on {request.url.path}: see /docs",
        }
        message = messages.get(error.status_code, str(error.detail))
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)


def check_name(name: str, card: ModelCard) -> None:
    """Raise a 404 RequestError unless `name` is the served model's."""
    if name != card.name:
        raise RequestError(404, f"model {name!r} is not served here: this server serves {card.name!r}")


def is_ready(app: FastAPI, batcher: Batcher) -> bool:
    return batcher.ready.is_set() and batcher.failure is None and not app.state.stopping


class MetricsMiddleware:
    """Counts every HTTP request by route template and status code, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_recording_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            # The router puts the matched route in the scope; unmatched paths share one label.
            endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.record_request(endpoint, status, time.perf_counter() - started)
