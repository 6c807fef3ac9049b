"""Releases: which epoch to release, writing its release checkpoint, and finding the
checkpoint whose weights a command or the Python API asks for.

A release checkpoint holds an epoch's weights and what is needed to use them (the
configuration, seed, classes and versions of config.json), so it stands alone: `serve`,
`export` and `load_model` need nothing else from the experiment.
"""

from torchexp import checkpoints
from torchexp.config import fill_trainer_defaults
from torchexp.directions import MINIMIZE, direction_of, read_directions
from torchexp.errors import CheckpointError
from torchexp.folder import Experiment
from torchexp.metrics import find_best, parse_metric, recorded_series

Epoch = int | str | None  # an epoch number, "release" (the latest release) or None (the latest checkpoint)
Selector = int | str  # an epoch number, "release" (the latest release) or a checkpoint's file name


def create_release(experiment: Experiment, epoch: int, definition: dict) -> str:
    """Write the release checkpoint of `epoch`: its weights and what is needed to use them.

    Args:
        experiment: the experiment.
        epoch: an epoch with a standard checkpoint.
        definition: the experiment's config.json (configuration, seed, classes, versions).

    Returns:
        The release checkpoint's path.
    """
    info = checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)
    state = info.load(weights_only=True)
    assert info.sidecar is not None, "load() verified the checkpoint against its sidecar"
    summary = {"metrics": info.metrics, "provenance": info.sidecar.get("provenance"), "unit": info.unit}
    release = {
        "format": checkpoints.CHECKPOINT_FORMAT,
        "model": state["model"],
        "epoch": epoch,
        **summary,
        **definition,
    }
    return checkpoints.save_checkpoint(experiment.checkpoints_path, epoch, "release", release, summary)


def choose_release_epoch(experiment: Experiment) -> tuple[int, str]:
    """Return the epoch `create_release` releases by default, and why: the standard checkpoint
    with the best trainer.monitor (the lowest validation loss by default), or the latest one
    when none recorded it. Which way is better is as the experiment's directions.json
    records the Runner's declaration, else by the metric's name (`torchexp.directions`).

    Only config.json, directions.json and the checkpoints' sidecars are read, not the checkpoints.

    Raises:
        CheckpointError: the experiment has no standard checkpoint.
        ExperimentError: config.json or directions.json is unreadable.
    """
    found = checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",))
    if not found:
        raise CheckpointError(f"experiment {experiment.name!r} has no standard checkpoint yet: train it first")
    monitor = fill_trainer_defaults(experiment.read_definition()["config"])["trainer"]["monitor"]
    split, metric = parse_metric(monitor)
    direction = direction_of(metric, read_directions(experiment))
    best = find_best(recorded_series(((info.epoch, info.metrics) for info in found), split, metric), direction)
    unit = found[-1].unit
    if best is None:
        return found[-1].epoch, f"the latest: no {unit} recorded {split} {metric}"
    epoch, value = best
    among = f"{unit}{'s' if len(found) > 1 else ''} {checkpoints.describe_epochs(found)}"
    return epoch, f"the {'lowest' if direction == MINIMIZE else 'highest'} {split} {metric}, {value:.4g}, among {among}"


def find_weights(experiment: Experiment, epoch: Epoch = None) -> checkpoints.Checkpoint:
    """Return the checkpoint whose weights `epoch` designates.

    Args:
        experiment: the experiment, which must exist.
        epoch: N for epoch N's standard checkpoint (its release when it has only that),
            "release" for the latest release, None for the latest standard or release one.

    Raises:
        CheckpointError: there is no such checkpoint; the message lists those that exist.
    """
    experiment.check_exists()
    folder = experiment.checkpoints_path
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return checkpoints.find_checkpoint(folder, epoch, ("standard", "release"))
    if epoch not in (None, "release"):
        raise CheckpointError(f"epoch {epoch!r} is not valid: pass an epoch number, 'release' or None for the latest")
    kinds = ("release",) if epoch == "release" else ("standard", "release")
    found = checkpoints.list_checkpoints(folder, kinds)
    if not found:
        hint = "create one with create_release" if epoch == "release" else "train it first"
        raise CheckpointError(f"experiment {experiment.name!r} has no {' or '.join(kinds)} checkpoint yet: {hint}")
    latest = found[-1].epoch
    return next(info for kind in kinds for info in found if info.epoch == latest and info.kind == kind)


def select_checkpoint(experiment: Experiment, selector: Selector) -> checkpoints.Checkpoint:
    """Return the checkpoint `selector` names.

    Args:
        experiment: the experiment, which must exist.
        selector: N for epoch N's standard checkpoint (its release when it has only that),
            "release" for the latest release, or a checkpoint's file name ("3.checkpoint.pt",
            "3.checkpoint.release.pt").

    Raises:
        CheckpointError: there is no such checkpoint, or `selector` is none of these; the
            message lists what exists.
    """
    if selector == "release" or (isinstance(selector, int) and not isinstance(selector, bool)):
        return find_weights(experiment, selector)
    if not isinstance(selector, str) or checkpoints.parse_filename(selector) is None:
        raise CheckpointError(
            f"checkpoint {selector!r} is not valid: pass 'release', an epoch number "
            "or a checkpoint's file name such as 3.checkpoint.pt"
        )
    experiment.check_exists()
    found = checkpoints.list_checkpoints(experiment.checkpoints_path)
    for info in found:
        if info.name == selector:
            return info
    names = ", ".join(info.name for info in found) or "none"
    raise CheckpointError(f"experiment {experiment.name!r} has no checkpoint {selector} (its checkpoints: {names})")


def find_release(experiment: Experiment, epoch: int | None) -> checkpoints.Checkpoint:
    """Return the release checkpoint of `epoch`, or the latest release when it is None.

    Raises:
        CheckpointError: there is no such release; the message lists the releases and
            says how to make one.
    """
    releases = checkpoints.list_checkpoints(experiment.checkpoints_path, ("release",))
    if epoch is None or not releases:
        return find_weights(experiment, "release")  # the latest; without any, it says how to make one
    for info in releases:
        if info.epoch == epoch:
            return info
    raise CheckpointError(
        f"epoch {epoch} of experiment {experiment.name!r} has no release checkpoint "
        f"(releases: {checkpoints.describe_epochs(releases)}): create one with create_release --epoch {epoch}"
    )
