"""Options several commands share."""

from collections.abc import Callable

import click

from torchexp.budget import STEP, unit_of
from torchexp.devices import check_device_spec
from torchexp.errors import ConfigError
from torchexp.folder import Experiment


def with_device(command: Callable) -> Callable:
    """Add --device to a command."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        callback=lambda ctx, param, value: check_device_spec(value),
        help="auto, cpu, cuda or cuda:N; auto picks CUDA when there is one.",
    )(command)


def with_workers(command: Callable) -> Callable:
    """Add --num-workers to a command."""
    return click.option(
        "--num-workers", default=0, show_default=True, type=click.IntRange(min=0), help="Data loader worker processes."
    )(command)


def with_point(help_text: str, default: str) -> Callable:
    """Add --epoch and --step: a checkpoint's number, in the experiment's unit (`choose_point`)."""

    def add(command: Callable) -> Callable:
        command = click.option(
            "--step",
            type=click.IntRange(min=1),
            help="--epoch's counterpart for an experiment trained by steps (trainer.max_steps).  [default: as --epoch]",
        )(command)
        return click.option("--epoch", type=click.IntRange(min=1), help=f"{help_text}  [default: {default}]")(command)

    return add


def choose_point(experiment: Experiment, epoch: int | None, step: int | None) -> int | None:
    """The checkpoint number --epoch or --step gives, or None for neither.

    Raises:
        ConfigError: both are given, or the one given is not the experiment's unit.
    """
    if epoch is not None and step is not None:
        raise ConfigError("--epoch and --step cannot be combined: an experiment counts one or the other")
    if epoch is None and step is None:
        return None
    unit = unit_of(experiment.read_definition().get("config") or {})
    flag, value = ("--epoch", epoch) if epoch is not None else ("--step", step)
    if flag != f"--{unit}":
        which = "steps (trainer.max_steps)" if unit == STEP else "epochs"
        raise ConfigError(f"experiment {experiment.name!r} trains by {which}: use --{unit} {value}, not {flag}")
    return value
