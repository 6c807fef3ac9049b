"""The model of image_folder: a small convolutional network for grey images."""

from torch import nn


def build_model(classes: int, height: int, width: int, channels: int, hidden: int, dropout: float) -> nn.Module:
    """Return a network mapping normalized grey images (N x 1 x height x width) to one
    logit per class (N x classes).

    Two 3 x 3 convolutions, each followed by a 2 x 2 max pooling, then two fully connected
    layers; about 1.2 million multiply-adds for a 28 x 28 image with the default sizes, a
    tenth of pytorch/examples' MNIST network, so that on a CPU decoding and augmenting the
    files is a fair share of the work.

    Args:
        classes: the number of classes.
        height, width: the images' size in pixels, at least 4 each.
        channels: the first convolution's output channels; the second has twice as many.
        hidden: units of the hidden fully connected layer.
        dropout: the probability of dropping each flattened feature in training.
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * channels * (height // 4) * (width // 4), hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )
