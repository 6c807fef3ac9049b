"""The Open Inference Protocol (KServe V2) over HTTP, beside the KServe V1 routes.

    GET  /v2                            the server's name, version and extensions
    GET  /v2/health/live                200 while the process answers
    GET  /v2/health/ready               200 once the model is warmed up; 503 before that and while stopping
    GET  /v2/models/<name>              the model's platform, input and outputs (name, datatype, shape)
    GET  /v2/models/<name>/ready        the model's readiness, as /v2/health/ready
    POST /v2/models/<name>/infer        input tensors in, output tensors out

An inference request holds one input tensor whose rows are the instances (tensors.py says
how they map, and how predictions become output tensors); they take the V1 predict path,
batched with V1 requests: the project's schema, `serve_preprocess`, the model and
`serve_postprocess`, so that both protocols predict alike. Tensor data may be JSON or, as
Triton's client sends it by default, binary (its `binary_tensor_data` extension). Every
error is `{"error": "<one sentence>"}`: 400 for a request that does not fit the protocol or
the model, 404 for another model's name, 413, 500 and 503 as for V1.

These routes are FastAPI's; the V1 predict route, answered in front of FastAPI
(predict_route.py), stays the faster of the two.
"""

import asyncio
import functools
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from torchexp.serving.batcher import Batcher
from torchexp.serving.pipeline import RequestError, describe_errors
from torchexp.serving.predict_route import PARSE_ON_LOOP_BYTES, ClientGone, parse_with_stdlib, read_body
from torchexp.serving.schemas import (
    COMPONENTS,
    add_openapi_definitions,
    describe_name_parameter,
    describe_pydantic_fault,
    split_definitions,
)
from torchexp.serving.tensors import (
    DATATYPES,
    datatype_of,
    describe_input,
    describe_outputs,
    predictions_to_tensors,
    read_instances,
    tensor_bytes,
)
from torchexp.version import __version__

HEADER_LENGTH = "inference-header-content-length"  # Triton's binary extension: the JSON's length in the body


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Annotated[int, Field(ge=0)] | None = None


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
    parameters: InputParameters = InputParameters()
    data: Any = None


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data: StrictBool | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters = OutputParameters()


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: StrictBool = False


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: RequestParameters = RequestParameters()
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveBody(BaseModel):
    live: bool


class ReadyBody(BaseModel):
    ready: bool
    name: str | None = None
    error: str | None = None


class InferenceErrorBody(BaseModel):
    error: str


REQUEST = TypeAdapter(InferenceRequest)
ERRORS = describe_errors(
    InferenceErrorBody, "Not an inference request, or tensors that do not fit the model (the sentence names the fault)"
)


def add_open_inference_routes(
    app: FastAPI,
    card: Any,
    batcher: Batcher,
    max_body_bytes: int,
    check_name: Callable[[str], None],
    is_ready: Callable[[], bool],
) -> None:
    """Add the V2 routes to the server's app.

    Args:
        app: the app of `protocol.create_app`.
        card: the served model's card (its name and runtime).
        batcher: runs the predictions, for both protocols.
        max_body_bytes: larger request bodies are refused with 413 before being read whole.
        check_name: raises a 404 RequestError unless a name is the served model's.
        is_ready: whether the model is warmed up and the server not stopping.
    """
    request_schema, definitions = split_definitions(REQUEST.json_schema(ref_template=COMPONENTS + "{model}"))
    add_openapi_definitions(app, definitions)
    name_parameter = describe_name_parameter(card.name)
    model_input = describe_input(batcher.pipeline)

    def readiness(name: str | None = None) -> JSONResponse:
        ready = is_ready()
        body = {"ready": ready, **({"name": name} if name else {})}
        if not ready:
            body["error"] = (
                f"not ready: {batcher.failure or ('stopping' if app.state.stopping else 'warming up the model')}"
            )
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v2", response_model=ServerMetadata, tags=["Open Inference Protocol (V2)"])
    async def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": "torchexp", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=LiveBody, tags=["Open Inference Protocol (V2)"])
    async def server_live() -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        response_model=ReadyBody,
        responses={503: {"model": ReadyBody, "description": "Warming up, stopping, or failed to warm up"}},
        tags=["Open Inference Protocol (V2)"],
    )
    async def server_ready() -> JSONResponse:
        """200 once the model is warmed up, 503 before that and while stopping."""
        return readiness()

    @app.get(
        "/v2/models/{name}/ready",
        response_model=ReadyBody,
        responses={
            404: ERRORS[404],
            503: {"model": ReadyBody, "description": "Warming up, stopping, or failed to warm up"},
        },
        openapi_extra={"parameters": name_parameter},
        tags=["Open Inference Protocol (V2)"],
    )
    async def model_ready(name: str) -> JSONResponse:
        """The model's readiness: 200 once warmed up, 503 before that and while stopping."""
        check_name(name)
        return readiness(name)

    @app.get(
        "/v2/models/{name}",
        response_model=ModelMetadata,
        responses={404: ERRORS[404]},
        openapi_extra={"parameters": name_parameter},
        tags=["Open Inference Protocol (V2)"],
    )
    async def model_metadata(name: str) -> dict[str, Any]:
        """The model's platform, its input and its outputs; the outputs are known once the
        model has answered its example at warm-up."""
        check_name(name)
        return {
            "name": card.name,
            "platform": f"torchexp_{card.runtime}",
            "inputs": [model_input],
            "outputs": describe_outputs(batcher.pipeline.example_answer),
        }

    @app.post(
        "/v2/models/{name}/infer",
        response_model=InferenceResponse,
        responses={
            **ERRORS,
            200: {
                "content": {"application/octet-stream": {}},
                "description": "Binary outputs when asked for (binary_data)",
            },
        },
        openapi_extra={
            "parameters": name_parameter,
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}},
        },
        tags=["Open Inference Protocol (V2)"],
    )
    async def infer(name: str, request: Request) -> Response:
        """Input tensors in, output tensors out: each row of the one input tensor is one instance."""
        check_name(name)
        try:
            body = await read_body(request.scope, request.receive, max_body_bytes)
        except ClientGone:
            return Response(status_code=400)  # nobody reads it
        parse = functools.partial(read_request, body, request.headers.get(HEADER_LENGTH))
        inference, instances = await asyncio.to_thread(parse) if len(body) > PARSE_ON_LOOP_BYTES else parse()
        answer = await batcher.submit(instances)
        return write_response(card.name, inference, orjson.loads(answer)["predictions"])


