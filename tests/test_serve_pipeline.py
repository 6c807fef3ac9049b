"""The answer's JSON: orjson's speed with the standard library's refusals."""

import json
import math

import pytest
import torch

from torchexp.serving.pipeline import RequestError, encode_json


@pytest.mark.parametrize(
    "document",
    [
        {"predictions": [{"label": 7, "probabilities": [0.1, 1e-05, 0.8999899999999999]}]},
        {"predictions": [None, {"label": None}]},  # a project's own null is kept
        {"predictions": [{1: "a"}]},  # a key orjson does not write: the standard library's "1"
        {"predictions": ["é", [True, False]]},
    ],
)
def test_answers_read_back_as_the_standard_library_writes_them(document):
    assert json.loads(encode_json(document)) == json.loads(json.dumps(document))


@pytest.mark.parametrize(
    "value, reason",
    [
        (math.nan, "Out of range float values are not JSON compliant"),
        (-math.inf, "Out of range float values are not JSON compliant"),
        (torch.ones(2), "Object of type Tensor is not JSON serializable"),
    ],
)
def test_what_is_not_json_is_a_500_sentence(value, reason):
    with pytest.raises(RequestError) as raised:
        encode_json({"predictions": [{"probabilities": [0.5, value]}]})
    assert raised.value.status == 500
    assert str(raised.value).startswith(f"the prediction cannot be sent as JSON: {reason}")
