"""The command line: a click group whose callback builds one `App`, and the default commands.

torch is imported only by the commands that compute (init, train, test, create_release),
so `--help`, `info` and `tensorboard` answer at once.
"""

import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
from typing import Any, Callable, Iterator

import click

from torchexp import checkpoints
from torchexp.config import Config, build_config, fill_trainer_defaults
from torchexp.devices import check_device_spec
from torchexp.errors import CheckpointError, DataError, ExperimentError, LockError, TorchexpError
from torchexp.experiment import Experiment
from torchexp.storage import remove_quietly
from torchexp.tracking import Tracker, close_logger, format_metrics, make_logger, tensorboard_command

__version__ = "0.1.0"


class App:
    """What every command shares: the options of the group and the project's classes.

    Args:
        data_class: the project's Data subclass, or "module:Class" to import it lazily.
        runner_class: the project's Runner subclass, or "module:Class".
        experiment_name: --experiment-name.
        experiments_path: --experiments-path.
        data_path: --data-path.
        verbosity: "quiet", "normal" or "verbose".
    """

    def __init__(
        self,
        data_class: type | str,
        runner_class: type | str,
        experiment_name: str | None,
        experiments_path: str,
        data_path: str,
        verbosity: str,
    ):
        self.data_class = data_class
        self.runner_class = runner_class
        self.experiment_name = experiment_name
        self.experiments_path = experiments_path
        self.data_path = data_path
        self.verbosity = verbosity

    def experiment(self) -> Experiment:
        """Return the named experiment, which may not exist yet."""
        return Experiment(self.experiments_path, self.experiment_name)

    def open_experiment(self) -> Experiment:
        """Return the named experiment, which must exist."""
        experiment = self.experiment()
        experiment.check_exists()
        return experiment

    def make_data(self, experiment: Experiment, record: dict, logger: Any) -> Any:
        """Build the project's Data with its saved state, data sets and loaders loaded."""
        data = load_class(self.data_class)(Config(record["config"]), record["seed"], logger)
        data.state = experiment.read_data_state()
        check_data_path(self.data_path)
        data.load_datasets(self.data_path)
        return data

    def make_runner(self, experiment: Experiment, record: dict, num_workers: int, world: Any = None) -> Any:
        """Build the project's Runner with its Data, logger and tracker.

        Args:
            experiment: the experiment, which must exist.
            record: its config.json.
            num_workers: data loader worker processes.
            world: a torchexp.distributed.World; ranks other than 0 log only warnings
                to the console and write no file.
        """
        from torchexp.distributed import World

        world = world or World()
        log_path, verbosity = (experiment.log_path, self.verbosity) if world.is_main else (None, "quiet")
        logger = make_logger(experiment.name, log_path, verbosity)
        try:
            data = self.make_data(experiment, record, logger)
            data.load_loaders(self.data_path, num_workers)
            tracker = Tracker(experiment.tensorboard_path, experiment.metrics_path, enabled=world.is_main)
            runner_class = load_class(self.runner_class)
            config = Config(fill_trainer_defaults(record["config"]))
            return runner_class(experiment, config, record["seed"], data, logger, tracker, verbosity == "quiet", world=world)
        except BaseException:
            # The caller only closes the logger of a runner it got.
            close_logger(logger)
            raise


pass_app = click.make_pass_decorator(App)


