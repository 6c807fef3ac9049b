"""Which trackers a command line turns on, and where their classes come from.

A tracker is a `torchexp.trackers.base.Tracker` subclass named in the `torchexp.trackers`
entry point group, so that a package outside torchexp adds one with a line of its own
packaging:

```toml
[project.entry-points."torchexp.trackers"]
neptune = "my_package.tracking:NeptuneTracker"
```

torchexp's own (`mlflow`, `wandb`) are named here too, so that a checkout used without
installing finds them. `--tracker NAME` (or TORCHEXP_TRACKERS=NAME,NAME) turns one on;
MLflow is also on whenever a tracking URI is set, by MLflow's own convention.
"""

import dataclasses
import importlib
import importlib.metadata
import os
from collections.abc import Iterable, Mapping
from typing import Any

from torchexp.errors import ConfigError, ProjectError, first_line
from torchexp.trackers.base import Tracker

ENTRY_POINT_GROUP = "torchexp.trackers"
ENVIRONMENT_VARIABLE = "TORCHEXP_TRACKERS"
BUILT_IN = {
    "mlflow": "torchexp.mirror.tracker:MlflowTracker",
    "wandb": "torchexp.trackers.wandb_run:WandbTracker",
}


@dataclasses.dataclass(frozen=True)
class TrackerSpec:
    """A tracker turned on: its entry point name and the options its class is built with.

    Args:
        name: the name in the `torchexp.trackers` group, e.g. "wandb".
        options: keyword arguments of its class, as (name, value) pairs (hashable, so that
            a `Project` holding specs stays a frozen value).
    """

    name: str
    options: tuple[tuple[str, str], ...] = ()


def list_trackers() -> dict[str, str]:
    """Every tracker that can be turned on: {name: "module:Class"}, installed packages' entry
    points over torchexp's own."""
    found = dict(BUILT_IN)
    found.update({entry.name: entry.value for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    return found


def choose_trackers(names: Iterable[str], environ: Mapping[str, str] = os.environ) -> tuple[TrackerSpec, ...]:
    """The specs of `--tracker` names, or of TORCHEXP_TRACKERS when none is given.

    Raises:
        ConfigError: a name no installed package provides; the message lists those that are.
    """
    names = list(names) or [name.strip() for name in environ.get(ENVIRONMENT_VARIABLE, "").split(",") if name.strip()]
    known = list_trackers()
    for name in names:
        if name not in known:
            raise ConfigError(
                f"tracker {name!r} is not installed: choose among {', '.join(sorted(known))}, "
                "or install the package that provides it"
            )
    return tuple(TrackerSpec(name) for name in dict.fromkeys(names))


def open_trackers(specs: Iterable[TrackerSpec], logger: Any) -> list[Tracker]:
    """Build the trackers of `specs`, in order.

    Raises:
        ProjectError: a tracker's class cannot be imported or built; the message names it.
        MissingExtraError: a tracker's package is not installed (raised by its class).
    """
    known = list_trackers()
    return [build_tracker(spec, known.get(spec.name, ""), logger) for spec in specs]


def build_tracker(spec: TrackerSpec, location: str, logger: Any) -> Tracker:
    """Import the class at "module:Class" and build it with the spec's options."""
    module, _, name = location.partition(":")
    try:
        tracker_class = getattr(importlib.import_module(module), name)
    except Exception as error:  # a plugin's module may raise anything on import
        raise ProjectError(
            f"tracker {spec.name!r} ({location}) cannot be imported: {type(error).__name__}: {first_line(error)}"
        ) from error
    if not (isinstance(tracker_class, type) and issubclass(tracker_class, Tracker)):
        raise ProjectError(f"tracker {spec.name!r} ({location}) is not a subclass of torchexp.trackers.Tracker")
    return tracker_class(logger, **dict(spec.options))
