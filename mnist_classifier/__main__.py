"""Command line of the MNIST classifier: `python -m mnist_classifier --help`."""

from torchexp import make_cli

# Classes are named as strings so that --help, info and tensorboard never import torch.
cli = make_cli("mnist_classifier.data:MNISTClassifierData", "mnist_classifier.runner:MNISTClassifierRunner")


def main() -> None:
    cli(prog_name="mnist_classifier")


if __name__ == "__main__":
    main()
