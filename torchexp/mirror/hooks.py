"""Where torchexp's commands call the mirror: around training, after a test, after a release.

Each takes the project's `MlflowTarget`, None when tracking is off, in which case nothing
happens and mlflow is not imported. A server that cannot be reached gives a warning here:
the command's own work is done and kept in the experiment folder, for `sync` to send.
"""

import contextlib
import logging
from typing import Iterator

from torchexp.errors import TorchexpError
from torchexp.folder import Experiment
from torchexp.mirror.target import MlflowTarget


@contextlib.contextmanager
def mirroring_training(target: MlflowTarget | None, experiment: Experiment, logger: logging.Logger) -> Iterator[tuple]:
    """Mirror the experiment from a background thread while the block trains it; yield the
    epoch observers to pass to the loop (none when tracking is off). On leaving, the last
    sync sends the status the run ended with.

    Raises:
        MissingExtraError: tracking is on and mlflow is not installed.
    """
    if target is None:
        yield ()
        return
    from torchexp.mirror.background import BackgroundMirror
    from torchexp.mirror.runs import connect
    from torchexp.mirror.studies import make_run_mirror

    client = connect(target)
    mirror = BackgroundMirror(make_run_mirror(client, target, experiment, experiment.read_definition()), logger).start()
    try:
        yield (mirror,)
    finally:
        mirror.close()


def mirror_now(target: MlflowTarget | None, experiment: Experiment, logger: logging.Logger) -> None:
    """Send the experiment's run what it lacks (a test's results), warning when MLflow cannot
    take it."""
    if target is None:
        return
    from torchexp.mirror.runs import connect
    from torchexp.mirror.studies import make_run_mirror

    client = connect(target)
    try:
        make_run_mirror(client, target, experiment, experiment.read_definition()).sync()
    except TorchexpError as error:
        logger.warning(f"{error}; the experiment folder keeps everything, and sync sends it later")