def read_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, list[Any]]:
    """Return an inference request's body and the instances of its input.

    Args:
        body: the HTTP body: JSON, or JSON then binary tensor data.
        header_length: the Inference-Header-Content-Length header: the JSON's length in a
            body with binary data, or None.

    Raises:
        RequestError: 400 naming what does not fit the protocol.
    """
    json_part, binary = split_body(body, header_length)
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError:
        document = parse_with_stdlib(json_part)
    try:
        inference = REQUEST.validate_python(document)
    except ValidationError as error:
        fault = error.errors(include_url=False)[0]
        whose = "the inference request's " if fault["loc"] else ""
        raise RequestError(
            400, whose + describe_pydantic_fault(fault["loc"], fault, whole="the inference request")
        ) from None
    if len(inference.inputs) != 1:
        names = ", ".join(f'"{tensor.name}"' for tensor in inference.inputs)
        raise RequestError(
            400, f"the model takes one input tensor, whose rows are the instances, not {len(inference.inputs)}: {names}"
        )
    (tensor,) = inference.inputs
    size = tensor.parameters.binary_data_size
    if size is None and tensor.data is None:
        raise RequestError(400, f'input "{tensor.name}" has no "data", and no binary_data_size for binary data')
    if size is not None and size != len(binary):
        raise RequestError(
            400,
            f'input "{tensor.name}" has binary_data_size {size} where the body holds {len(binary)} bytes '
            "after its JSON",
        )
    if size is None and binary:
        raise RequestError(
            400, f"the body holds {len(binary)} bytes after its JSON that no input's binary_data_size claims"
        )
    return inference, read_instances(
        tensor.name, tensor.shape, tensor.datatype, tensor.data, binary if size is not None else None
    )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Return the JSON of a body and the binary data after it.

    Raises:
        RequestError: 400 when the header's length is not a number within the body.
    """
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestError(
            400,
            "the Inference-Header-Content-Length header must be the JSON's length "
            f"in a body of {len(body)} bytes, not {header_length!r}",
        )
    return body[: int(header_length)], body[int(header_length) :]


def write_response(model_name: str, inference: InferenceRequest, predictions: list[Any]) -> Response:
    """Return the answer of an inference request: the outputs it asks for (all by
    default), each as JSON data or, where asked, binary data after the JSON.

    Raises:
        RequestError: 400 when the request asks for an output the model has not.
    """
    tensors = predictions_to_tensors(predictions)
    requested = inference.outputs if inference.outputs is not None else [RequestOutput(name=name) for name in tensors]
    outputs, chunks = [], []
    for output in requested:
        if output.name not in tensors:
            raise RequestError(
                400, f'output "{output.name}" is not an output of this model; its outputs: {", ".join(tensors)}'
            )
        array = tensors[output.name]
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype_of(array), "shape": list(array.shape)}
        binary = output.parameters.binary_data
        if binary if binary is not None else inference.parameters.binary_data_output:
            chunks.append(tensor_bytes(array))
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    header = orjson.dumps(
        {"model_name": model_name, **({"id": inference.id} if inference.id is not None else {}), "outputs": outputs}
    )
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
