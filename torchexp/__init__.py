"""torchexp: experiments for PyTorch with validated configs, exact resume and releases.

The public API is imported on first use, so that `import torchexp` imports neither torch
nor click: a script that only reads experiments (`torchexp.Experiments`) stays light, and
the command line's --help, info and compare answer at once.
"""

import importlib
from typing import Any

from torchexp.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ExperimentError,
    InstanceError,
    LockError,
    StorageError,
    TorchexpError,
    TrainingInterrupted,
)
from torchexp.version import __version__

LAZY = {
    "App": "torchexp.commands.context",
    "Config": "torchexp.config",
    "Data": "torchexp.data",
    "Experiment": "torchexp.folder",
    "ExperimentView": "torchexp.experiments",
    "Experiments": "torchexp.experiments",
    "Predictor": "torchexp.predictor",
    "Project": "torchexp.project",
    "Runner": "torchexp.runner",
    "SeededDataLoader": "torchexp.loaders",
    "TensorLoader": "torchexp.loaders",
    "load_predictor": "torchexp.predictor",
    "make_cli": "torchexp.cli",
    "pass_app": "torchexp.commands.context",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "ExperimentError",
    "InstanceError",
    "LockError",
    "StorageError",
    "TorchexpError",
    "TrainingInterrupted",
    "__version__",
    *LAZY,
]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'torchexp' has no attribute {name!r}")
