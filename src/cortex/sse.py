"""Server-sent events: the one encoder and the one incremental decoder of both programs.

Nothing else in cortex writes or splits SSE framing. Writers call ``encode`` (a JSON
payload, optionally named) or ``frame`` (data already serialised); readers feed the bytes
they receive, in whatever pieces they arrive, to a ``Decoder`` and get whole ``Event``s.

The decoder follows the WHATWG event-stream rules that matter here: lines end in ``\\n``,
``\\r\\n`` or ``\\r`` (also when a ``\\r\\n`` is split across two reads); several ``data:``
lines join with ``\\n``; a line starting with ``:`` is a comment; one space after the colon
is dropped. Unlike a browser it refuses an event that grows past ``max_event_bytes``
(``EventTooLarge``), so a peer that never ends an event cannot grow our memory without
bound, and ``close()`` hands out a last event that the stream ended without a blank line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from cortex.errors import BadUpstream

CONTENT_TYPE = "text/event-stream; charset=utf-8"
# What every SSE response carries besides its content type: no caching, and no buffering
# in a reverse proxy (nginx reads ``X-Accel-Buffering``), so each event leaves at once.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RAW_HEADERS = [
    (b"content-type", CONTENT_TYPE.encode()),
    *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
]
MAX_EVENT_BYTES = 16 * 1024 * 1024
DONE = b"data: [DONE]\n\n"  # the OpenAI dialects' last event


class EventTooLarge(BadUpstream):
    """A peer sent an event past the decoder's cap (a broken or hostile upstream)."""


@dataclass(slots=True, frozen=True)
class Event:
    data: bytes
    name: str = "message"  # the ``event:`` field; "message" when there was none

    def is_done(self) -> bool:
        """The OpenAI dialects' end-of-stream sentinel (``data: [DONE]``)."""
        return self.data == b"[DONE]"


def dumps(payload: Any) -> bytes:
    """Compact JSON (UTF-8, not ASCII-escaped): orjson, or the standard library for what
    orjson refuses (integers past 64 bits, non-string keys) rather than failing a stream."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
        return text.encode()


def frame(data: bytes, name: str | None = None) -> bytes:
    """One event whose data is ``data``, named ``name`` when given.

    Compact JSON is one line; any other data is written a ``data:`` line per line, so
    that it reads back whole.
    """
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = b"\ndata: ".join(lines)
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def encode(payload: Any, name: str | None = None) -> bytes:
    """One event carrying ``payload`` as JSON, named ``name`` when given."""
    return frame(dumps(payload), name)


def comment(text: str) -> bytes:
    """A comment line: a keep-alive that every client ignores."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"


class Decoder:
    """Bytes in, in any pieces, whole events out; one per stream."""

    __slots__ = ("_buffer", "_cr", "_data", "_name", "_size", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""  # an unfinished line
        self._cr = False  # the last piece ended with "\r": a "\n" next belongs to it
        self._data: list[bytes] = []
        self._name = "message"
        self._size = 0  # bytes held for the event being read

    def feed(self, piece: bytes) -> list[Event]:
        """The events ``piece`` completes (often none); raises ``EventTooLarge``."""
        if not piece:
            return []
        if self._cr and piece.startswith(b"\n"):
            piece = piece[1:]
        self._cr = piece.endswith(b"\r")
        if b"\r" in piece:
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = (self._buffer + piece).split(b"\n")
        events: list[Event] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = rest
        if self._size + len(rest) > self.max_event_bytes:
            raise self._too_large()
        return events

    def close(self) -> list[Event]:
        """At the end of the stream: the last event, if it was not ended by a blank line."""
        events: list[Event] = []
        if self._buffer:
            event = self._line(self._buffer)
            if event is not None:
                events.append(event)
            self._buffer = b""
        event = self._line(b"")
        return [*events, event] if event is not None else events

    def _line(self, line: bytes) -> Event | None:
        if not line:
            if not self._data:
                self._name = "message"
                return None
            event = Event(b"\n".join(self._data), self._name)
            self._reset()
            return event
        if line.startswith(b":"):
            return None
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event_bytes:
                raise self._too_large()
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")
        return None

    def _too_large(self) -> EventTooLarge:
        self._reset()
        return EventTooLarge(f"An upstream event passed the {self.max_event_bytes}-byte limit")

    def _reset(self) -> None:
        self._data = []
        self._name = "message"
        self._size = 0


def events(pieces: Iterable[bytes], max_event_bytes: int = MAX_EVENT_BYTES) -> Iterator[Event]:
    """Every event of a whole (synchronous) byte stream, e.g. an httpx ``iter_bytes()``."""
    decoder = Decoder(max_event_bytes)
    for piece in pieces:
        yield from decoder.feed(piece)
    yield from decoder.close()
