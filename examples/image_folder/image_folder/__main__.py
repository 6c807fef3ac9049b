"""Command line of image_folder: `python -m image_folder --experiment-name NAME init | train | test | ...`,
and its own command, `prepare`."""

import os

import click

import torchexp
from torchexp import make_cli

# The JSON files travel with the package, so `init` finds them from any working folder.
HERE = os.path.dirname(os.path.abspath(__file__))

# Classes named as "module:Class" strings: --help and info answer without importing torch.
cli = make_cli(
    "image_folder.data:ImageFolderData",
    "image_folder.runner:ImageFolderRunner",
    config_path=os.path.join(HERE, "config.default.json"),
    schema_path=os.path.join(HERE, "config.schema.json"),
)


@cli.command()
@click.option("--mnist", "mnist_path", required=True, help="Folder holding MNIST/raw, MNIST's four IDX files in torchvision's layout.")
@click.option("--limit", type=click.IntRange(min=1), help="Images of each split to write, the first ones (for tests).  [default: all]")
@torchexp.pass_app
def prepare(app: torchexp.App, mnist_path: str, limit: int | None) -> None:
    """Write MNIST's images as PNG files to --data-path/train/<digit>/ and test/<digit>/,
    unless that image folder is there.

    The folder is written beside, then renamed into place: an interrupted run leaves
    nothing half-written, and a second run does nothing.
    """
    from image_folder.prepare import prepare_image_folder  # numpy and Pillow: not for --help

    written = prepare_image_folder(mnist_path, app.data_path, limit)
    if written is None:
        click.echo(f"the image folder {app.data_path} is there (train/, test/): nothing to do")
    else:
        click.echo(f"wrote {written['train']} training and {written['test']} test images as PNG files to {app.data_path} (train/, test/)")


def main() -> None:
    cli(prog_name="image_folder")


if __name__ == "__main__":
    main()
