"""Options several commands share."""

from typing import Callable

import click

from torchexp.devices import check_device_spec


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
