"""The abstract Data class a project subclasses to provide its data sets and loaders."""

import abc
import logging
from typing import Any

from torchexp.config import Config


class Data(abc.ABC):
    """A project's data: what to decide once, how to load the sets and their loaders.

    torchexp calls `create` once, at `init`, and stores what it returns in the
    experiment's data.json (JSON data only). Every later command finds it in
    `self.state` before calling `load_datasets` and `load_loaders`.

    The inference contract: outside training (`serve`, `export`, `Experiments.load_model`)
    there is no data set, and torchexp builds Data with `self.state` alone: `load_datasets`
    and `load_loaders` are not called. Whatever the Runner's `init_model` and serving hooks
    need from Data must therefore be decided in `create` and kept in the state (a class
    list, normalization statistics computed once from the training set), or kept in the
    model's buffers. A hook that reads anything else there gets one sentence naming it.

    Attributes:
        config: the experiment's validated configuration.
        seed: the experiment's seed.
        state: what `create` returned.
        datasets: filled by `load_datasets`, keyed "train", "validation", "test".
        loaders: filled by `load_loaders`, with the same keys.
        logger: the experiment's logger.
    """

    def __init__(self, config: Config, seed: int, logger: logging.Logger | None = None):
        self.config = config
        self.seed = seed
        self.logger = logger or logging.getLogger("torchexp")
        self.state: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        self.loaders: dict[str, Any] = {}
        self.read_files: list[str] = []  # set by torchexp: the files the data set was read from
        self.num_workers = 0  # set by torchexp: the loader worker processes `load_loaders` was given

    def get_conf(self, *keys: str) -> Any:
        """Return a configuration value, e.g. `get_conf("data", "batch_size")`."""
        return self.config.get(*keys)

    @abc.abstractmethod
    def create(self, data_path: str) -> dict[str, Any]:
        """Decide, once, what must stay fixed for the experiment (e.g. a validation split).

        Args:
            data_path: the folder the data sets live in (or are downloaded to).

        Returns:
            JSON data, saved to data.json and found later in `self.state`.
        """

    @abc.abstractmethod
    def load_datasets(self, data_path: str) -> None:
        """Fill `self.datasets` with the "train", "validation" and "test" sets."""

    def data_files(self, data_path: str) -> list[str] | None:
        """Return the files the data set is read from, whose digest the experiment's
        provenance records; None (the default) records the files `create` and
        `load_datasets` opened under `data_path` through Python (numpy and torch.load
        included). Override it for files read by native code or listed elsewhere."""
        return None

    @abc.abstractmethod
    def load_loaders(self, data_path: str, num_workers: int) -> None:
        """Fill `self.loaders` from `self.datasets`.

        Loaders from `torchexp.loaders` (TensorLoader, SeededDataLoader) give an order
        that depends on (seed, epoch) alone, which exact resume relies on.
        """
