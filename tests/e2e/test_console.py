"""The web console in a real headless Chromium (Debian's, which ``make test`` installs as root),
driven against a real gateway and real neurons: it shows the nodes and models, loads, unloads
and pins with a click, and the page changes without a reload.

A screenshot of each test's page is kept where ``CORTEX_ARTEFACTS`` says (else in the test's
temporary folder), never in the repository.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_gateway import KV, _ask, _profile, _profiles
from tests.e2e.test_gateway_keys import ALICE, OPS

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CORTEX_CHROMIUM", "/usr/bin/chromium")
# Chromium as root needs --no-sandbox; this machine's network is closed, so nothing may call out.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
KEYS = f"""[[keys]]
name = "alice"
key = "{ALICE}"
[[keys]]
name = "ops"
key = "{OPS}"
admin = true
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        why = f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium when root"
        if os.environ.get("CORTEX_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh page; its script errors fail the test; a screenshot is kept at the end."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
        assert errors == [], f"the console's script failed: {errors}"
    finally:
        try:
            _keep(page, tmp_path, request.node.name)
        finally:
            context.close()


def _keep(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot of the page, in the test's folder and in ``CORTEX_ARTEFACTS``."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    folder = os.environ.get("CORTEX_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)


def _row(page: Any, model: str, node: str) -> Any:
    return page.locator(f'#models tbody tr[data-model="{model}"][data-node="{node}"]')


def test_two_nodes_three_models_load_unload_and_pin_without_a_reload(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a", *KV)
    b = start_neuron("--model-dir", str(fleet_dir), "--name", "b", *KV)
    models = _profiles(
        _profile("m1"), _profile("m2", neurons='["b"]'), _profile("m3", neurons='["a", "b"]')
    )
    gateway = start_gateway({"a": a, "b": b}, models)
    _ask(gateway, "m1")  # loads m1 on a
    _ask(gateway, "m2")  # and m2 on b
    for _ in range(3):
        _ask(gateway, "m1", stream=True)

    page.goto(f"{gateway.url}/ui/")
    page.evaluate("window.sameDocument = true")
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    for name in ("a", "b"):
        card = page.locator(f'#nodes article[data-node="{name}"]')
        expect(card).to_contain_text("up")
        expect(card.locator(".device .bar")).to_have_count(1)
    expect(_row(page, "m1", "a")).to_have_attribute("data-state", "ready")
    expect(_row(page, "m2", "b")).to_have_attribute("data-state", "ready")
    expect(_row(page, "m3", "")).to_have_attribute("data-state", "available")
    expect(_row(page, "m1", "a").locator("td").nth(3)).to_have_text("transformers")

    # Load m3 on b, choosing the node, while b is frozen (a slow node): the load shows in
    # progress until b wakes, then its events come in and its row appears.
    page.select_option("#load-model", "m3")
    page.select_option("#load-node", "b")
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        page.click("#load-button")
        load = page.locator('#loads li[data-model="m3"][data-node="b"]')
        expect(load).to_contain_text("started", timeout=WAIT_MS)
        expect(page.locator("#loads-empty")).to_be_hidden()
        expect(page.locator("#load-button")).to_have_text("Loading…")
        expect(_row(page, "m3", "")).to_have_attribute("data-state", "loading")
    finally:
        os.kill(b.process.pid, signal.SIGCONT)
    expect(_row(page, "m3", "b")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    expect(load).to_have_count(0)
    expect(page.locator("#loads-empty")).to_be_visible()
    expect(_row(page, "m3", "")).to_have_count(0)
    expect(page.locator("#events")).to_contain_text("m3 is ready on b")
    expect(page.locator('#events li[data-kind="progress"]').first).to_contain_text("m3 on b")
    assert "b" in gateway.fleet()["nodes"][1]["name"]
    assert {m["id"] for m in gateway.fleet()["nodes"][1]["models"]} == {"m2", "m3"}

    # The gateway's own figures for the last minutes.
    traffic = page.locator('#traffic tbody tr[data-model="m1"]')
    expect(traffic).to_have_count(1, timeout=WAIT_MS)
    expect(traffic.locator("td").nth(2)).to_contain_text("ms")  # TTFT of the streamed ones
    _keep(page, tmp_path, "two-nodes-three-models")

    # Unload m1 from a: the table changes in place, the feed says so, the page never reloads.
    _row(page, "m1", "a").locator('button[data-action="unload"]').click()
    expect(_row(page, "m1", "a")).to_have_count(0, timeout=WAIT_MS)
    expect(_row(page, "m1", "")).to_have_attribute("data-state", "available")
    expect(page.locator("#events")).to_contain_text("m1 is no longer on a")
    assert gateway.loaded("a") == set()
    assert page.evaluate("window.sameDocument") is True

    # Pin m2, and unpin it again.
    _row(page, "m2", "b").locator('button[data-action="pin"]').click()
    expect(_row(page, "m2", "b")).to_contain_text("pinned", timeout=WAIT_MS)
    assert next(m for m in gateway.fleet()["models"] if m["id"] == "m2")["pinned"] is True
    _row(page, "m2", "b").locator('button[data-action="pin"]').click()
    expect(_row(page, "m2", "b").locator('button[data-action="pin"]')).to_have_text("Pin")
    assert next(m for m in gateway.fleet()["models"] if m["id"] == "m2")["pinned"] is False

    # A node going away: its card says so, live.
    b.kill()
    expect(page.locator('#nodes article[data-node="b"] .badge').first).to_have_text(
        "down", timeout=WAIT_MS
    )
    expect(page.locator("#events")).to_contain_text("b is down")
    assert page.evaluate("window.sameDocument") is True


def test_actions_need_the_admin_key_when_the_gateway_has_keys(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path, page: Any
) -> None:
    from playwright.sync_api import expect

    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a", *KV)
    gateway = start_gateway({"a": a}, _profiles(_profile("m1", pinned=True)), top=KEYS)
    page.goto(f"{gateway.url}/ui/")
    expect(_row(page, "m1", "a")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    expect(page.locator("#key-label")).to_have_class("needed", timeout=WAIT_MS)

    unload = _row(page, "m1", "a").locator('button[data-action="unload"]')
    unload.click()
    expect(page.locator("#toast")).to_contain_text("failed", timeout=WAIT_MS)
    expect(page.locator("#toast")).to_contain_text("API key")
    expect(page.locator("#admin-key")).to_be_focused()
    assert gateway.loaded("a") == {"m1"}

    page.fill("#admin-key", ALICE)  # a key, but not an admin's
    unload.click()
    expect(page.locator("#toast")).to_contain_text("not an admin key", timeout=WAIT_MS)
    assert gateway.loaded("a") == {"m1"}

    page.fill("#admin-key", OPS)
    _row(page, "m1", "a").locator('button[data-action="pin"]').click()  # unpin, or it reloads
    expect(_row(page, "m1", "a").locator('button[data-action="pin"]')).to_have_text(
        "Pin", timeout=WAIT_MS
    )
    _row(page, "m1", "a").locator('button[data-action="unload"]').click()
    expect(_row(page, "m1", "a")).to_have_count(0, timeout=WAIT_MS)
    assert gateway.loaded("a") == set()
