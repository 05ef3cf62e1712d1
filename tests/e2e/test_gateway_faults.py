"""One bad request harms no one: faults at a real gateway in front of real neurons.

A neuron frozen mid-answer (SIGSTOP) past ``request_timeout``; a neuron killed while the
gateway loads a model on it; bodies the gateway must refuse under ``/v1/messages``; and
SIGTERM to each program with a stream in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex import sse
from tests.e2e.procs import Gateway, Neuron, Process, free_port

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]
LONG = 3000  # tokens: a stream that is still going when the test acts on it


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, fleet_dir: Path
) -> Iterator[tuple[Neuron, Gateway]]:
    """A neuron with m1 ready behind a gateway that waits 1 s for a silent neuron and takes
    bodies up to 64 KiB."""
    logs = tmp_path_factory.mktemp("faults")
    neuron = Neuron(
        ["--model-dir", str(fleet_dir), "--name", "a", "--preload", "m1"], logs / "neuron.log"
    )
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        gateway = Gateway(
            {"a": neuron},
            '[[models]]\nid = "m1"\n',
            logs / "gateway",
            gateway={"request_timeout": "1s", "max_request_bytes": "64KiB"},
        )
        gateway.wait_ready()
        _wait(lambda: _ready(gateway, "a", "m1"))
        yield neuron, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _ready(gateway: Gateway, node: str, model: str) -> bool:
    nodes = {n["name"]: n for n in gateway.fleet()["nodes"]}
    return bool(nodes[node]["up"]) and model in gateway.loaded(node)


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _events(raw: bytes) -> list[sse.Event]:
    return list(sse.events([raw]))


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- a neuron that freezes ----------------------------------------------------------------


def _openai(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0, timeout=60)


def _anthropic(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="-", max_retries=0, timeout=60)


SDKs = tuple[openai.OpenAI, anthropic.Anthropic]


@pytest.fixture
def sdks(fleet: tuple[Neuron, Gateway]) -> Iterator[SDKs]:
    with _openai(fleet[1]) as to_openai, _anthropic(fleet[1]) as to_anthropic:
        yield to_openai, to_anthropic


def _ask(sdks: SDKs, dialect: str, tokens: int, stream: bool) -> Any:
    """The dialect's SDK call for m1 (a stream when ``stream``)."""
    if dialect == "chat":
        return sdks[0].chat.completions.create(
            model="m1", messages=HELLO, max_tokens=tokens, stream=stream
        )
    if dialect == "responses":
        return sdks[0].responses.create(
            model="m1", input="Say hello.", max_output_tokens=tokens, stream=stream
        )
    return sdks[1].messages.create(model="m1", messages=HELLO, max_tokens=tokens, stream=stream)


@pytest.mark.parametrize("dialect", ["chat", "responses", "messages"])
def test_a_neuron_frozen_mid_stream_ends_the_stream_with_the_dialects_error(
    fleet: tuple[Neuron, Gateway], sdks: SDKs, dialect: str
) -> None:
    neuron, gateway = fleet
    events: list[Any] = []
    failure: Exception | None = None
    try:
        with _ask(sdks, dialect, LONG, stream=True) as stream:
            events.append(next(iter(stream)))
            os.kill(neuron.process.pid, signal.SIGSTOP)
            began = time.monotonic()
            try:
                events += stream
            except (openai.APIError, anthropic.APIStatusError) as exc:
                failure = exc
            waited = time.monotonic() - began
    finally:
        os.kill(neuron.process.pid, signal.SIGCONT)
    assert waited < 30  # the gateway's 1 s, not the client's 60 s
    if dialect == "chat":  # an error chunk: the SDK raises it (then [DONE] follows)
        assert isinstance(failure, openai.APIError)
        assert failure.body["type"] == "timeout_error"
    elif dialect == "responses":  # response.failed: the SDK hands it over as the last event
        assert failure is None
        first, last = events[0], events[-1]
        assert (first.type, last.type) == ("response.created", "response.failed")
        assert last.sequence_number == len(events) - 1
        assert last.response.id == first.response.id
        assert last.response.status == "failed"
        assert last.response.error.code == "timeout"
    else:  # event: error, which the SDK raises
        assert events[0].type == "message_start"
        assert isinstance(failure, anthropic.APIStatusError)
        assert failure.body["error"]["type"] == "timeout_error"
    _wait(lambda: _ready(gateway, "a", "m1"))  # thawed, and up again for the next test


