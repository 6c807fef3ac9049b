"""How many threads inference may use: a share of the cores this process is given
(`torchexp.cores`), not the machine's: oversubscribed threads are what users of Ray Serve
and multi-worker deployments report.
"""

import contextlib

from torchexp.cores import count_usable_cores
from torchexp.formats import FORMATS


def choose_threads(requested: int | None, runtime: str, workers: int = 1) -> int:
    """Return `--threads`, or when it is not given each worker's share of the usable cores,
    less one for the event loop of a worker whose runtime runs on torch's threads (torch,
    and the formats whose `torch_threads` says so).

    The event loop parses and answers every request while the model runs, and torch's
    OpenMP threads keep spinning after each batch: on 2 cores, `serve` with 1 torch thread
    answered 766-808 requests/s at 1 client and 4,078-4,379 at 32, with 2 threads 391-457
    and 3,552-3,594. onnxruntime did better with every core (1,273 against 1,013 requests/s
    at 1 client, 5,189 against 5,103 at 32), so it keeps them. An AOTInductor package runs
    on torch's threads too: on 2 busy cores it answered 272-730 requests/s at 32 clients
    with 2 threads, against 3,908-4,222 with 1.
    """
    if requested is not None:
        return requested
    share = max(1, count_usable_cores() // workers)
    torch_threads = runtime == "torch" or (runtime in FORMATS and FORMATS[runtime].torch_threads)
    return max(1, share - 1) if torch_threads else share


def apply_threads(threads: int) -> None:
    """Give torch `threads` intra-op threads and one inter-op thread.

    Inter-op parallelism only helps graphs with independent branches; its pool would add
    threads beyond those given.
    """
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # torch refuses once parallel work has started in this process
        torch.set_num_interop_threads(1)
