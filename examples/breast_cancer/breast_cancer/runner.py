"""Training, testing and serving breast_cancer: one logit per tumour, positive for malignant.

torchexp runs the loops around these methods: epochs, validation (`train_step` in eval
mode under no_grad), backward and optimizer steps, checkpoints that resume exactly, logs,
TensorBoard and metrics.jsonl.

Outside training (serve, export, load_model) the Data holds only its state, so the model's
size and the serving hooks read the feature names and the normalization statistics from
`self.data.state`, never from the data set.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F

import torchexp
from breast_cancer.data import normalize
from breast_cancer.model import build_model

# The data set's first tumour, a malignant one: the example instance, in the file's order.
FIRST_TUMOUR = (
    17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
    1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
    25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
)


class BreastCancerRunner(torchexp.Runner):
    """Binary cross-entropy on one logit; loss, accuracy and ROC AUC over the test set."""

    def init_model(self, device: torch.device) -> None:
        features = len(self.data.state["features"])
        self.model = build_model(features, self.get_conf("model", "hidden")).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.get_conf("training", "lr"))

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Return the batch's loss and accuracy; torchexp averages them over the epoch's
        samples and logs them as train/<name> and validation/<name>."""
        features, labels = batch
        logits = self.model(features).squeeze(1)
        return {"loss": F.binary_cross_entropy_with_logits(logits, labels), "accuracy": ((logits > 0) == labels.bool()).float().mean()}

    def test(self, epoch: int, device: torch.device) -> dict:
        """Called with the weights of `epoch` loaded, in eval mode, under no_grad. Loss and
        accuracy are summed over the test samples and divided by their number; the AUC
        ranks them all at once."""
        logits, labels = [], []
        for features, batch_labels in self.data.loaders["test"]:
            logits.append(self.model(features).squeeze(1))
            labels.append(batch_labels)
        logits, labels = torch.cat(logits), torch.cat(labels)
        samples = len(labels)
        return {
            "accuracy": ((logits > 0) == labels.bool()).sum().item() / samples,
            "loss": F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").item() / samples,
            "auc": area_under_roc(logits, labels.bool()),
            "samples": samples,
        }

    def serve_example(self) -> dict[str, float]:
        """The data set's first tumour as a client sends it: its 30 features by name."""
        return dict(zip(self.data.state["features"], FIRST_TUMOUR))

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """An instance is an object of the 30 named features (`{"mean radius": 17.99, ...}`)
        or a list of their 30 values in the data set's order.

        Returns:
            The 30 features, normalized with the training set's statistics.

        Raises:
            ValueError: a feature missing or unknown, a value that is not a finite number,
                or another kind of instance; the message is one sentence for the client.
        """
        names = self.data.state["features"]
        if isinstance(instance, dict):
            values = read_named_features(instance, names)
        elif isinstance(instance, list):
            values = read_listed_features(instance, names)
        else:
            raise ValueError(
                f'an instance must be an object of the {len(names)} named features, e.g. {{"{names[0]}": {FIRST_TUMOUR[0]}, ...}}, '
                f"or a list of their {len(names)} values, not {describe_json(instance)}"
            )
        return normalize(torch.tensor(values, dtype=torch.float32), self.data.state)

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> dict:
        """{"malignant": the probability that the tumour is malignant, "label": "malignant"
        or "benign"}; the label is malignant where the logit is positive, as in `test`."""
        probability = torch.sigmoid(output.float()[0]).item()
        return {"malignant": probability, "label": "malignant" if probability > 0.5 else "benign"}


def area_under_roc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """The area under the ROC curve: the share of (positive, negative) pairs whose positive
    scores higher, a tie counting half. Pairwise, which a test set of hundreds affords."""
    differences = scores[positives][:, None] - scores[~positives][None, :]
    return ((differences > 0).double() + 0.5 * (differences == 0).double()).mean().item()


def read_named_features(instance: dict, names: list[str]) -> list[float]:
    """Return the values of an object of named features, in the data set's order.

    Raises:
        ValueError: an unknown or missing feature, or a value that is not a finite number.
    """
    unknown = [key for key in instance if key not in names]
    if unknown:
        raise ValueError(f"unknown {name_features(unknown)}: an instance holds the {len(names)} features of scikit-learn's load_breast_cancer, such as {names[0]!r}")
    missing = [name for name in names if name not in instance]
    if missing:
        raise ValueError(f"the instance lacks the {name_features(missing)}: it needs all {len(names)}")
    return [check_number(name, instance[name]) for name in names]


def read_listed_features(instance: list, names: list[str]) -> list[float]:
    """Return the values of a list of the features' values.

    Raises:
        ValueError: not one value per feature, or a value that is not a finite number.
    """
    if len(instance) != len(names):
        raise ValueError(f"an instance as a list must hold the {len(names)} features' values, not {len(instance)}")
    return [check_number(name, value) for name, value in zip(names, instance)]


def check_number(name: str, value: Any) -> float:
    """Return a feature's value as a float.

    Raises:
        ValueError: the value is not a finite number; JSON's true and false are not numbers.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"feature {name!r} must be a number, not {describe_json(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"feature {name!r} must be a finite number, not {number}")
    return number


def name_features(names: list[str]) -> str:
    """Name features in a message, the first three and how many more: "feature 'a'", or
    "features 'a', 'b', 'c' and 2 more"."""
    shown = ", ".join(repr(name) for name in names[:3])
    if len(names) > 3:
        shown += f" and {len(names) - 3} more"
    return f"feature{'s' if len(names) > 1 else ''} {shown}"


def describe_json(value: Any) -> str:
    """What a JSON value is, in words, without quoting it (it may be long)."""
    kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")
