"""Command line of breast_cancer: `python -m breast_cancer --experiment-name NAME init | train | test | ...`."""

import os

import click

import torchexp
from torchexp import make_cli

# The JSON files travel with the package, so `init` finds them from any working folder.
HERE = os.path.dirname(os.path.abspath(__file__))

# Classes named as "module:Class" strings: --help and info answer without importing torch.
cli = make_cli(
    "breast_cancer.data:BreastCancerData",
    "breast_cancer.runner:BreastCancerRunner",
    config_path=os.path.join(HERE, "config.default.json"),
    schema_path=os.path.join(HERE, "config.schema.json"),
)


@cli.command("write-data")
@torchexp.pass_app
def write_data(app: torchexp.App) -> None:
    """Write scikit-learn's breast cancer data set to --data-path/breast_cancer.csv, unless it
    is there (init does it too)."""
    from breast_cancer.data import write_data_file  # imports torch: not for --help

    click.echo(f"the data set is in {write_data_file(app.data_path)}")


def main() -> None:
    cli(prog_name="breast_cancer")


if __name__ == "__main__":
    main()
