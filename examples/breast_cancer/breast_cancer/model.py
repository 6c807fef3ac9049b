"""The model of breast_cancer: a small fully connected classifier of 2-D points."""

from torch import nn

CLASSES = 2
FEATURES = 2


def build_model(hidden: int) -> nn.Module:
    """Return a network mapping a batch of points (N x 2) to class scores (N x 2, logits)."""
    return nn.Sequential(
        nn.Linear(FEATURES, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )

