"""The options of `serve` and their defaults, in a module light enough for `--help`."""

import dataclasses

from torchexp.errors import ConfigError
from torchexp.formats import FORMATS

# torch runs the release's model; each export format's name runs its export in the runtime it provides.
RUNTIMES = ("torch", *FORMATS)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """How to serve a release; `serve --help` explains each option."""

    epoch: int | None = None  # None: the latest release
    host: str = "127.0.0.1"  # loopback: only this machine can connect unless asked otherwise
    port: int = 8000  # 0: a free port
    runtime: str = "torch"  # or the name of an export format (RUNTIMES)
    device: str = "auto"
    max_batch_size: int = 32  # instances per batch
    max_delay_ms: float = 5.0  # wait after a request's arrival for others to batch with it
    max_queue: int = 256  # requests waiting; more get 503
    # 16 MiB: about 5,000 28x28 instances as JSON, between TorchServe's 6.5 MB and Triton's 64 MiB.
    max_body_bytes: int = 16 * 1024 * 1024
    threads: int | None = None  # per process; None: the cores this process may use, divided among the workers
    workers: int = 1  # processes serving on the one port, each with its own model and batcher


DEFAULTS = ServeOptions()


def check_runtime(runtime: str) -> None:
    """Refuse a runtime that is not one of RUNTIMES.

    Raises:
        ConfigError: it is not; the message lists those there are.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"serve runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
