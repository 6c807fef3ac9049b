"""What the mirror keeps in a folder it mirrors: `mlflow.json`.

An experiment's (or a study's) MLflow run is found by the run id kept here, one per
tracking URI, so that a resume, also after a SIGKILL, continues the same run and `sync`
finds it again. The registered-model name asked for a release is kept too, so that a
release made while no server was reachable is registered under it by `sync`.

```
{"runs": {"<tracking uri>": {"experiment_id": "1", "run_id": "ab12..."}},
 "registered_models": {"<epoch>": "<name>"}}
```
"""

import contextlib
import os
from collections.abc import Iterator

from torchexp.errors import ExperimentError
from torchexp.files import read_json, write_json_atomic
from torchexp.locks import FileLock

STATE_FILE = "mlflow.json"
LOCK_FILE = ".mlflow.lock"


def read_state(folder: str) -> dict:
    """The folder's mlflow.json, or an empty state."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return {"runs": {}, "registered_models": {}}
    state = read_json(path, f"MLflow state of {folder}", ExperimentError)
    return {"runs": state.get("runs") or {}, "registered_models": state.get("registered_models") or {}}


@contextlib.contextmanager
def updating_state(folder: str) -> Iterator[dict]:
    """Hold the folder's mirror lock and yield its state; what the block changes is written.

    Several processes may mirror one folder: the trials of a search share their study's
    run, and `sync` may run beside `train`. The lock makes "find or create the run" one step.
    """
    with FileLock(os.path.join(folder, LOCK_FILE)):
        state = read_state(folder)
        before = repr(state)
        yield state
        if repr(state) != before:
            write_json_atomic(os.path.join(folder, STATE_FILE), state)


def find_run_id(folder: str, uri: str) -> str | None:
    """The run id the folder's run has on the server at `uri`, or None."""
    return (read_state(folder)["runs"].get(uri) or {}).get("run_id")
