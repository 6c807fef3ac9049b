"""A handwritten digit classifier built on torchexp: the project's flagship example."""
