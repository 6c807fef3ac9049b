"""The garbage collector of a serving process: what it holds at start frozen, and the
young generation's collections rarer.

Reference counting frees what a request makes (the parsed body's lists, the ASGI
messages, a future, a task), but CPython also runs a young-generation collection every
700 container allocations, a few dozen requests, and now and then a full one over every
object the process holds: about 225,000 once a release is loaded, torch's, FastAPI's and
pydantic's, which live as long as the process. Freezing them leaves them out of every
collection (reference counting still frees any that is dropped), and a young generation
of 10,000 makes its collections 14 times rarer; the reference cycles a server makes (an
exception's traceback) are still collected.
"""

import gc

YOUNG_GENERATION_THRESHOLD = 10_000  # CPython's default is 700


def tune_garbage_collector() -> None:
    """Freeze every object the process holds now, after collecting what is garbage, and
    raise the young generation's threshold; the older generations keep theirs. For a
    process that serves until it stops: the settings are the process's."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
