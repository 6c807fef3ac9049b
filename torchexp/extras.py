"""The optional parts of torchexp, and one sentence when a command needs one that is missing.

`pip install torchexp` brings what training needs; each service is an extra. A command
checks its extra before importing it, so that a missing one is one sentence naming what
to install, never an ImportError's traceback, and `--help` needs no extra at all.
"""

import importlib.util

from torchexp.errors import MissingExtraError

# The modules each extra brings that its commands import (setup.py lists the packages).
EXTRA_MODULES = {
    "search": ("optuna", "optuna_dashboard", "scipy"),
    "serve": ("fastapi", "pydantic", "uvicorn", "orjson", "prometheus_client", "PIL"),
    "export": ("onnx", "onnxscript", "onnxruntime", "safetensors"),
    "loaders": ("torchdata",),
    "plots": ("matplotlib",),
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
}


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtraError unless every module of `extra` can be imported.

    Args:
        extra: a key of EXTRA_MODULES.
        what: what needs it, for the message, e.g. "serve" or "compare --plot".
        modules: of the extra's modules, those `what` imports; default: all of them.
    """
    for module in modules or EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(f"{what} needs {module}, which is not installed: pip install 'torchexp[{extra}]'")
