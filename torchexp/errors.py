"""Exception types of torchexp.

Library code raises these; only the command line turns them into one sentence on stderr
and the exit code each type carries.
"""


class TorchexpError(Exception):
    """Base of every error caused by the user's input or environment."""

    exit_code = 1


class ConfigError(TorchexpError):
    """A configuration or schema file is missing, malformed or invalid."""

    exit_code = 2


class ExperimentError(TorchexpError):
    """An experiment name is invalid, already taken, or missing."""

    exit_code = 3


class CheckpointError(TorchexpError):
    """A checkpoint is missing, corrupt or cannot be trusted."""

    exit_code = 4


class DataError(TorchexpError):
    """A data set is missing or cannot be read."""

    exit_code = 5


class DeviceError(TorchexpError):
    """A requested device does not exist on this machine."""

    exit_code = 6


class LockError(TorchexpError):
    """Another process holds the experiment."""

    exit_code = 7


class StorageError(TorchexpError):
    """A file could not be written (disk full, permissions)."""

    exit_code = 8


class DistributedError(TorchexpError):
    """Training processes lost contact with each other, or one of them failed."""

    exit_code = 9


class MissingExtraError(TorchexpError):
    """A command needs an optional part of torchexp that is not installed."""

    exit_code = 10


class ProjectError(TorchexpError):
    """One of the project's hooks (its Data's or its Runner's code) raised an exception."""

    exit_code = 11


class VerificationError(TorchexpError):
    """verify re-ran training and did not reproduce a checkpoint bit for bit."""

    exit_code = 12


class TrackingError(TorchexpError):
    """The MLflow tracking server cannot be reached, or refuses what is sent (a registered
    model's name, say)."""

    exit_code = 13


class InstanceError(TorchexpError, ValueError):
    """An instance given to a predictor is malformed, as `serve` would answer it with 400."""

    exit_code = 14


class TrainingInterrupted(TorchexpError):
    """Training stopped on a signal after saving an interrupt checkpoint."""

    exit_code = 130


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message, or its type's name: enough for
    one sentence naming the cause."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
