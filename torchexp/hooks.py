"""A project's code seen from torchexp: when one of its hooks fails, say which, in one sentence.

torchexp calls a project's `Data` and `Runner` hooks from its loops and commands. An
exception one of them raises (a missing file, a shape mismatch, a typo) reaches the user as
`MNISTClassifierRunner.train_step failed: RuntimeError: ...`, with the full traceback in the
experiment's verbose.log (and on the console with `--debug`). The hook is found in the
exception's traceback: the outermost frame of a hook method of a Data or Runner object, so
the hooks run with no wrapper and no cost.

Outside training (`serve`, `export`, `load_model`), a project's Data holds only its state,
what `Data.create` returned at `init` (data.json): `load_datasets` is not called there, as
there is no data set to load. A hook that reads another attribute of Data then gets one
sentence naming the attribute and saying where it belongs.
"""

import contextlib
import logging
import sys
from collections.abc import Iterator
from types import TracebackType

from torchexp.errors import ProjectError, TorchexpError, first_line

DATA_HOOKS = ("__init__", "create", "load_datasets", "load_loaders")
RUNNER_HOOKS = (
    "__init__", "init_model", "init_optimizer", "init_others", "train_step", "validation_step", "test",
    "train_before_epoch_tasks", "train_after_epoch_tasks", "train_early_stopping", "train_iteration_log",
    "train_epoch_log", "save_states_others", "load_states_others",
    "serve_example", "serve_schema", "serve_preprocess", "serve_forward", "serve_postprocess", "serve_page",
)  # fmt: skip


def find_hook(traceback: TracebackType | None) -> tuple[str, object] | None:
    """Return ("Class.hook", the object) of the outermost hook frame in a traceback, or None
    when the exception did not pass through a project's hook."""
    while traceback is not None:
        frame = traceback.tb_frame
        owner = frame.f_locals.get("self")
        name = frame.f_code.co_name
        if (is_a(owner, "torchexp.data", "Data") and name in DATA_HOOKS) or (
            is_a(owner, "torchexp.runner", "Runner") and name in RUNNER_HOOKS
        ):
            return f"{type(owner).__name__}.{name}", owner
        traceback = traceback.tb_next
    return None


def is_a(value: object, module: str, name: str) -> bool:
    """isinstance(value, module.name), without importing `module`: an instance of its class
    exists only once the module is imported. The Runner's module imports this one."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(value, getattr(loaded, name))


def describe_failure(error: BaseException, inference: bool = False) -> str | None:
    """One sentence for an exception raised in a project's hook, or None when it was not.

    Args:
        error: the exception, with its traceback.
        inference: whether Data was built without its data sets (serve, export, load_model).
    """
    found = find_hook(error.__traceback__)
    if found is None:
        return None
    hook = found[0]
    if inference and isinstance(error, AttributeError) and is_a(error.obj, "torchexp.data", "Data"):
        data = type(error.obj).__name__
        return (
            f"{hook} failed: {data} has no attribute {error.name!r} here: outside training (serve, export, load_model) "
            f"a Data holds only its state, what {data}.create returned at init (data.json); compute {error.name!r} in "
            f"create and read it from self.state, or keep it in the model's buffers"
        )
    return f"{hook} failed: {type(error).__name__}: {first_line(error)}"


@contextlib.contextmanager
def project_errors(logger: logging.Logger | None = None, inference: bool = False) -> Iterator[None]:
    """Within the block, an exception from a project's hook becomes a ProjectError naming it.

    The traceback goes to the log files of `logger` (the experiment's verbose.log), not to
    its console. torchexp's own errors, and exceptions that did not pass through a hook (a
    bug of torchexp's), go on as they are.

    Args:
        logger: the experiment's logger, or None when there is no log file yet.
        inference: Data was built without its data sets (serve, export, load_model).
    """
    try:
        yield
    except TorchexpError:
        raise
    except Exception as error:
        sentence = describe_failure(error, inference)
        if sentence is None:
            raise
        if logger is not None:
            log_traceback(logger, sentence, error)
        raise ProjectError(sentence) from error


def log_traceback(logger: logging.Logger, sentence: str, error: BaseException) -> None:
    """Write `sentence` and the traceback of `error` to the logger's files alone."""
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 0, sentence, (), (type(error), error, error.__traceback__)
    )
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
