"""optuna-dashboard on a study's storage, in this process, until Ctrl-C."""

import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from torchexp.errors import TorchexpError


class RequestHandler(WSGIRequestHandler):
    """wsgiref's handler, without a reverse DNS lookup for every logged request."""

    def address_string(self) -> str:
        return self.client_address[0]


def serve_dashboard(storage: Any, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve optuna-dashboard on `storage` (an Optuna storage object, which the journal file
    needs) at host:port until Ctrl-C, announcing its URL once it listens.

    The server runs in a thread and this one waits for Ctrl-C: a KeyboardInterrupt raised
    in the thread that serves would land inside a request, where wsgiref's error handler
    swallows it and the server goes on (as `optuna_dashboard.run_server` does).

    Raises:
        TorchexpError: the address cannot be listened on (a port in use, say).
    """
    import optuna_dashboard

    try:
        server = make_server(host, port, optuna_dashboard.wsgi(storage), handler_class=RequestHandler)
    except OSError as error:
        raise TorchexpError(f"optuna-dashboard could not listen on {host}:{port}: {error.strerror or error}") from error
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    announce(f"optuna-dashboard at http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
