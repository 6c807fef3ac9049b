"""V2 tensors: an input tensor's rows become the instances a V1 client would send, and
predictions become output tensors, as JSON data or binary data."""

import numpy as np
import pytest

from torchexp.serving.pipeline import RequestError
from torchexp.serving.tensors import datatype_of, predictions_to_tensors, read_instances, tensor_bytes


def length_prefixed(*texts: str) -> bytes:
    return b"".join(len(text.encode()).to_bytes(4, "little") + text.encode() for text in texts)


def test_rows_are_instances_as_nested_lists_of_the_datatypes_python_values():
    assert read_instances("x", [2, 2], "UINT8", [1, 2, 3, 4], None) == [[1, 2], [3, 4]]
    assert read_instances("x", [2, 2], "FP32", [[1, 2], [3, 4.5]], None) == [[1.0, 2.0], [3.0, 4.5]]
    assert read_instances("x", [3], "BOOL", [True, False, True], None) == [True, False, True]
    assert read_instances("x", [2, 1], "BYTES", [["def "], ["ab"]], None) == [["def "], ["ab"]]
    # FP32 data is rounded to FP32, as binary data is: JSON and binary requests read alike.
    (value,) = read_instances("x", [1], "FP32", [0.1], None)
    assert value == float(np.float32(0.1)) != 0.1


def test_binary_data_is_little_endian_values_or_length_prefixed_texts():
    values = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert read_instances("x", [2, 3], "INT16", None, values.astype("<i2").tobytes()) == values.tolist()
    assert read_instances("x", [2], "BYTES", None, length_prefixed("héllo", "")) == ["héllo", ""]
    with pytest.raises(
        RequestError,
        match='^input "x" has 5 bytes of binary data, not a whole number of INT16 values \\(2 bytes each\\)$',
    ):
        read_instances("x", [2], "INT16", None, bytes(5))
    with pytest.raises(RequestError, match='^input "x" has a BYTES element of 9 bytes that runs past its binary data$'):
        read_instances("x", [1], "BYTES", None, (9).to_bytes(4, "little") + b"abc")
    with pytest.raises(RequestError, match='^input "x" has a BYTES element that is not UTF-8 text$'):
        read_instances("x", [1], "BYTES", None, b"\x01\x00\x00\x00\xff")


@pytest.mark.parametrize(
    "datatype, data, sentence",
    [
        ("INT8", [-129], 'input "x" is INT8, from -128 to 127: it holds -129'),
        ("BOOL", [1], 'input "x" is BOOL: its data must be true or false'),
        ("FP16", ["1.5"], 'input "x" is FP16: its data must be numbers'),
        ("BYTES", [3], 'input "x" is BYTES: its data must be texts'),
    ],
)
def test_data_of_another_kind_than_the_datatype_is_refused(datatype, data, sentence):
    with pytest.raises(RequestError, match=f"^{sentence}$") as raised:
        read_instances("x", [1], datatype, data, None)
    assert raised.value.status == 400


def test_predictions_become_one_tensor_per_key_or_one_output():
    tensors = predictions_to_tensors(
        [
            {"label": 7, "probabilities": [0.25, 0.75], "name": "seven"},
            {"label": 1, "probabilities": [0.5, 0.5], "name": "one"},
        ]
    )
    assert {name: (datatype_of(array), array.shape) for name, array in tensors.items()} == {
        "label": ("INT64", (2,)),
        "probabilities": ("FP64", (2, 2)),
        "name": ("BYTES", (2,)),
    }
    assert tensors["probabilities"].ravel().tolist() == [0.25, 0.75, 0.5, 0.5]
    (output,) = predictions_to_tensors([[1.5, 2.5], [3.5, 4.5]]).values()
    assert (datatype_of(output), output.shape) == ("FP64", (2, 2))


def test_values_that_are_no_tensor_become_their_json_text():
    tensors = predictions_to_tensors([{"boxes": [[1, 2]], "mixed": 1}, {"boxes": [], "mixed": "one", "extra": True}])
    assert datatype_of(tensors["boxes"]) == "BYTES" and tensors["boxes"].tolist() == ["[[1,2]]", "[]"]
    assert tensors["mixed"].tolist() == ["1", '"one"']  # numpy would have made the 1 a text
    assert tensors["extra"].tolist() == ["null", "true"]  # a key some predictions lack


def test_output_tensors_as_binary_data():
    assert tensor_bytes(np.array([1.5, -2.0])) == np.array([1.5, -2.0], dtype="<f8").tobytes()
    assert tensor_bytes(np.array(["ab", "é"], dtype=object)) == length_prefixed("ab", "é")
