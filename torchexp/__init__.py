"""torchexp: experiments for PyTorch with validated configs, exact resume and releases.

`Data` and `Runner` are imported on first use, so that `import torchexp` (and the
command line's --help, info and tensorboard) does not import torch.
"""

from typing import Any

from torchexp.app import App, __version__, pass_app
from torchexp.cli import make_cli
from torchexp.config import Config
from torchexp.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ExperimentError,
    LockError,
    StorageError,
    TorchexpError,
    TrainingInterrupted,
)
from torchexp.experiment import Experiment
from torchexp.experiments import Experiments, ExperimentView

LAZY = {
    "Data": "torchexp.data",
    "Runner": "torchexp.runner",
    "TensorLoader": "torchexp.loaders",
    "SeededDataLoader": "torchexp.loaders",
}

__all__ = [
    "App",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "DeviceError",
    "Experiment",
    "ExperimentError",
    "ExperimentView",
    "Experiments",
    "LockError",
    "StorageError",
    "TorchexpError",
    "TrainingInterrupted",
    "__version__",
    "make_cli",
    "pass_app",
    *LAZY,
]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'torchexp' has no attribute {name!r}")
