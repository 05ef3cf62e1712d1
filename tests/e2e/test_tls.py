"""TLS end to end, with real processes: a neuron serving HTTPS (``--tls-cert/--tls-key``), a
gateway serving HTTPS on its API and metrics ports (``tls_cert``/``tls_key`` in [gateway]),
talking to the neuron verified against ``ca_file``; refused when that is the wrong CA; and
``tls_verify = false`` taking the neuron as it is.

A throwaway CA made here (``trustme``) signs one certificate for 127.0.0.1 that both servers
use; another CA signed nothing they hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from openai import OpenAI

from cortex.tls import client_context
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]
MODELS = '[[models]]\nid = "tiny"\nneurons = ["a"]\n'


@dataclass
class Certs:
    ca: Path
    other_ca: Path
    cert: Path  # for 127.0.0.1, signed by ``ca``
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = Certs(root / "ca.pem", root / "other-ca.pem", root / "cert.pem", root / "key.pem")
    ca.cert_pem.write_to_path(files.ca)
    other.cert_pem.write_to_path(files.other_ca)
    issued.cert_chain_pems[0].write_to_path(files.cert)
    issued.private_key_pem.write_to_path(files.key)
    return files


@pytest.fixture(scope="module")
def https_neuron(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, certs: Certs
) -> Iterator[Neuron]:
    """A neuron serving ``tiny`` over HTTPS."""
    tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    process = Neuron(
        ["--model-dir", str(model_dir), "--preload", "tiny", "--name", "tls", *tls],
        tmp_path_factory.mktemp("neuron-log") / "neuron.log",
        verify=client_context(certs.ca),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _chat(gateway: Gateway, **kwargs: Any) -> Any:
    """A chat through the openai SDK, verifying the gateway as ``gateway.verify`` says; a
    streamed one comes back as its list of chunks."""
    with httpx.Client(verify=gateway.verify) as http:
        client = OpenAI(
            base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, http_client=http
        )
        reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4, **kwargs)
        return list(reply) if kwargs.get("stream") else reply


def _cortex_status(gateway: Gateway, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "cortex", "status", "--gateway", gateway.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
        check=False,
    )


def _node(gateway: Gateway, name: str) -> dict[str, Any]:
    return next(n for n in gateway.fleet()["nodes"] if n["name"] == name)


def test_https_gateway_in_front_of_an_https_neuron(
    start_gateway: Any, https_neuron: Neuron, certs: Certs
) -> None:
    assert https_neuron.url.startswith("https://")
    assert https_neuron.get("/health").status_code == 200  # the neuron itself, verified
    gateway = start_gateway(
        {"a": https_neuron},
        MODELS,
        gateway={"tls_cert": str(certs.cert), "tls_key": str(certs.key)},
        neuron_keys={"a": {"ca_file": str(certs.ca)}},
        verify=client_context(certs.ca),
    )
    assert gateway.url.startswith("https://")
    assert "gateway listening on https://" in gateway.log()

    # The openai SDK, verifying the test CA: a chat, whole and streamed, through both hops.
    reply = _chat(gateway)
    assert reply.choices[0].message.content
    chunks = _chat(gateway, stream=True)
    assert chunks
    assert chunks[-1].choices[0].finish_reason is not None
    assert _node(gateway, "a")["up"]

    # The metrics port is HTTPS too, with the same certificate.
    assert gateway.metrics_url.startswith("https://")
    assert "cortex_" in gateway.metrics()

    # No plain-HTTP answer on the TLS port, and no trust without the CA.
    with pytest.raises(httpx.TransportError):
        httpx.get(gateway.url.replace("https://", "http://") + "/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{gateway.url}/health", timeout=5)

    # The operator's CLI: verified by default, trusting SSL_CERT_FILE.
    ok = _cortex_status(gateway, SSL_CERT_FILE=str(certs.ca))
    assert ok.returncode == 0, ok.stderr
    assert "tiny" in ok.stdout
    refused = _cortex_status(gateway)
    assert refused.returncode == 1
    assert "cannot verify the TLS certificate" in refused.stderr
    assert "SSL_CERT_FILE" in refused.stderr


def test_a_neuron_signed_by_another_ca_is_refused_unless_tls_verify_is_false(
    start_gateway: Any, https_neuron: Neuron, certs: Certs
) -> None:
    wrong = start_gateway(
        {"a": https_neuron}, MODELS, neuron_keys={"a": {"ca_file": str(certs.other_ca)}}
    )
    node = _node(wrong, "a")
    assert not node["up"]
    assert "CERTIFICATE_VERIFY_FAILED" in node["error"]
    response = wrong.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert response.status_code == 503, response.text
    deadline = time.monotonic() + 10
    while "CERTIFICATE_VERIFY_FAILED" not in wrong.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "node a is down" in wrong.log()
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.log()

    unchecked = start_gateway({"a": https_neuron}, MODELS, neuron_keys={"a": {"tls_verify": False}})
    assert _node(unchecked, "a")["up"]
    assert _chat(unchecked).choices[0].message.content
