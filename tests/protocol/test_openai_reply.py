"""The shapes the gateway parses once per streamed event keep nothing per request."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from cortex.protocol.openai_reply import ChatCompletionChunk
from cortex.protocol.responses import StreamEvent


def _retained(parse: Callable[[bytes], object], make: Callable[[int], bytes], n: int = 5000) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(n):
            parse(make(i))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_parsing_chunks_with_unique_ids_keeps_no_strings() -> None:
    def chunk(i: int) -> bytes:
        return orjson.dumps({
            "id": f"chatcmpl-{i:024x}", "object": "chat.completion.chunk", "created": i,
            "model": "tiny", "choices": [{"index": 0, "delta": {"content": f"w{i}"}}],
        })  # fmt: skip

    def event(i: int) -> bytes:
        return orjson.dumps({"type": "response.created", "response": {"id": f"resp_{i:024x}"}})

    # pydantic's default string cache kept ~55 bytes per chunk id (270 KB here) until full.
    assert _retained(ChatCompletionChunk.model_validate_json, chunk) < 50_000
    assert _retained(StreamEvent.model_validate_json, event) < 50_000
