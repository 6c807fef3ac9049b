"""Tensors of the Open Inference Protocol (KServe V2): inputs into instances, predictions into outputs.

A V2 input tensor carries a batch: its first dimension counts the instances, and each row
(the tensor without that dimension) becomes one instance exactly as a KServe V1 client
would send it, as nested lists of numbers (UINT8 28 x 28 rows become lists of integers,
FP32 ones lists of floats) or, for BYTES, as text. The instances then take the V1 path:
the project's schema, `serve_preprocess`, the batch, `serve_postprocess`.

The predictions come back as output tensors, one row per instance: one tensor per key
where the predictions are JSON objects (MNIST's `{"label", "probabilities"}` gives "label",
INT64 [N], and "probabilities", FP64 [N, 10]), else one tensor "output" of the predictions
themselves. A key whose values are not numbers, booleans or texts of one shape across the
instances is sent as BYTES [N], each element the value's JSON text.

Data may come as JSON (flattened in row-major order, or nested) or, as Triton's binary
tensor data extension sends it, as raw little-endian bytes after the JSON (BYTES elements
each preceded by its length, 4 bytes little-endian). The model's metadata describes the
input from the project's example or schema, and the outputs from the example's prediction.
"""

import json
import math
import struct
from typing import Any

import numpy as np
import orjson

from torchexp.serving.pipeline import RequestError
from torchexp.serving.schemas import COMPONENTS

# The protocol's datatypes and their numpy types; BYTES elements are texts (numpy objects).
DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
# numpy kinds the JSON data of each datatype may hold: integers for an integer type, any
# number for a float type, true and false for BOOL.
ACCEPTED_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
OUTPUT_DATATYPES = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}
LENGTH = struct.Struct("<I")  # the length before each BYTES element in binary data
INPUT_NAME = "input"  # the name the metadata gives the input; a request may name it otherwise


def read_instances(name: str, shape: list[int], datatype: str, data: Any, raw: bytes | None) -> list[Any]:
    """Return the instances of one input tensor: its rows, as a V1 client sends them.

    Args:
        name: the input's name, for messages.
        shape: its shape; the first dimension counts the instances.
        datatype: one of DATATYPES.
        data: its JSON data (flattened or nested), or None when it came as binary data.
        raw: its binary data, or None.

    Raises:
        RequestError: 400 when the data does not fit the datatype or the shape.
    """
    if not shape:
        raise RequestError(
            400, f'input "{name}" has the shape [] of one value: its first dimension must count the instances'
        )
    array = read_binary(name, datatype, raw) if raw is not None else read_json(name, datatype, data)
    expected = math.prod(shape)
    if array.size != expected:
        raise RequestError(400, f'input "{name}" holds {array.size} values where its shape {shape} needs {expected}')
    if expected == 0:
        raise RequestError(400, f'input "{name}" holds no instances: its shape is {shape}')
    return array.reshape(shape).tolist()


def read_json(name: str, datatype: str, data: Any) -> np.ndarray:
    """Return the JSON data of an input as a flat array of its datatype.

    Raises:
        RequestError: 400 for values of another kind than the datatype's, out of its range,
            or rows of unequal lengths.
    """
    if datatype == "BYTES":
        values = flatten(data)
        if not all(isinstance(value, str) for value in values):
            raise RequestError(400, f'input "{name}" is BYTES: its data must be texts')
        return np.array(values, dtype=object)
    try:
        array = np.asarray(data)
    except (
        ValueError,
        TypeError,
        RecursionError,
    ):  # rows of unequal lengths, nesting deeper than numpy's 64 dimensions
        raise RequestError(
            400, f'input "{name}" holds rows of unequal lengths: its data must be a tensor, flattened or nested'
        ) from None
    target = np.dtype(DATATYPES[datatype])
    if array.size and array.dtype.kind not in ACCEPTED_KINDS[target.kind]:
        wanted = {"b": "true or false", "u": "integers", "i": "integers", "f": "numbers"}[target.kind]
        raise RequestError(400, f'input "{name}" is {datatype}: its data must be {wanted}')
    if target.kind in "iu" and array.size:
        limits = np.iinfo(target)  # type: ignore[type-var]  # numpy's stubs cannot narrow a dtype by its kind
        low, high = array.min(), array.max()
        if low < limits.min or high > limits.max:
            raise RequestError(
                400,
                f'input "{name}" is {datatype}, from {limits.min} to {limits.max}: '
                f"it holds {low if low < limits.min else high}",
            )
    return array.astype(target).ravel()


def read_binary(name: str, datatype: str, raw: bytes) -> np.ndarray:
    """Return the binary data of an input as a flat array of its datatype.

    Raises:
        RequestError: 400 when the bytes are not a whole number of values.
    """
    if datatype == "BYTES":
        return np.array(split_bytes(name, raw), dtype=object)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise RequestError(
            400,
            f'input "{name}" has {len(raw)} bytes of binary data, not a whole number of {datatype} values '
            f"({dtype.itemsize} bytes each)",
        )
    return np.frombuffer(raw, dtype=dtype)


