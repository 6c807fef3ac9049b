"""The experiment folder: its layout, creation, opening and lock.

```
<experiments>/<name>/
  config.json     the definition: validated configuration, seed, versions, project classes
  data.json       what Data.create() decided once
  checkpoints/    <epoch>.checkpoint.pt (+ .json record), releases, interrupts
  tensorboard/    event files
  results/        test reports
  metrics.jsonl   one line per logged epoch or test, and why each train stopped
  directions.json the metric directions the Runner declares, as the last train recorded them
  provenance.jsonl  what produced it: code, data, environment, settings (at init and every train)
  verifications.jsonl  what verify found
  mlflow.json     the MLflow run mirroring it, per tracking URI (only with tracking on)
  verbose.log     everything the experiment logged
```
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from torchexp.errors import ExperimentError, LockError
from torchexp.files import current_umask, read_json, write_json_atomic
from torchexp.locks import FileLock

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 128
STUDY_FILE = "study.json"  # what makes a folder a search study, whose trials are experiments


def validate_name(name: str | None) -> str:
    """Return `name` if it is a safe experiment name, else raise ExperimentError.

    A safe name is a single folder name: letters, digits, `.`, `_`, `-`, starting with a
    letter or digit, so it can never point outside the experiments folder.
    """
    if name is None or name == "":
        raise ExperimentError("no experiment name given: pass --experiment-name NAME")
    if len(name) > MAX_NAME_LENGTH:
        raise ExperimentError(
            f"experiment name is {len(name)} characters long, more than the {MAX_NAME_LENGTH} allowed"
        )
    if not NAME_PATTERN.fullmatch(name):
        raise ExperimentError(
            f"experiment name {name!r} is not allowed: "
            "use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def list_folder_names(path: str) -> list[str]:
    """Sorted names of the sub-folders of `path` that could be experiments."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(entry.name for entry in entries if entry.is_dir() and NAME_PATTERN.fullmatch(entry.name))


def scan_folders(path: str) -> list[tuple[str, bool]]:
    """Return (name, is an experiment) of every folder an experiments folder lists,
    sorted by name, with the trials of studies in place of the studies."""
    found = []
    for name in list_folder_names(path):
        folder = os.path.join(path, name)
        if os.path.isfile(os.path.join(folder, "config.json")):
            found.append((name, True))
        elif os.path.isfile(os.path.join(folder, STUDY_FILE)):
            found += [
                (f"{name}/{trial}", os.path.isfile(os.path.join(folder, trial, "config.json")))
                for trial in list_folder_names(folder)
            ]
        else:
            found.append((name, False))
    return found


class Experiment:
    """Paths and files of one experiment folder.

    Args:
        experiments_path: the folder that holds all experiments.
        name: the experiment's name, validated with `validate_name`.
    """

    def __init__(self, experiments_path: str, name: str | None):
        self.name = validate_name(name)
        self.experiments_path = os.path.abspath(experiments_path)
        self.path = os.path.join(self.experiments_path, self.name)
        self.config_path = os.path.join(self.path, "config.json")
        self.data_state_path = os.path.join(self.path, "data.json")
        self.checkpoints_path = os.path.join(self.path, "checkpoints")
        self.tensorboard_path = os.path.join(self.path, "tensorboard")
        self.results_path = os.path.join(self.path, "results")
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.directions_path = os.path.join(self.path, "directions.json")
        self.log_path = os.path.join(self.path, "verbose.log")
        self.lock_path = os.path.join(self.path, ".lock")
        self.provenance_path = os.path.join(self.path, "provenance.jsonl")
        self.verifications_path = os.path.join(self.path, "verifications.jsonl")

    def exists(self) -> bool:
        """Whether the experiment folder has been created."""
        return os.path.isfile(self.config_path)

    def check_exists(self) -> None:
        """Raise ExperimentError naming the experiment when it has not been created."""
        if not self.exists():
            raise ExperimentError(
                f"experiment {self.name!r} does not exist in {self.experiments_path}: create it with init"
            )

    def check_free(self) -> None:
        """Raise ExperimentError when the name is already taken."""
        if os.path.lexists(self.path):
            raise ExperimentError(
                f"experiment {self.name!r} already exists in {self.experiments_path}; choose another name"
            )

    def create(self, definition: dict, data_state: dict) -> None:
        """Create the experiment folder with its config and data state, all or nothing.

        The folder is built under a temporary name and renamed into place, so a failure
        or a kill leaves no half-made experiment behind.

        Raises:
            ExperimentError: the name is taken, or the experiments folder is not usable.
            StorageError: a file could not be written (disk full).
        """
        self.check_free()
        if os.path.exists(self.experiments_path) and not os.path.isdir(self.experiments_path):
            raise ExperimentError(f"experiments path {self.experiments_path} is a file, not a folder")
        try:
            os.makedirs(self.experiments_path, exist_ok=True)
            staging = tempfile.mkdtemp(dir=self.experiments_path, prefix=f".{self.name}.creating-")
        except OSError as error:
            raise ExperimentError(
                f"experiments path {self.experiments_path} is not usable: {error.strerror or error}"
            ) from error
        try:
            os.chmod(staging, 0o777 & ~current_umask())
            for folder in ("checkpoints", "tensorboard", "results"):
                os.mkdir(os.path.join(staging, folder))
            write_json_atomic(os.path.join(staging, "data.json"), data_state)
            write_json_atomic(os.path.join(staging, "config.json"), definition)
            # rename() would silently replace an empty folder created since check_free.
            if os.path.lexists(self.path):
                raise FileExistsError(errno.EEXIST, "exists", self.path)
            os.rename(staging, self.path)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ExperimentError(f"experiment {self.name!r} already exists in {self.experiments_path}") from error
            raise ExperimentError(
                f"experiment {self.name!r} could not be created in {self.experiments_path}: {error.strerror or error}"
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def read_definition(self) -> dict:
        """Return config.json, the experiment's definition: {"seed", "versions", "classes", "config"}."""
        self.check_exists()
        return read_json(self.config_path, f"config of experiment {self.name!r}", ExperimentError)

    def disk_bytes(self) -> int:
        """Bytes of every file in the experiment folder (a file removed meanwhile, by a
        training that goes on, counts for nothing)."""
        total = 0
        for folder, _, names in os.walk(self.path):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(folder, name))
        return total

    def read_data_state(self) -> dict:
        """Return data.json, what Data.create() decided at init."""
        self.check_exists()
        return read_json(self.data_state_path, f"data state of experiment {self.name!r}", ExperimentError)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the experiment for this process, e.g. while training.

        Raises:
            LockError: another live process holds the experiment; the message names it.
        """
        self.check_exists()
        lock = FileLock(self.lock_path)
        if not lock.acquire(blocking=False):
            raise LockError(f"experiment {self.name!r} is in use by process {lock.holder()}; wait for it or stop it")
        try:
            yield
        finally:
            lock.release()
