"""What torchexp changes for the whole process, and when: only for its own command line.

Imported as a library (`torchexp.Experiments`, `load_model`, training from Python),
torchexp changes nothing process-wide that outlives the call: the process is its caller's.
The command line owns its process and makes three changes there, each named by an
environment variable: 0 turns it off; 1 turns the last two on in a library caller's process.

- TORCHEXP_GC_FREEZE: objects still alive at exit are frozen out of the interpreter's last
  garbage collections, which took over a second of every training process (`torchexp.cli`).
- TORCHEXP_MALLOPT: glibc keeps freed memory, trainer.keep_freed_memory's default, so that
  each training step does not fault it back in (`torchexp.memory`).
- TORCHEXP_READ_HOOK: an audit hook notes the files a data set opens, whose digest the
  provenance records (`torchexp.provenance`); Python can never remove an audit hook.
"""

import contextlib
import os
from collections.abc import Iterator

GC_FREEZE = "TORCHEXP_GC_FREEZE"
MALLOPT = "TORCHEXP_MALLOPT"
READ_HOOK = "TORCHEXP_READ_HOOK"

COMMAND_LINE = False  # whether torchexp's command line is running a command in this process now


@contextlib.contextmanager
def running_command_line() -> Iterator[None]:
    """Within the block, this process is the command line's, which may change it."""
    global COMMAND_LINE
    previous, COMMAND_LINE = COMMAND_LINE, True
    try:
        yield
    finally:
        COMMAND_LINE = previous


def allows(variable: str, asked: bool = False) -> bool:
    """Whether the process-wide change that `variable` names may be made now.

    Args:
        variable: one of the names above; "0" refuses the change, "1" allows it.
        asked: the caller's own settings ask for it (an experiment's config); otherwise
            only the command line makes it.
    """
    value = os.environ.get(variable)
    if value in ("0", "1"):
        return value == "1"
    return asked or COMMAND_LINE
