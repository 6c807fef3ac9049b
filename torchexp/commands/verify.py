"""The `verify` command: re-run stored epochs and compare every tensor with their checkpoints."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import choose_point, with_device, with_point
from torchexp.errors import ConfigError, VerificationError


@click.command()
@with_point("Verify this epoch's checkpoint (its end, else its mid-epoch one).", "the latest checkpoint")
@click.option("--last", type=click.IntRange(min=1), help="Verify the last K checkpoints.  [default: the latest one]")
@click.option("--all", "every", is_flag=True, help="Verify every checkpoint training left.  [default: the latest one]")
@with_device
@pass_app
def verify(app: App, epoch: int | None, step: int | None, last: int | None, every: bool, device: str) -> None:
    """Prove a result: re-run the training of stored checkpoints and compare every tensor.

    Each checkpoint is re-trained from the standard one before it (the first from the seed) in a
    scratch folder, and its model, optimizer, scheduler, random generators and metrics are
    compared bit for bit with the stored ones. Exits 0 only when all are identical; the
    experiment gets nothing but a line in verifications.jsonl, which info lists. A
    checkpoint trained under torchrun is verified under torchrun with as many processes.
    """
    from torchexp.devices import resolve_device
    from torchexp.distributed import join, leave, map_device, read_world
    from torchexp.verification import append_verification, choose_targets, verify_checkpoint

    chosen = [
        flag
        for flag, given in (
            ("--epoch", epoch is not None),
            ("--step", step is not None),
            ("--last", last is not None),
            ("--all", every),
        )
        if given
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} cannot be combined: choose one")
    experiment = app.open_experiment()
    targets = choose_targets(experiment, choose_point(experiment, epoch, step), last, every)
    world = read_world()
    torch_device = resolve_device(map_device(device, world))
    if torch_device.type == "cuda" and world.is_main:
        deterministic = experiment.read_definition()["config"].get("trainer", {}).get("deterministic", False)
        exactness = (
            "on: results are expected bit-identical"
            if deterministic
            else "off: cuDNN and cuBLAS may pick other kernels, so results may differ without a fault"
        )
        click.echo(f"on {torch_device}, trainer.deterministic is {exactness}")
    differing = 0
    join(world, torch_device)
    try:
        for target in targets:
            verification = verify_checkpoint(
                app.project, experiment, target, torch_device, quiet=app.verbosity == "quiet", world=world
            )
            if world.is_main:
                append_verification(experiment, verification)
                click.echo(verification.describe())
            differing += not verification.identical
    except BaseException:
        leave(free_objects=False)
        raise
    leave()
    if differing:
        raise VerificationError(f"{differing} of {len(targets)} checkpoints were not reproduced bit for bit")
