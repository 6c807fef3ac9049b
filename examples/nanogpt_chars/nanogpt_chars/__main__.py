"""Command line of nanogpt_chars: `python -m nanogpt_chars --experiment-name NAME init | train | test | ...`."""

import os
import sysconfig

from torchexp import make_cli

# The JSON files travel with the package, so `init` finds them from any working folder.
HERE = os.path.dirname(os.path.abspath(__file__))

# Classes named as "module:Class" strings: --help and info answer without importing torch.
cli = make_cli(
    "nanogpt_chars.data:NanoGPTCharsData",
    "nanogpt_chars.runner:NanoGPTCharsRunner",
    config_path=os.path.join(HERE, "config.default.json"),
    schema_path=os.path.join(HERE, "config.schema.json"),
)

# The corpus is on every machine already: the standard library's own modules, unless
# --data-path names another folder of text files.
for option in cli.params:
    if option.name == "data_path":
        option.default = sysconfig.get_paths()["stdlib"]


def main() -> None:
    cli(prog_name="nanogpt_chars")


if __name__ == "__main__":
    main()
