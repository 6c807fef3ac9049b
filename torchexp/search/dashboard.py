"""optuna-dashboard on a study's storage, in this process, until Ctrl-C."""

from typing import Any, Callable

from torchexp.errors import TorchexpError


def serve_dashboard(storage: Any, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve optuna-dashboard on `storage` (an Optuna storage object, which the journal file
    needs) at host:port until Ctrl-C, after announcing its URL.

    Raises:
        TorchexpError: the address cannot be listened on (a port in use, say).
    """
    import optuna_dashboard

    announce(f"optuna-dashboard at http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except OSError as error:
        raise TorchexpError(f"optuna-dashboard could not listen on {host}:{port}: {error.strerror or error}") from error
