"""Hostile clients against every surface of a real neuron and gateway.

Each case is a valid request with one thing broken (a field of the wrong type or out
of range, a field missing or unknown, a huge integer, a NUL or an overlong string, a
body that is not an object) or bytes that are not JSON at all. Whatever it is, the
answer is never a 5xx nor a cut connection: an error arrives in the dialect's own
envelope, a stream ends with the dialect's terminal event, and the fleet is healthy
afterwards. Replies are kept short (a case that happens to be valid generates a few
tokens), so the suite is bounded: about 1,100 cases in a minute or two.

The cases are derandomized, so CI runs the same corpus every time; set
``CORTEX_FUZZ_RANDOM=1`` to explore new ones. ``CORTEX_FUZZ_REPORT=<file>`` writes the
status histogram per surface as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex import sse
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello there."}]
HISTOGRAM: Counter[tuple[str, int]] = Counter()


# --- what each surface takes ------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    name: str
    target: str  # "neuron" or "gateway"
    path: str
    base: dict[str, Any]
    fields: tuple[str, ...]  # besides the base's own: optional fields worth breaking
    cases: int
    anthropic: bool = False


CHAT_FIELDS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n",
    "stream", "stream_options", "stop", "seed", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens",
    "stop_token_ids", "ignore_eos", "tools", "tool_choice", "response_format", "logit_bias",
    "user", "chat_template_kwargs", "reasoning_effort", "parallel_tool_calls",
)  # fmt: skip
RESPONSES_FIELDS = (
    "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools",
    "tool_choice", "previous_response_id", "store", "reasoning", "text", "truncation",
    "metadata", "include", "top_logprobs",
)  # fmt: skip
MESSAGES_FIELDS = (
    "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "tools", "tool_choice", "thinking", "metadata",
)  # fmt: skip

CHAT = {"model": "tiny", "messages": HELLO, "max_tokens": 3}
RESPONSES = {"model": "tiny", "input": "Hello there.", "max_output_tokens": 3}
MESSAGES = {"model": "tiny", "messages": HELLO, "max_tokens": 3}

SURFACES = [
    Surface("gateway chat", "gateway", "/v1/chat/completions", CHAT, CHAT_FIELDS, 150),
    Surface("gateway responses", "gateway", "/v1/responses", RESPONSES, RESPONSES_FIELDS, 130),
    Surface("gateway messages", "gateway", "/v1/messages", MESSAGES, MESSAGES_FIELDS, 150, True),
    Surface(
        "gateway count_tokens",
        "gateway",
        "/v1/messages/count_tokens",
        {"model": "tiny", "messages": HELLO},
        ("system", "tools"),
        60,
        True,
    ),
    Surface("gateway fleet/load", "gateway", "/fleet/load", {"model": "ghost"}, ("node",), 40),
    Surface(
        "gateway fleet/unload",
        "gateway",
        "/fleet/unload",
        {"model": "ghost"},
        ("node", "force"),
        40,
    ),
    Surface(
        "gateway fleet/pin", "gateway", "/fleet/pin", {"model": "ghost", "pinned": True}, (), 30
    ),
    Surface("neuron chat", "neuron", "/v1/chat/completions", CHAT, CHAT_FIELDS, 150),
    Surface("neuron responses", "neuron", "/v1/responses", RESPONSES, RESPONSES_FIELDS, 130),
    Surface(
        "neuron models/load",
        "neuron",
        "/models/load",
        {"model": "ghost", "source": "/nowhere/ghost"},
        ("device", "tp", "quant", "dtype"),
        60,
    ),
    Surface("neuron models/unload", "neuron", "/models/unload", {"model": "ghost"}, ("force",), 40),
    Surface(
        "neuron tokenize",
        "neuron",
        "/tokenize",
        {"model": "tiny", "messages": HELLO},
        ("source", "tools", "chat_template_kwargs"),
        80,
    ),
]


# --- bad values and bad bodies --------------------------------------------------------


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "\x00", "tiny\x00", "../../etc/passwd", "/", ".", "ghost/", "\ud800"]),
        st.integers(256, 2000).map(lambda n: "x" * n),
    )


def _numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-(2**70), 2**70),
        st.sampled_from([2**63, 2**64, -(2**63) - 1, 0, -1, 1, 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e-320, 5e-324, 1e308, -0.0, 0.5, 2.5]),
    )


def _values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), _numbers(), _strings())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_strings(), inner, max_size=4)
        ),
        max_leaves=8,
    )


def _messages() -> st.SearchStrategy[Any]:
    role = st.one_of(
        st.sampled_from(["user", "assistant", "system", "tool", "developer"]), _strings()
    )
    content = st.one_of(_strings(), _values())
    message = st.fixed_dictionaries(
        {"role": role, "content": content}, optional={"name": _values()}
    )
    return st.one_of(st.lists(message, max_size=3), _values())


def _dump(body: Any) -> bytes:
    """JSON as a client could send it: big integers, NaN and Infinity included."""
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


KEEP_SHORT = {"max_tokens": 3, "max_completion_tokens": 3, "max_output_tokens": 3,
              "min_tokens": 3, "n": 2}  # fmt: skip


def _short(body: Any, surface: Surface) -> Any:
    """A valid length stays a few tokens, so an accepted case costs little time: a length
    left out or null would mean "up to the context" (64k tokens on the tiny model)."""
    if isinstance(body, dict):
        for key, most in KEEP_SHORT.items():
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and most < value < 2**64:
                body[key] = most
        for key in ("max_tokens", "max_output_tokens"):
            if key in surface.base and body.get(key) is None:
                body[key] = 3
    return body


@st.composite
def bad_requests(draw: st.DrawFn, surface: Surface) -> bytes:
    base = dict(surface.base)
    keys = sorted({*base, *surface.fields})
    how = draw(st.sampled_from(["set", "set", "set", "drop", "extra", "messages", "body", "raw"]))
    if how == "set":
        base[draw(st.sampled_from(keys))] = draw(_values())
    elif how == "drop":
        base.pop(draw(st.sampled_from(sorted(base))))
    elif how == "extra":
        base[draw(_strings())] = draw(_values())
    elif how == "messages":
        base["messages" if "messages" in base else "input"] = draw(_messages())
    elif how == "body":
        return _dump(draw(st.one_of(_values(), st.just([]), st.just("tiny"))))
    else:
        valid = _dump(base)
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
                st.integers(1000, 100_000).map(lambda n: b"[" * n + b"]" * n),
                st.just(valid.replace(b"3", b"18446744073709551616", 1)),
                st.just(valid.replace(b"}", b', "x": 1e999999}', 1)),
                st.just(b""),
            )
        )
    return _dump(_short(base, surface))


# --- what an answer must look like -----------------------------------------------------


def _openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and bool(error.get("message"))
        and isinstance(error.get("type"), str)
    )


def _anthropic_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        body.get("type") == "error"
        and isinstance(error, dict)
        and bool(error.get("message"))
        and isinstance(error.get("type"), str)
    )


def _stream_ends_well(surface: Surface, raw: bytes) -> bool:
    decoder = sse.Decoder()
    events = [*decoder.feed(raw), *decoder.feed(b"\n\n")]
    if not events:
        return False
    last = events[-1]
    names = {event.name for event in events}
    if surface.anthropic:
        return "message_stop" in names or "error" in names
    if surface.path == "/v1/responses":
        ends = {"response.completed", "response.incomplete", "response.failed", "error"}
        return bool(names & ends)
    if surface.path == "/v1/chat/completions":
        return last.is_done()
    return True  # a load's progress stream: its own tests cover its ending


def check(surface: Surface, response: httpx.Response, raw: bytes) -> None:
    where = f"{surface.name}: {response.status_code} {raw[:300]!r}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        body = json.loads(raw)
        good = _anthropic_error(body) if surface.anthropic else _openai_error(body)
        assert good, f"not the dialect's error envelope: {where}"
    elif "text/event-stream" in response.headers.get("content-type", ""):
        assert _stream_ends_well(surface, raw), f"stream without its terminal event: {where}"
    else:
        json.loads(raw)


# --- the fleet under test --------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[dict[str, Neuron | Gateway]]:
    work = tmp_path_factory.mktemp("fuzz")
    neuron = Neuron(["--model-dir", str(model_dir), "--preload", "tiny", "--name", "n1"],
                    work / "neuron.log")  # fmt: skip
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        gateway = Gateway({"n1": neuron}, "", work / "gateway")
        gateway.wait_ready()
        yield {"neuron": neuron, "gateway": gateway}
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _settings(cases: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=os.environ.get("CORTEX_FUZZ_RANDOM") != "1",
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize("surface", SURFACES, ids=[s.name for s in SURFACES])
def test_bad_requests_get_a_clear_answer_in_the_dialect(
    fleet: dict[str, Neuron | Gateway], surface: Surface
) -> None:
    url = fleet[surface.target].url + surface.path
    headers = {"content-type": "application/json"}
    if surface.anthropic:
        headers["anthropic-version"] = "2023-06-01"

    with httpx.Client(timeout=30) as client:

        @_settings(surface.cases)
        @given(body=bad_requests(surface))
        def one(body: bytes) -> None:
            with client.stream("POST", url, content=body, headers=headers) as response:
                raw = response.read()
            HISTOGRAM[(surface.name, response.status_code)] += 1
            check(surface, response, raw)

        one()


def test_the_fleet_is_healthy_after_the_fuzz(fleet: dict[str, Neuron | Gateway]) -> None:
    for process in fleet.values():
        assert process.get("/health").status_code == 200
    for target in ("neuron", "gateway"):
        reply = fleet[target].post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    models = {m["id"] for m in fleet["neuron"].get("/node").json()["models"]}
    assert models == {"tiny"}  # nothing half-loaded is left behind
    report = os.environ.get("CORTEX_FUZZ_REPORT")
    if report:
        table: dict[str, dict[str, int]] = {}
        for (name, status), count in sorted(HISTOGRAM.items()):
            table.setdefault(name, {})[str(status)] = count
        Path(report).write_text(json.dumps(table, indent=1) + "\n")
