"""Command line of breast_cancer: `python -m breast_cancer --experiment-name NAME init | train | test | ...`."""

import os

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


def main() -> None:
    cli(prog_name="breast_cancer")


if __name__ == "__main__":
    main()
