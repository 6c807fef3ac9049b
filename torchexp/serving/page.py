"""What GET / answers: KServe V1's liveness to API clients, the project's page to browsers.

KServe's V1 protocol makes GET / the server's liveness, answered `{"status": "alive"}`;
KServe's own REST client asks for it with no Accept header of its own (httpx's `*/*`). A
browser's Accept header prefers text/html. So / answers the JSON unless the request
prefers text/html to application/json; then it answers the project's page, when its
Runner's `serve_page` hook names one, or else a redirect to FastAPI's OpenAPI page, /docs.

A page is a folder: its `index.html`, in which `{{MODEL_NAME}}` becomes the served model's
name, and the files it loads, served under /static/. Its Content-Security-Policy keeps it
from loading anything from another site.
"""

import html
import os
from typing import Any, NamedTuple

from torchexp.errors import TorchexpError, first_line

# The page loads nothing from another site: scripts, styles and connections stay on this server.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
INDEX = "index.html"


class Page(NamedTuple):
    """A project's page, read once when the app is built."""

    folder: str  # served under /static/
    index: str  # its index.html, the model's name filled in


def load_page(runner: Any, model_name: str) -> Page | None:
    """Return the project's page, or None when its Runner's `serve_page` names none.

    Args:
        runner: the project's Runner, whose `serve_page` names the folder.
        model_name: what replaces `{{MODEL_NAME}}` (HTML-escaped).

    Raises:
        TorchexpError: the folder holds no index.html, or one that is not UTF-8 text.
    """
    folder = runner.serve_page()
    if folder is None:
        return None
    folder = os.fspath(folder)
    hook = f"{type(runner).__name__}.serve_page"
    index = os.path.join(folder, INDEX)
    if not os.path.isfile(index):
        raise TorchexpError(f"{hook} returned {folder!r}, a folder without {INDEX}: return the folder of the page's {INDEX}, or None")
    try:
        with open(index, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise TorchexpError(f"the page {index} of {hook} cannot be read as UTF-8 text: {first_line(error)}") from error
    return Page(folder, text.replace("{{MODEL_NAME}}", html.escape(model_name)))


def prefers_html(accept: str) -> bool:
    """Whether an Accept header prefers text/html to application/json, as a browser's does.

    No header, `*/*` (KServe's client, curl) and `application/json` do not: a tie goes to
    the protocol's JSON.
    """
    return quality(accept, "text/html") > quality(accept, "application/json")


def quality(accept: str, media_type: str) -> float:
    """Return the q value an Accept header gives `media_type`: that of its most specific
    matching range (RFC 9110, section 12.5.1), or 0 when no range matches."""
    kind = media_type.split("/")[0]
    specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}
    best, found = -1, 0.0
    for item in accept.split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        rank = specificity.get(media_range.lower(), -1)
        if rank > best:
            best, found = rank, read_q(parameters)
    return found


def read_q(parameters: list[str]) -> float:
    """Return the q parameter of a media range, 1 when absent or not a number from 0 to 1."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                return 1.0
            return q if 0 <= q <= 1 else 1.0
    return 1.0
