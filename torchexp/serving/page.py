"""What GET / answers: KServe V1's liveness to API clients, the project's page to browsers.

KServe's V1 protocol makes GET / the server's liveness, answered `{"status": "alive"}`;
KServe's own REST client asks for it with no Accept header of its own (httpx's `*/*`). A
browser's Accept header prefers text/html. So / answers the JSON unless the request
prefers text/html to application/json; then it answers the project's page, when its
Runner's `serve_page` hook names one, or else torchexp's own page of the API (`describe_api`):
every route and what it answers, from this server alone. FastAPI's /docs would be blank
offline, as its Swagger UI loads its scripts from a CDN.

A page is a folder: its `index.html`, in which `{{MODEL_NAME}}` becomes the served model's
name, and the files it loads, served under /static/. Its Content-Security-Policy keeps it
from loading anything from another site.
"""

import dataclasses
import html
import os
from typing import Any

from torchexp.errors import TorchexpError, first_line

# The page loads nothing from another site: scripts, styles and connections stay on this server.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
INDEX = "index.html"


@dataclasses.dataclass(frozen=True)
class Page:
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
        raise TorchexpError(
            f"{hook} returned {folder!r}, a folder without {INDEX}: return the folder of the page's {INDEX}, or None"
        )
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


def describe_api(model_name: str, routes: list[tuple[str, str, str]]) -> str:
    """torchexp's page of the API, for a browser at / when the project has none.

    Args:
        model_name: the served model's name.
        routes: (method, path, what it does) of each route, in the order the app has them.
    """
    rows = "".join(
        f"<tr><td>{html.escape(method)}</td><td><code>{html.escape(path)}</code></td><td>{html.escape(summary)}</td></tr>"
        for method, path, summary in routes
    )
    name = html.escape(model_name)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: torchexp serve</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
td{{padding:.2rem .6rem;border-bottom:1px solid #ddd}} pre{{background:#f4f4f4;padding:.6rem;overflow-x:auto}}</style>
</head><body><h1>{name}</h1>
<p>A release served by torchexp. Predict with KServe V1:</p>
<pre>curl -X POST http://HOST:PORT/v1/models/{name}:predict -H 'Content-Type: application/json' \\
  -d '{{"instances": [...]}}'</pre>
<p>or with the Open Inference Protocol (V2) at <code>/v2/models/{name}/infer</code>, e.g. from Triton's
<code>tritonclient.http</code>. The whole API, with the shape of every request and answer:
<a href="openapi.json">openapi.json</a> (and <a href="docs">/docs</a>, whose page loads its scripts from the
internet).</p>
<table><thead><tr><th>method</th><th>path</th><th>what it does</th></tr></thead><tbody>{rows}</tbody></table>
</body></html>
"""
