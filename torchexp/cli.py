"""The command lines: one place that assembles the commands of `torchexp.commands` into groups.

`make_cli` builds a project's command line from its Data and Runner classes; `main` is the
`torchexp` console script, for what needs no project. Errors are turned into one sentence
and an exit code here, and nowhere else.
"""

import atexit
import gc
import shlex
import traceback
from typing import Any

import click

from torchexp.commands.compare import compare
from torchexp.commands.context import App
from torchexp.commands.create import create
from torchexp.commands.export import export
from torchexp.commands.info import info
from torchexp.commands.init import init
from torchexp.commands.search import search
from torchexp.commands.serve import serve
from torchexp.commands.sync import sync
from torchexp.commands.tensorboard import tensorboard
from torchexp.commands.training import create_release, test, train
from torchexp.commands.verify import verify
from torchexp.errors import ConfigError, TorchexpError
from torchexp.mirror.target import MlflowTarget, resolve_target
from torchexp.process import GC_FREEZE, allows, running_command_line
from torchexp.project import project_name
from torchexp.trackers.plugins import TrackerSpec, choose_trackers
from torchexp.version import __version__

PROJECT_COMMANDS = (init, info, train, test, create_release, verify, tensorboard, serve, compare, export, search, sync)
COMMAND_LINE = "torchexp.command_line"  # ctx.meta's key: the group's arguments, as given


class TorchexpGroup(click.Group):
    """A click group that shows torchexp errors as one sentence and exits with their code,
    and says where one of its own options given after the command goes."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # The command owns its process: torchexp.process lists what that allows.
        with running_command_line():
            if allows(GC_FREEZE):
                # The garbage collections of the interpreter's exit trace every object left,
                # and torch.optim imports torch._dynamo (and sympy): over a second of every
                # training process went there. Objects alive at exit are frozen out of those
                # collections instead; the operating system takes the memory back.
                atexit.unregister(gc.freeze)
                atexit.register(gc.freeze)
            return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[COMMAND_LINE] = list(args)  # for the hint on a project option after the command
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TorchexpError as error:
            if getattr(ctx.obj, "debug", False):
                # The cause's traceback too: a ProjectError's is the project's own code.
                click.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)
        except click.NoSuchOption as error:
            raise self.place_group_option(ctx, error) from None

    def place_group_option(self, ctx: click.Context, error: click.NoSuchOption) -> click.NoSuchOption:
        """Return `error`, saying where the option goes when it is one of the group's given
        after the command (`train --experiment-name x`), with the command line moved right."""
        if error.ctx is None or error.ctx.parent is not ctx:
            return error
        theirs = {name for param in error.ctx.command.params for name in param.opts + param.secondary_opts}
        options = {
            name: param
            for param in self.params
            if isinstance(param, click.Option) and not param.is_eager  # not --version
            for name in param.opts + param.secondary_opts
            if name not in theirs
        }
        if error.option_name not in options:
            return error
        moved = move_group_options(ctx.meta.get(COMMAND_LINE, []), options)
        hint = f"Project options go before the command: {ctx.command_path} {shlex.join(moved)}"
        return click.NoSuchOption(error.option_name, f"{error.message} {hint}", ctx=error.ctx)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        # Accept create-release for create_release, as users type either.
        if args and args[0].replace("-", "_") in self.commands:
            args = [args[0].replace("-", "_"), *args[1:]]
        return super().resolve_command(ctx, args)


def move_group_options(args: list[str], options: dict[str, click.Option]) -> list[str]:
    """Return a command line with the group's options (`options`, by name) and their values
    moved before everything else, the command first among the rest."""
    group: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        if args[index] == "--":  # what follows is the command's, whatever it looks like
            rest += args[index:]
            break
        option = options.get(args[index].split("=", 1)[0])
        takes = 0 if option is None or "=" in args[index] or option.is_flag or option.count else option.nargs
        (rest if option is None else group).extend(args[index : index + 1 + takes])
        index += 1 + takes
    return group + rest


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
        A click group with torchexp's commands; add your own with `@cli.command()` and
        `@torchexp.pass_app`.
    """
    settings = {
        "help_option_names": ["-h", "--help"],
        "default_map": {name: {"config_path": config_path, "schema_path": schema_path} for name in ("init", "search")},
    }

    @click.group(cls=TorchexpGroup, context_settings=settings)
    @click.option("--experiment-name", help="Name of the experiment (a folder under --experiments-path).")
    @click.option(
        "--experiments-path", default="experiments", show_default=True, help="Folder holding the experiments."
    )
    @click.option("--data-path", default="data", show_default=True, help="Folder holding (or receiving) the data sets.")
    @click.option(
        "--verbose/--quiet", default=None, help="Show debug logs, or only warnings and errors.  [default: neither]"
    )
    @click.option(
        "--debug",
        is_flag=True,
        help="On an error, show its traceback above its one sentence (verbose.log keeps it anyway).",
    )
    @click.option(
        "--mlflow-uri",
        help="Mirror experiments to this MLflow tracking server (http://HOST:PORT).  "
        "[default: $MLFLOW_TRACKING_URI, or no mirror]",
    )
    @click.option(
        "--tracker",
        "trackers",
        multiple=True,
        metavar="NAME",
        help="Also send runs to this tracker (wandb, or a plugin's name); repeatable.  "
        "[default: $TORCHEXP_TRACKERS, or none]",
    )
    @click.version_option(__version__, prog_name="torchexp")
    @click.pass_context
    def cli(
        ctx: click.Context,
        experiment_name: str | None,
        experiments_path: str,
        data_path: str,
        verbose: bool | None,
        debug: bool,
        mlflow_uri: str | None,
        trackers: tuple[str, ...],
    ) -> None:
        """Experiments with validated configs, exact-resume checkpoints, releases and TensorBoard."""
        verbosity = {None: "normal", True: "verbose", False: "quiet"}[verbose]
        target = resolve_target(mlflow_uri, project=project_name(runner_class))
        ctx.obj = App(
            data_class,
            runner_class,
            experiment_name,
            experiments_path,
            data_path,
            verbosity,
            target,
            choose_other_trackers(trackers, target),
        )
        ctx.obj.debug = debug

    for command in PROJECT_COMMANDS:
        cli.add_command(command)
    return cli


def choose_other_trackers(names: tuple[str, ...], target: MlflowTarget | None) -> tuple[TrackerSpec, ...]:
    """The trackers of `--tracker` (or TORCHEXP_TRACKERS) but MLflow's, which a tracking URI
    turns on.

    Raises:
        ConfigError: MLflow is named without a tracking URI, or a name is not installed.
    """
    specs = choose_trackers(names)
    if target is None and any(spec.name == "mlflow" for spec in specs):
        raise ConfigError("tracker 'mlflow' needs a tracking URI: pass --mlflow-uri or set MLFLOW_TRACKING_URI")
    return tuple(spec for spec in specs if spec.name != "mlflow")


@click.group(cls=TorchexpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torchexp")
def main() -> None:
    """torchexp's own commands, for what needs no project."""


main.add_command(compare)
main.add_command(create)
