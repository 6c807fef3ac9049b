"""Training, testing and serving breast_cancer: one logit per tumour, positive for malignant.

torchexp runs the loops around these methods: epochs, validation (`train_step` in eval
mode under no_grad), backward and optimizer steps, checkpoints that resume exactly, logs,
TensorBoard and metrics.jsonl.

Outside training (serve, export, load_model) the Data holds only its state, so the model's
size and the serving hooks read the feature names and the normalization statistics from
`self.data.state`, never from the data set.
"""

from typing import Annotated, Any

import pydantic
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
# A feature's value: a finite number. Strict: neither true nor false nor the text "17.99" is one.
Feature = Annotated[float, pydantic.Strict(), pydantic.AllowInfNan(False)]


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

    def serve_schema(self) -> Any:
        """An instance is an object of the 30 named features (`{"mean radius": 17.99, ...}`)
        or a list of their 30 values in the data set's order, each a finite number: torchexp
        checks every instance against this before `serve_preprocess`, answers a faulty one
        with a sentence naming the feature, and shows the schema on /docs."""
        return describe_instance(self.data.state["features"])

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """Return the 30 features of an instance the schema accepted, normalized with the
        training set's statistics."""
        names = self.data.state["features"]
        values = [instance[name] for name in names] if isinstance(instance, dict) else instance
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


def describe_instance(names: list[str]) -> Any:
    """The pydantic type of an instance: a `Tumour`, the object of the named features; a
    list of their values is named first, so that a bad value is named too."""
    fields = {name: (Feature, ...) for name in names}
    tumour = pydantic.create_model("Tumour", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    listed = Annotated[list[Feature], pydantic.Field(min_length=len(names), max_length=len(names))]

    def name_values(instance: Any) -> Any:
        if isinstance(instance, dict):
            return instance
        if not isinstance(instance, list):
            raise ValueError(
                f"an instance must be an object of the {len(names)} named features or a list of their values"
            )
        if len(instance) != len(names):
            raise ValueError(f"an instance as a list must hold the {len(names)} features' values, not {len(instance)}")
        return dict(zip(names, instance))

    # What the OpenAPI page shows: either form.
    return Annotated[tumour, pydantic.BeforeValidator(name_values, json_schema_input_type=tumour | listed)]
