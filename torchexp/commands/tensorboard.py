"""The `tensorboard` command: TensorBoard on one experiment, or on all of them side by side."""

import os
import signal
import subprocess

import click

from torchexp.commands.context import App, pass_app
from torchexp.errors import ExperimentError, TorchexpError
from torchexp.trackers.tensorboard import tensorboard_command


class StopRequested(Exception):
    """SIGTERM reached the `tensorboard` command."""


def raise_stop_requested(signum: int, frame: object) -> None:
    raise StopRequested


@click.command()
@click.option("--port", default=6006, show_default=True, type=click.IntRange(1, 65535), help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--compare", is_flag=True, help="Show every experiment in --experiments-path side by side.")
@pass_app
def tensorboard(app: App, port: int, host: str, compare: bool) -> None:
    """Start TensorBoard on the experiment (or all of them) and print its URL."""
    if compare:
        command = tensorboard_command(None, compare_logdir_spec(app.experiments_path), host, port)
    else:
        command = tensorboard_command(app.open_experiment().tensorboard_path, None, host, port)
    click.echo(f"TensorBoard at http://{host}:{port}/ (Ctrl-C to stop)")
    # SIGTERM would end this process and leave TensorBoard serving; raised as an exception
    # instead, it makes subprocess.run kill TensorBoard on its way out, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, raise_stop_requested)
    try:
        done = subprocess.run(command, check=False)
    except (KeyboardInterrupt, StopRequested):
        return
    except OSError as error:
        raise TorchexpError(f"TensorBoard could not be started: {error.strerror or error}") from error
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Ctrl-C stops TensorBoard too, which is how it is meant to end.
    if done.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
        raise TorchexpError(f"TensorBoard stopped with exit code {done.returncode} (is port {port} in use?)")


def compare_logdir_spec(experiments_path: str) -> str:
    """Return TensorBoard's --logdir_spec naming each experiment's tensorboard folder, a
    study's trials as `STUDY/trial-0003` (as `compare` and torchexp.Experiments list them)."""
    from torchexp.experiments import Experiments

    names = []
    if os.path.isdir(experiments_path):
        names = [
            name
            for name in Experiments(experiments_path).names()
            if os.path.isdir(os.path.join(experiments_path, name, "tensorboard"))
        ]
    if not names:
        raise ExperimentError(f"no experiments to compare in {experiments_path}")
    return ",".join(f"{name}:{os.path.join(experiments_path, name, 'tensorboard')}" for name in names)
