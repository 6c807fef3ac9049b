"""The click commands, in modules by concept; `torchexp.cli` assembles them into groups."""
