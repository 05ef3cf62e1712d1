"""The web console at ``/ui``: three static files shipped in the package (``gateway/ui/``),
with no build step and nothing fetched from elsewhere. The page reads what any client can
(``GET /fleet``, ``GET /fleet/events``, ``GET /fleet/stats``) and acts through the operator
routes with the key the operator types in, so it has exactly the API's rights.

The files are read once, when the gateway starts. Each answer forbids everything but the
gateway's own scripts, styles and API (``Content-Security-Policy``) and being framed by
another site, since the page carries buttons that unload models.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cortex.errors import Forbidden, NotFound

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class Console:
    def __init__(self) -> None:
        folder = resources.files("cortex.gateway") / "ui"
        self._files = {name: (folder / name).read_bytes() for name in FILES}

    def routes(self) -> list[Route]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/ui", self.home, methods=["GET"]),
            Route("/ui/", self.file, methods=["GET"]),
            Route("/ui/{name}", self.file, methods=["GET"]),
        ]

    async def home(self, request: Request) -> Response:
        """A browser sent to the gateway's address, or to ``/ui``, lands on the console
        (relative to where it asked, so a reverse proxy's prefix stays)."""
        return RedirectResponse("ui/", status_code=308)  # from "/" and "/ui" alike: /ui/

    async def file(self, request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        body = self._files.get(name)
        if body is None:
            raise NotFound(f"No file {name!r} in the console: it is at /ui/")
        return Response(body, media_type=FILES[name], headers=HEADERS)


def refuse_other_sites(request: Request) -> None:
    """An operator action sent by a page of another site (or another port of this host) is
    refused: without keys, any page the operator visits could otherwise unload models with a
    form. Browsers say where a request comes from in ``Sec-Fetch-Site``; the command line,
    the SDKs and curl send none."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(
            "Operator actions are refused from a page of another site "
            f"(Sec-Fetch-Site: {site}); use the console at /ui/ or the API directly"
        )
