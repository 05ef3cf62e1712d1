"""TLS in the gateway, in-process: its HTTP server over HTTPS, and the two clients it talks to
neurons with (the upstream pool, the control-plane ``NeuronClient``) against an HTTPS server,
verified against the configured CA, refused with another one, unverified when so written.

A throwaway CA (``trustme``) issues a certificate for 127.0.0.1; another CA issues nothing
this server holds. The pool scenarios run again under uvloop, as the gateway does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import uvloop

from cortex.config import CortexConfig, NeuronEntry
from cortex.errors import CortexError, NeuronUnavailable
from cortex.gateway.http import HttpRequest, HttpServer, Responder
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.state import NodeState
from cortex.gateway.upstream import UpstreamConnectError, UpstreamPool
from cortex.tls import client_context, neuron_contexts, server_context


@dataclass
class Certs:
    ca: Path  # signed cert/key
    other_ca: Path  # signed nothing here
    cert: Path  # for 127.0.0.1
    key: Path
    localhost_cert: Path  # for "localhost" only: wrong for https://127.0.0.1
    localhost_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    named = ca.issue_cert("localhost")
    files = Certs(*(root / f"{n}.pem" for n in ("ca", "other", "cert", "key", "lcert", "lkey")))
    ca.cert_pem.write_to_path(files.ca)
    other.cert_pem.write_to_path(files.other_ca)
    issued.cert_chain_pems[0].write_to_path(files.cert)
    issued.private_key_pem.write_to_path(files.key)
    named.cert_chain_pems[0].write_to_path(files.localhost_cert)
    named.private_key_pem.write_to_path(files.localhost_key)
    return files


def _error(path: str, err: CortexError) -> tuple[bytes, bytes]:
    return b"application/json", json.dumps({"error": err.message}).encode()


async def _handler(request: HttpRequest, responder: Responder) -> None:
    if request.path == "/stream":
        responder.start(200, [(b"content-type", b"text/event-stream")])
        for i in range(3):
            await responder.write(b"data: %d\n\n" % i)
        responder.end()
    elif request.path == "/admin/defrag":
        responder.respond(200, b'{"freed_bytes": 42}')
    else:
        responder.respond(
            200, json.dumps({"path": request.path, "body": len(request.body)}).encode()
        )


async def _https_server(
    cert: Path, key: Path, *, header_timeout: float = 10.0
) -> tuple[HttpServer, str]:
    server = HttpServer(_handler, _error, max_body=1000, header_timeout=header_timeout)
    await server.start("127.0.0.1", 0, server_context(cert, key))
    return server, f"https://127.0.0.1:{server.port}"


# -- the upstream pool (the hot path) ----------------------------------------------------


async def scenario_pool_verifies_and_reuses(certs: Certs) -> None:
    server, endpoint = await _https_server(certs.cert, certs.key)
    pool = UpstreamPool(tls={endpoint: client_context(certs.ca)})
    try:
        for i in range(3):
            response = await pool.request(endpoint, "POST", f"/p{i}", [], b"x" * i, timeout=5)
            assert response.status == 200
            assert json.loads(await response.read()) == {"path": f"/p{i}", "body": i}
        assert pool.idle_count(endpoint) == 1  # one TLS connection, kept alive, reused
        assert len(server.connections) == 1
        async with await pool.request(endpoint, "GET", "/stream", [], timeout=5) as response:
            assert response.is_event_stream
            assert b"".join([chunk async for chunk in response]) == b"".join(
                b"data: %d\n\n" % i for i in range(3)
            )
    finally:
        await pool.aclose()
        await server.stop(grace=0.5)


async def scenario_pool_refuses_an_unknown_ca(certs: Certs) -> None:
    server, endpoint = await _https_server(certs.cert, certs.key)
    pool = UpstreamPool(tls={endpoint: client_context(certs.other_ca)})
    try:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool.request(endpoint, "GET", "/x", [], timeout=5)
    finally:
        await pool.aclose()
        await server.stop(grace=0.5)


async def scenario_pool_refuses_a_certificate_for_another_name(certs: Certs) -> None:
    server, endpoint = await _https_server(certs.localhost_cert, certs.localhost_key)
    pool = UpstreamPool(tls={endpoint: client_context(certs.ca)})
    try:
        with pytest.raises(UpstreamConnectError, match="mismatch"):
            await pool.request(endpoint, "GET", "/x", [], timeout=5)
    finally:
        await pool.aclose()
        await server.stop(grace=0.5)


async def scenario_pool_without_verification(certs: Certs) -> None:
    server, endpoint = await _https_server(certs.localhost_cert, certs.localhost_key)
    pool = UpstreamPool(tls={endpoint: client_context(verify=False)})
    try:
        response = await pool.request(endpoint, "GET", "/x", [], timeout=5)
        assert response.status == 200
        assert json.loads(await response.read())["path"] == "/x"
    finally:
        await pool.aclose()
        await server.stop(grace=0.5)


SCENARIOS = [
    scenario_pool_verifies_and_reuses,
    scenario_pool_refuses_an_unknown_ca,
    scenario_pool_refuses_a_certificate_for_another_name,
    scenario_pool_without_verification,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[9:])
async def test_pool(scenario: Callable[[Certs], Awaitable[None]], certs: Certs) -> None:
    await scenario(certs)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[9:])
def test_pool_under_uvloop(scenario: Callable[[Certs], Awaitable[None]], certs: Certs) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(certs))


# -- the gateway's HTTP server over HTTPS ------------------------------------------------


@pytest.fixture
async def https(certs: Certs) -> AsyncIterator[tuple[HttpServer, str]]:
    server, url = await _https_server(certs.cert, certs.key, header_timeout=0.5)
    yield server, url
    await server.stop(grace=0.5)


async def test_server_answers_a_verifying_client_over_keep_alive(
    https: tuple[HttpServer, str], certs: Certs
) -> None:
    server, url = https
    async with httpx.AsyncClient(base_url=url, verify=client_context(certs.ca)) as client:
        for i in range(3):
            response = await client.post(f"/p{i}", content=b"hello")
            assert response.json() == {"path": f"/p{i}", "body": 5}
        async with client.stream("GET", "/stream") as response:
            assert [line async for line in response.aiter_lines() if line] == [
                "data: 0",
                "data: 1",
                "data: 2",
            ]
    assert len(server.connections) <= 1


async def test_server_refusals_still_reach_a_tls_client(
    https: tuple[HttpServer, str], certs: Certs
) -> None:
    """A body over the limit: 413, then the close (a TLS transport cannot half-close)."""
    _, url = https
    async with httpx.AsyncClient(base_url=url, verify=client_context(certs.ca)) as client:
        response = await client.post("/big", content=b"x" * 5000)
        assert response.status_code == 413


async def test_server_is_not_trusted_without_its_ca(https: tuple[HttpServer, str]) -> None:
    _, url = https
    async with httpx.AsyncClient(base_url=url) as client:  # the system's CAs
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get("/x")


async def test_a_silent_or_plain_http_client_is_cut_at_the_handshake(
    https: tuple[HttpServer, str],
) -> None:
    server, url = https
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:  # says nothing: the handshake deadline is header_timeout (0.5 s)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
    finally:
        writer.close()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(url.replace("https://", "http://") + "/x", timeout=5.0)


# -- the control-plane client, and one context per neuron ---------------------------------


async def test_neuron_client_uses_each_neurons_context(certs: Certs) -> None:
    server, endpoint = await _https_server(certs.cert, certs.key)
    try:
        good = NeuronClient(
            poll_timeout=5, load_timeout=5, tls={endpoint: client_context(certs.ca)}
        )
        assert await good.defrag(NodeState("a", endpoint)) == 42
        await good.aclose()
        wrong = NeuronClient(
            poll_timeout=5, load_timeout=5, tls={endpoint: client_context(certs.other_ca)}
        )
        with pytest.raises(NeuronUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await wrong.defrag(NodeState("a", endpoint))
        await wrong.aclose()
    finally:
        await server.stop(grace=0.5)


def test_neuron_contexts_one_per_https_neuron(certs: Certs) -> None:
    config = CortexConfig(
        neurons=[
            NeuronEntry(name="plain", endpoint="http://10.0.0.1:13131"),
            NeuronEntry(name="ca", endpoint="https://10.0.0.2:13131", ca_file=certs.ca),
            NeuronEntry(name="system", endpoint="https://10.0.0.3:13131"),
            NeuronEntry(name="unchecked", endpoint="https://10.0.0.4:13131", tls_verify=False),
        ]
    )
    contexts = neuron_contexts(config.neurons)
    assert set(contexts) == {f"https://10.0.0.{i}:13131" for i in (2, 3, 4)}
    assert contexts["https://10.0.0.2:13131"].verify_mode == ssl.CERT_REQUIRED
    assert contexts["https://10.0.0.2:13131"].check_hostname
    assert contexts["https://10.0.0.3:13131"].verify_mode == ssl.CERT_REQUIRED
    assert contexts["https://10.0.0.4:13131"].verify_mode == ssl.CERT_NONE
    assert not contexts["https://10.0.0.4:13131"].check_hostname
