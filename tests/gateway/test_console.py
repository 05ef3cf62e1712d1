"""The web console's files at ``/ui/``, the figures it reads (``/fleet/stats``), and the operator
routes refusing another site's page. In-process, against fake neurons; the console itself runs
in a real Chromium in ``tests/e2e/test_console.py``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from cortex import __version__
from cortex.config import GatewaySection, ModelProfile, ModelsConfig
from cortex.gateway.app import GatewayApp
from cortex.gateway.console import FILES
from tests.gateway.test_proxy import HELLO, FakeChat, serve_fleet


@dataclass
class Rig:
    url: str
    app: GatewayApp


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    models = ModelsConfig(models=[ModelProfile(id="m0", neurons=["a"])])
    gateway = GatewaySection(poll_interval=0.05, load_timeout=5)
    async with serve_fleet({"a": FakeChat("a")}, {"m0": 100}, models, gateway) as (url, app, _):
        yield Rig(url, app)


async def test_the_console_is_served_with_headers_that_keep_it_to_itself(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.url, timeout=5.0) as client:
        for path in ("/", "/ui"):  # a browser sent to the gateway lands on the console
            moved = await client.get(path)
            assert moved.status_code == 308
            assert httpx.URL(rig.url + path).join(moved.headers["location"]).path == "/ui/"
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        script = await client.get("/ui/console.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "EventSource" in script.text
        missing = await client.get("/ui/../../etc/passwd")
        assert missing.status_code == 404
        missing = await client.get("/ui/nothing.js")
        assert missing.status_code == 404
        assert "No file 'nothing.js'" in missing.json()["error"]["message"]


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN and no build: every file the page names is one of the package's own."""
    from importlib import resources

    folder = resources.files("cortex.gateway") / "ui"
    page = (folder / "index.html").read_text()
    named = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sorted(n for n in named if n != "data:,") == ["console.css", "console.js"]
    for name in FILES:
        text = (folder / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
        assert "//cdn" not in text


async def test_stats_count_the_gateway_s_own_requests(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.url, timeout=5.0) as client:
        empty = (await client.get("/fleet/stats")).json()
        assert empty["models"] == {}
        assert empty["version"] == __version__
        assert empty["keys"] is False
        for _ in range(3):
            answer = await client.post(
                "/v1/chat/completions", json={"model": "m0", "messages": HELLO}
            )
            assert answer.status_code == 200
        stream = {"model": "m0", "messages": HELLO, "stream": True}
        assert (await client.post("/v1/chat/completions", json=stream)).status_code == 200
        m0 = (await client.get("/fleet/stats")).json()["models"]["m0"]
        assert m0["requests"] == 4
        assert m0["errors"] == 0
        assert m0["ttft_p50"] is not None  # the streamed one
        assert sum(b["requests"] for b in m0["series"]) == 4


async def test_operator_actions_from_another_site_s_page_are_refused(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.url, timeout=5.0) as client:
        for site in ("cross-site", "same-site"):
            refused = await client.post(
                "/fleet/load", json={"model": "m0"}, headers={"sec-fetch-site": site}
            )
            assert refused.status_code == 403
            assert refused.json()["error"]["type"] == "permission_error"
            assert "another site" in refused.json()["error"]["message"]
        assert rig.app.fleet.snapshot.ready_on("m0") == []
        ours = await client.post(
            "/fleet/load", json={"model": "m0"}, headers={"sec-fetch-site": "same-origin"}
        )
        assert ours.status_code == 200
        assert (await client.post("/fleet/pin", json={"model": "m0"})).status_code == 200
