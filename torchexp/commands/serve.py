"""The `serve` command: a release over HTTP, with dynamic batching, and the project's page if it has one."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import choose_point, with_device, with_point
from torchexp.extras import require_extra
from torchexp.formats import FORMATS
from torchexp.serving.options import DEFAULTS, RUNTIMES, ServeOptions

MAX_BODY_HELP = (
    "Largest request body in bytes; larger ones get 413 before being read. 16 MiB holds about "
    "5,000 28x28 instances as JSON, and bounds the memory one request can take: between "
    "TorchServe's 6.5 MB and Triton's 64 MiB."
)
RUNTIME_HELP = (
    "; ".join(
        ["torch runs the release's model"]
        + [f"{fmt.name} {fmt.runtime_help} (write it with `export --format {fmt.name}`)" for fmt in FORMATS.values()]
    )
    + "."
)


@click.command()
@with_point("Serve the release of this epoch.", "the latest release")
@click.option(
    "--host",
    default=DEFAULTS.host,
    show_default=True,
    help="Address to listen on; 0.0.0.0 opens the server to the network.",
)
@click.option(
    "--port",
    default=DEFAULTS.port,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=DEFAULTS.runtime,
    show_default=True,
    help=RUNTIME_HELP,
)
@with_device
@click.option(
    "--max-batch-size",
    default=DEFAULTS.max_batch_size,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most instances run through the model at once.",
)
@click.option(
    "--max-delay-ms",
    default=DEFAULTS.max_delay_ms,
    show_default=True,
    type=click.FloatRange(min=0, max=1000),
    help="Longest wait, after a request arrives, for others to batch with it.",
)
@click.option(
    "--max-queue",
    default=DEFAULTS.max_queue,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most requests waiting for the model; more get 503 at once instead of a growing delay.",
)
@click.option(
    "--max-body-bytes",
    default=DEFAULTS.max_body_bytes,
    show_default=True,
    type=click.IntRange(min=1),
    help=MAX_BODY_HELP,
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help=(
        "Threads for inference, per worker.  [default: the cores this process may use (its CPU affinity, capped by "
        "a container's CPU quota), divided among the workers, less one per torch worker for its event loop]"
    ),
)
@click.option(
    "--workers",
    default=DEFAULTS.workers,
    show_default=True,
    type=click.IntRange(min=1),
    help=(
        "Processes answering on the one port, each with its own copy of the model and its own batcher; "
        "SIGTERM or Ctrl-C stops them all."
    ),
)
@pass_app
def serve(
    app: App,
    epoch: int | None,
    step: int | None,
    host: str,
    port: int,
    runtime: str,
    device: str,
    max_batch_size: int,
    max_delay_ms: float,
    max_queue: int,
    max_body_bytes: int,
    threads: int | None,
    workers: int,
) -> None:
    """Serve a release over HTTP until Ctrl-C or SIGTERM.

    The KServe V1 / TF Serving REST protocol (POST /v1/models/NAME:predict with
    {"instances": [...]}, GET / for liveness), /livez, /readyz, /metrics (Prometheus) and
    /docs; a browser opening / gets the project's page (its Runner's serve_page), or /docs
    when it has none. Requests that arrive together run as one batch on one worker
    thread. --workers N runs N such processes on the one port, for machines with more
    cores than one process keeps busy; to scale out further, run more servers (on more
    machines) behind a load balancer or KServe.
    """
    require_extra("serve", "serve")
    extra = FORMATS[runtime].extra if runtime in FORMATS else None
    if extra is not None:
        require_extra(extra, f"serve --runtime {runtime}")
    from torchexp.serving.launcher import serve_release

    experiment = app.open_experiment()
    epoch = choose_point(experiment, epoch, step)
    options = ServeOptions(
        epoch, host, port, runtime, device, max_batch_size, max_delay_ms, max_queue, max_body_bytes, threads, workers
    )
    serve_release(experiment, options, click.echo, app.verbosity)