def test_a_frozen_neuron_is_a_504_in_each_dialects_envelope(
    fleet: tuple[Neuron, Gateway], sdks: SDKs
) -> None:
    neuron, gateway = fleet

    def refusal(dialect: str) -> Exception:
        try:
            _ask(sdks, dialect, 4, stream=False)
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            return exc
        raise AssertionError(f"{dialect}: answered by a frozen neuron")

    os.kill(neuron.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            chat, responses, messages = pool.map(refusal, ["chat", "responses", "messages"])
    finally:
        os.kill(neuron.process.pid, signal.SIGCONT)
    for error in (chat, responses):
        assert isinstance(error, openai.APIStatusError)
        assert error.status_code == 504
        assert error.body["type"] == "timeout_error"
    assert isinstance(messages, anthropic.APIStatusError)
    assert messages.status_code == 504
    assert messages.body["error"]["type"] == "timeout_error"
    _wait(lambda: _ready(gateway, "a", "m1"))


# --- /v1/messages refuses in Anthropic's words ---------------------------------------------


@pytest.mark.parametrize(
    ("content", "status", "kind"),
    [
        (b'{"model": "m1", "max_tokens": 4, "messages": []' + b" " * 70_000 + b"}", 413,
         "request_too_large"),
        (b'{"model": "m1", "max_tokens": 4, "messages": [', 400, "invalid_request_error"),
        (b'{"model": "m1", "max_tokens": 18446744073709551616, "messages": '
         + json.dumps(HELLO).encode() + b"}", 400, "invalid_request_error"),
    ],
    ids=["over-max_request_bytes", "not-json", "2**64"],
)  # fmt: skip
def test_messages_errors_are_in_anthropics_envelope(
    fleet: tuple[Neuron, Gateway], content: bytes, status: int, kind: str
) -> None:
    _, gateway = fleet
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        content=content,
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == kind
    assert "Traceback" not in gateway.log()


# --- a neuron that dies while it loads ------------------------------------------------------


def test_a_neuron_killed_during_a_cold_load_costs_the_request_nothing(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a")
    b = start_neuron("--model-dir", str(fleet_dir), "--name", "b")
    gateway = start_gateway({"a": a, "b": b}, '[[models]]\nid = "m1"\nneurons = ["a", "b"]\n')
    body = {"model": "m1", "messages": HELLO, "max_tokens": 4}
    # Frozen, a takes the load and never finishes it; killed, it drops the connection the
    # gateway waits on, as a neuron that crashes while it loads does.
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(
                httpx.post, f"{gateway.url}/v1/chat/completions", json=body, timeout=60
            )
            _wait(lambda: [(x["model"], x["node"]) for x in gateway.fleet()["loads"]] == [
                ("m1", "a")
            ])  # fmt: skip
            a.kill()
            reply = asked.result()
    finally:
        if a.process.poll() is None:
            os.kill(a.process.pid, signal.SIGCONT)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-cortex-node"] == "b"
    assert reply.json()["choices"][0]["message"]["content"] is not None
    metrics = gateway.metrics()
    labels = {"model": "m1", "node": "a", "result": "NeuronUnavailable"}
    assert _metric(metrics, "cortex_model_loads_total", **labels) == 1
    assert _metric(metrics, "cortex_model_loads_total", model="m1", node="b", result="ok") == 1


# --- SIGTERM lets a stream in flight finish -------------------------------------------------


def _stream_through_sigterm(url: str, process: Process) -> bytes:
    """A long chat stream from ``url``; SIGTERM to ``process`` once it has begun."""
    body = {"model": "m1", "messages": HELLO, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        pieces = response.iter_raw()
        raw = next(pieces)
        process.process.send_signal(signal.SIGTERM)
        raw += b"".join(pieces)
    return raw


def _assert_finished_whole(raw: bytes, process: Process) -> None:
    events = _events(raw)
    assert events[-1].is_done()
    finish = [
        c["finish_reason"] for e in events[:-1] for c in json.loads(e.data).get("choices", [])
    ]
    assert finish[-1] == "length"  # generated to the end, not cut
    assert process.process.wait(timeout=60) == 0
    assert "Traceback" not in process.log()


def test_sigterm_to_neuron_serve_finishes_the_stream_and_exits_0(
    start_neuron: Any, fleet_dir: Path
) -> None:
    neuron = start_neuron("--model-dir", str(fleet_dir), "--preload", "m1", "--name", "a")
    _assert_finished_whole(_stream_through_sigterm(neuron.url, neuron), neuron)


def test_sigterm_to_cortex_serve_finishes_the_stream_and_exits_0(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    neuron = start_neuron("--model-dir", str(fleet_dir), "--preload", "m1", "--name", "a")
    gateway = start_gateway({"a": neuron}, '[[models]]\nid = "m1"\n')
    _wait(lambda: _ready(gateway, "a", "m1"))
    _assert_finished_whole(_stream_through_sigterm(gateway.url, gateway), gateway)


def test_sigterm_to_cortex_up_finishes_the_stream_and_exits_0(
    tmp_path: Path, fleet_dir: Path
) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "cortex", "up", "--model", str(fleet_dir / "m1"),
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
        "--log-level", "info",
    ]  # fmt: skip
    up = Process(command, port, tmp_path / "up.log", None)
    try:
        up.wait_ready()
        _wait(lambda: "m1" in up.get("/v1/models").text and _up_ready(up))
        _assert_finished_whole(_stream_through_sigterm(up.url, up), up)
    finally:
        up.stop()


def _up_ready(up: Process) -> bool:
    nodes = up.get("/fleet").json()["nodes"]
    return any(m["id"] == "m1" and m["state"] == "ready" for m in nodes[0]["models"])


def test_neuron_serve_takes_shutdown_grace_as_a_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cortex.neuron", "serve", "--shutdown-grace", "soon"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "shutdown_grace" in result.stderr
