"""The model of breast_cancer: a small fully connected network with one logit."""

from torch import nn


def build_model(features: int, hidden: int) -> nn.Module:
    """Return a network mapping a batch of normalized features (N x features) to one logit
    per tumour (N x 1): positive for malignant, its sigmoid the probability of malignancy."""
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )
