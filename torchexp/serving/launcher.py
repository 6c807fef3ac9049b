"""Starting `serve`: checks first, then the port, then one serving process or several.

The order makes each failure one sentence at start: a missing or corrupt release is found
before the port is taken, a port in use before anything is loaded. The release is then
served by this process (`server`) or, with --workers, by worker processes (`workers`),
which both use `server` and never each other.
"""

from collections.abc import Callable

from torchexp.folder import Experiment
from torchexp.releases import find_release
from torchexp.serving.options import ServeOptions, check_runtime
from torchexp.serving.server import bind_socket, describe_serving, serve_on
from torchexp.serving.threads import choose_threads
from torchexp.serving.workers import serve_with_workers


def serve_release(
    experiment: Experiment, options: ServeOptions, announce: Callable[[str], None], verbosity: str = "normal"
) -> None:
    """Serve the experiment's release until Ctrl-C or SIGTERM.

    Args:
        experiment: the experiment whose release is served.
        options: the `serve` command's options.
        announce: called once, before serving, with the line naming the model and its URL
            (the command line prints it).
        verbosity: "quiet", "normal" or "verbose", for uvicorn's logs and the access log.

    Raises:
        ConfigError: the runtime is not one of RUNTIMES.
        CheckpointError: the release (or the export its runtime runs) is missing or corrupt.
        TorchexpError: the address cannot be listened on, the project's page cannot be
            read, or the model failed to warm up.
    """
    check_runtime(options.runtime)
    release = find_release(experiment, options.epoch)
    release.verify()
    sock = bind_socket(options.host, options.port, shared=options.workers > 1)
    try:
        if options.workers > 1:
            serve_with_workers(experiment, options, sock, announce, verbosity)
        else:
            threads = choose_threads(options.threads, options.runtime)
            serve_on(
                sock,
                experiment,
                release,
                options,
                threads,
                lambda card: announce(describe_serving(card, threads, sock)),
                verbosity,
            )
    finally:
        sock.close()