def split_bytes(name: str, raw: bytes) -> list[str]:
    """Return the texts of BYTES binary data: each element's 4-byte length, then its UTF-8 bytes.

    Raises:
        RequestError: 400 when a length runs past the data, or an element is not UTF-8.
    """
    texts, offset = [], 0
    while offset < len(raw):
        if offset + LENGTH.size > len(raw):
            raise RequestError(400, f'input "{name}" has BYTES binary data that ends inside an element\'s length')
        (length,) = LENGTH.unpack_from(raw, offset)
        offset += LENGTH.size
        if offset + length > len(raw):
            raise RequestError(
                400, f'input "{name}" has a BYTES element of {length} bytes that runs past its binary data'
            )
        try:
            texts.append(raw[offset : offset + length].decode())
        except UnicodeDecodeError:
            raise RequestError(400, f'input "{name}" has a BYTES element that is not UTF-8 text') from None
        offset += length
    return texts


def flatten(data: Any) -> list[Any]:
    """The leaves of nested lists, in row-major order (without recursion: JSON may nest deeply)."""
    leaves, pending = [], [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            leaves.append(item)
    return leaves


def predictions_to_tensors(predictions: list[Any]) -> dict[str, np.ndarray]:
    """Return the output tensors of a request's predictions, by name, each with the
    instances as its first dimension."""
    if predictions and all(isinstance(prediction, dict) for prediction in predictions):
        names = list(dict.fromkeys(key for prediction in predictions for key in prediction))
        columns = {name: [prediction.get(name) for prediction in predictions] for name in names}
    else:
        columns = {"output": predictions}
    return {name: stack_values(values) for name, values in columns.items()}


def stack_values(values: list[Any]) -> np.ndarray:
    """Stack one key's values: a tensor of numbers, booleans or texts when they are all of
    one kind and shape, else BYTES of each value's JSON text."""
    try:
        array = np.array(values)
    except ValueError:  # values of unequal shapes
        array = None
    if array is not None and array.dtype.kind in OUTPUT_DATATYPES:
        return array.astype(np.int64) if array.dtype.kind == "i" else array
    if array is not None and array.dtype.kind == "U":
        texts = np.array(values, dtype=object)
        if all(isinstance(value, str) for value in texts.flat):  # numpy turns numbers among texts into texts
            return texts
    return np.array([json.dumps(value, separators=(",", ":")) for value in values], dtype=object)


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype of an output tensor."""
    return "BYTES" if array.dtype == object else OUTPUT_DATATYPES[array.dtype.kind]


def tensor_bytes(array: np.ndarray) -> bytes:
    """An output tensor as binary data: little-endian values, or BYTES elements each after its length."""
    if array.dtype == object:
        return b"".join(LENGTH.pack(len(encoded)) + encoded for encoded in (value.encode() for value in array.flat))
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def describe_input(pipeline: Any) -> dict[str, Any]:
    """The metadata of the model's input: a batch of instances, shaped as the project's
    example is, or (when the example is not an array) as its schema's array of fixed
    lengths is; [-1], any shape, when neither says."""
    example = pipeline.runner.serve_example()
    if isinstance(example, str):
        return {"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}
    try:
        array = np.asarray(example)
    except ValueError:  # rows of unequal lengths
        array = None
    if array is not None and array.dtype.kind in "biuf":
        return {
            "name": INPUT_NAME,
            "datatype": "BOOL" if array.dtype.kind == "b" else "FP32",
            "shape": [-1, *array.shape],
        }
    shape = None
    if pipeline.schema is not None:
        schema, definitions = pipeline.schema.openapi()
        shape = describe_array(schema, definitions)
    return {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *shape] if shape is not None else [-1]}


def describe_array(schema: Any, definitions: dict[str, dict]) -> list[int] | None:
    """The shape of a JSON Schema's array of numbers (nested arrays of fixed lengths), or
    of the first such array among its alternatives; [] for a number; None for neither."""
    if not isinstance(schema, dict):
        return None
    reference = schema.get("$ref", "")
    if reference.startswith(COMPONENTS):
        return describe_array(definitions.get(reference[len(COMPONENTS) :]), definitions)
    if schema.get("type") in ("number", "integer"):
        return []
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
        shape = describe_array(alternative, definitions)
        if shape is not None:
            return shape
    length = schema.get("minItems")
    if schema.get("type") == "array" and length is not None and schema.get("maxItems") == length:
        inner = describe_array(schema.get("items"), definitions)
        return None if inner is None else [length, *inner]
    return None


def describe_outputs(example_answer: bytes | None) -> list[dict[str, Any]]:
    """The metadata of the model's outputs, from its answer to the project's example; none
    before the warm-up or without an example."""
    if example_answer is None:
        return []
    tensors = predictions_to_tensors(orjson.loads(example_answer)["predictions"])
    return [
        {"name": name, "datatype": datatype_of(array), "shape": [-1, *array.shape[1:]]}
        for name, array in tensors.items()
    ]
