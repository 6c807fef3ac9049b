"""`python -m torchexp`: torchexp's own commands (create, compare), as the `torchexp` script."""

from torchexp.cli import main

main(prog_name="torchexp")