class TorchexpGroup(click.Group):
    """A click group that shows torchexp errors as one sentence and exits with their code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TorchexpError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        # Accept create-release for create_release, as users type either.
        if args and args[0].replace("-", "_") in self.commands:
            args = [args[0].replace("-", "_"), *args[1:]]
        return super().resolve_command(ctx, args)


def load_class(spec: type | str) -> type:
    """Return a class, importing it from "module:Class" on first use."""
    if isinstance(spec, type):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def check_data_path(data_path: str) -> None:
    """Raise DataError when the data path exists but is not a folder."""
    if os.path.exists(data_path) and not os.path.isdir(data_path):
        raise DataError(f"data path {data_path} is a file, not a folder")


def record_versions() -> dict[str, str]:
    """Return the versions worth recording with an experiment, without importing torch."""
    versions = {"torchexp": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


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


def make_cli(
    data_class: type | str,
    runner_class: type | str,
    config_path: str = "config.default.json",
    schema_path: str = "config.schema.json",
) -> click.Group:
    """Build a project's command line from its Data and Runner classes.

    Args:
        data_class: a torchexp.Data subclass, or "module:Class" so that torch is only
            imported by the commands that need it.
        runner_class: a torchexp.Runner subclass, or "module:Class".
        config_path: default of `init --config-path`.
        schema_path: default of `init --schema-path`.

    Returns:
        A click group with init, info, train, test, create_release and tensorboard; add
        your own commands with `@cli.command()` and `@torchexp.pass_app`.
    """

    @click.group(cls=TorchexpGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--experiment-name", help="Name of the experiment (a folder under --experiments-path).")
    @click.option("--experiments-path", default="experiments", show_default=True, help="Folder holding the experiments.")
    @click.option("--data-path", default="data", show_default=True, help="Folder holding (or receiving) the data sets.")
    @click.option("--verbose/--quiet", default=None, help="Show debug logs, or only warnings and errors.  [default: neither]")
    @click.version_option(__version__, prog_name="torchexp")
    @click.pass_context
    def cli(ctx: click.Context, experiment_name: str | None, experiments_path: str, data_path: str, verbose: bool | None) -> None:
        """Experiments with validated configs, exact-resume checkpoints, releases and TensorBoard."""
        verbosity = {None: "normal", True: "verbose", False: "quiet"}[verbose]
        ctx.obj = App(data_class, runner_class, experiment_name, experiments_path, data_path, verbosity)

    @cli.command()
    @click.option("--config-path", default=config_path, show_default=True, help="Configuration file (JSON).")
    @click.option("--schema-path", default=schema_path, show_default=True, help="JSON schema of the configuration.")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=2**63 - 1), help="Seed of every random generator.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. training.lr=0.5 (repeatable).")
    @pass_app
    def init(app: App, config_path: str, schema_path: str, seed: int, overrides: tuple[str, ...]) -> None:
        """Create an experiment from a validated configuration."""
        experiment = app.experiment()
        experiment.check_free()
        conf = build_config(config_path, schema_path, list(overrides))
        record = {"seed": seed, "versions": record_versions(), "config": conf}
        logger = make_logger(experiment.name, None, app.verbosity)
        check_data_path(app.data_path)
        data = load_class(app.data_class)(Config(conf), seed, logger)
        state = data.create(app.data_path)
        check_json_data(state, "Data.create")
        experiment.create(record, state)
        close_logger(logger)
        logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
        logger.info(f"created experiment {experiment.name!r} in {experiment.path} (seed {seed})")
        close_logger(logger)

    @cli.command()
    @pass_app
    def info(app: App) -> None:
        """Show an experiment's configuration, seed and checkpoints."""
        experiment = app.open_experiment()
        record = experiment.read_record()
        click.echo(f"experiment: {experiment.name}\npath: {experiment.path}\nseed: {record.get('seed')}")
        click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()))
        click.echo("config:\n" + json.dumps(record.get("config"), indent=2))
        found = checkpoints.list_checkpoints(experiment.checkpoints_path)
        click.echo(f"checkpoints: {len(found) or 'none'}")
        for info in found:
            click.echo("  " + describe_checkpoint(info))

    @cli.command()
    @click.option("--epoch", type=click.IntRange(min=1), help="Resume from this epoch's checkpoint.  [default: the furthest]")
    @click.option("--max-epochs", default=10, show_default=True, type=click.IntRange(min=1), help="Train until this many epochs are done.")
    @click.option("--log-period", default=100, show_default=True, type=click.IntRange(min=1), help="Iterations between iteration logs.")
    @click.option("--overwrite", is_flag=True, help="Allow --epoch to train over later checkpoints, deleting them (releases stay).")
    @with_device
    @with_workers
    @pass_app
    def train(app: App, epoch: int | None, max_epochs: int, log_period: int, overwrite: bool, device: str, num_workers: int) -> None:
        """Train, resuming from the furthest checkpoint (or --epoch).

        Under torchrun, each process trains one shard with DistributedDataParallel.
        """
        from torchexp.devices import resolve_device
        from torchexp.distributed import join, leave, map_device, read_world

        experiment = app.open_experiment()
        world = read_world()
        # Check what can be checked before the lock and the log, so that a mistake
        # leaves the experiment as it was.
        if epoch is not None:
            checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)
            if not overwrite:
                check_no_later_checkpoints(experiment, epoch)
        torch_device = resolve_device(map_device(device, world))
        join(world, torch_device)
        try:
            train_held(app, experiment, world, torch_device, num_workers, max_epochs, log_period, epoch, overwrite)
        except BaseException:
            leave(free_objects=False)
            raise
        leave()

    @cli.command()
    @click.option("--epoch", type=click.IntRange(min=1), help="Epoch whose weights to test.  [default: the latest]")
    @click.option("--release", is_flag=True, help="Test the release checkpoint even when a standard one exists.")
    @with_device
    @with_workers
    @pass_app
    def test(app: App, epoch: int | None, release: bool, device: str, num_workers: int) -> None:
        """Test the weights of an epoch on the test set."""
        from torchexp.devices import resolve_device

        experiment = app.open_experiment()
        epoch = epoch or latest_epoch(experiment, ("release",) if release else ("standard", "release"))
        torch_device = resolve_device(device)
        runner = app.make_runner(experiment, experiment.read_record(), num_workers)
        try:
            runner.run_test(torch_device, epoch, release)
        finally:
            runner.tracker.close()
            close_logger(runner.logger)

    @cli.command("create_release")
    @click.option("--epoch", required=True, type=click.IntRange(min=1), help="Epoch to release.")
    @pass_app
    def create_release(app: App, epoch: int) -> None:
        """Write a release checkpoint: an epoch's weights and the metadata to use them."""
        from torchexp.runner import create_release as write_release

        experiment = app.open_experiment()
        path = write_release(experiment, epoch, experiment.read_record())
        logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
        logger.info(f"released epoch {epoch} as {path}")
        close_logger(logger)

    @cli.command()
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
        try:
            done = subprocess.run(command, check=False)
        except KeyboardInterrupt:
            return
        except OSError as error:
            raise TorchexpError(f"TensorBoard could not be started: {error.strerror or error}") from error
        # Ctrl-C stops TensorBoard too, which is how it is meant to end.
        if done.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
            raise TorchexpError(f"TensorBoard stopped with exit code {done.returncode} (is port {port} in use?)")

    return cli


def train_held(
    app: App, experiment: Experiment, world: Any, device: Any, num_workers: int, max_epochs: int, log_period: int, epoch: int | None, overwrite: bool
) -> None:
    """The body of `train` between joining and leaving the process group.

    A function of its own so that the runner, and the DistributedDataParallel module it
    holds, are gone when it returns: `leave` must not find them alive.
    """
    with hold_experiment(experiment, world, device):
        runner = app.make_runner(experiment, experiment.read_record(), num_workers, world)
        try:
            if epoch is not None and overwrite and world.is_main:
                remove_later_checkpoints(experiment, epoch, runner.logger)
            processes = f" in {world.size} processes" if world.distributed else ""
            runner.logger.info(f"training {experiment.name!r} on {device}{processes} up to epoch {max_epochs}")
            runner.train(device, max_epochs, log_period, epoch)
        finally:
            runner.tracker.close()
            close_logger(runner.logger)


@contextlib.contextmanager
def hold_experiment(experiment: Experiment, world: Any, device: Any) -> Iterator[None]:
    """Take the experiment's lock in rank 0 (the only writer); every rank fails if it cannot."""
    from torchexp.distributed import any_across

    with contextlib.ExitStack() as stack:
        failure = None
        if world.is_main:
            try:
                stack.enter_context(experiment.lock())
            except LockError as error:
                failure = error
        if any_across(failure is not None, device):
            raise failure or LockError(f"experiment {experiment.name!r} is in use: rank 0 could not take its lock")
        yield


def check_json_data(value: Any, source: str) -> None:
    """Raise TypeError when `value` is not JSON data (a programming error in the project)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{source} must return JSON data: {error}") from error


def check_no_later_checkpoints(experiment: Experiment, epoch: int) -> None:
    """Refuse to train from `epoch` over later standard checkpoints."""
    later = [info for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",)) if info.epoch > epoch]
    if later:
        raise CheckpointError(
            f"epochs {checkpoints.describe_epochs(later)} have checkpoints that training from epoch {epoch} "
            "would overwrite: pass --overwrite to allow it"
        )


def remove_later_checkpoints(experiment: Experiment, epoch: int, logger: Any) -> None:
    """Delete the standard and interrupt checkpoints after `epoch` (train --epoch --overwrite).

    Left in place, the furthest of them would be what the next plain `train` resumes
    from, mixing two histories. The checkpoint of `epoch` is verified first, so that a
    corrupt starting point costs nothing. Release checkpoints stay: they stand alone.
    """
    start = checkpoints.find_training_checkpoint(experiment.checkpoints_path, epoch)
    checkpoints.verify_checkpoint(start)
    later = [
        info
        for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt"))
        if info.progress > start.progress
    ]
    for info in later:
        remove_quietly(checkpoints.record_path(info.path))
        remove_quietly(info.path)
    if later:
        logger.warning(f"--overwrite: removed the checkpoints of epochs {checkpoints.describe_epochs(later)}")


def latest_epoch(experiment: Experiment, kinds: tuple[str, ...]) -> int:
    """Return the latest epoch with a checkpoint of one of `kinds`."""
    found = checkpoints.list_checkpoints(experiment.checkpoints_path, kinds)
    if not found:
        raise CheckpointError(
            f"experiment {experiment.name!r} has no {' or '.join(kinds)} checkpoint yet"
            + (": train it first" if "standard" in kinds else ": create one with create_release")
        )
    return found[-1].epoch


def compare_logdir_spec(experiments_path: str) -> str:
    """Return TensorBoard's --logdir_spec naming each experiment's tensorboard folder."""
    names = sorted(
        name for name in os.listdir(experiments_path) if os.path.isdir(os.path.join(experiments_path, name, "tensorboard"))
    ) if os.path.isdir(experiments_path) else []
    if not names:
        raise ExperimentError(f"no experiments to compare in {experiments_path}")
    return ",".join(f"{name}:{os.path.join(experiments_path, name, 'tensorboard')}" for name in names)


def describe_checkpoint(info: checkpoints.CheckpointInfo) -> str:
    """One line of `info`: epoch, kind, size and key metrics."""
    if info.record is None:
        return f"epoch {info.epoch} {info.kind}: no record (unverifiable)"
    metrics = info.record.get("metrics", {})
    parts = [f"epoch {info.epoch} {info.kind}", f"{info.record.get('bytes', 0) / 1e6:.1f} MB"]
    if info.kind == "interrupt":
        parts.append(f"iteration {info.record.get('iteration')}")
    for split in ("train", "validation"):
        values = metrics.get(split) or {}
        if values:
            parts.append(split + " " + format_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))}))
    return "; ".join(parts)
