"""The one event model every dialect projects from.

The engine turns token ids into these (through ``wire.output``); chat completions,
the Responses API and, through the gateway, Anthropic Messages are projections of
the same sequence of events. Nothing downstream re-parses text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


@dataclass(slots=True, frozen=True)
class Text:
    """Visible reply text; never ends inside a UTF-8 character."""

    text: str


@dataclass(slots=True, frozen=True)
class Reasoning:
    """Text the model wrote inside its reasoning block."""

    text: str


@dataclass(slots=True, frozen=True)
class ToolCall:
    """One complete tool call; ``arguments`` is a JSON object as a string."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(slots=True, frozen=True)
class Done:
    """Generation ended; always the last event of a stream that did not fail."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | int | None = None
    reasoning_tokens: int = 0  # of completion_tokens, those generated inside reasoning


@dataclass(slots=True, frozen=True)
class Error:
    """Generation failed; the last event of its stream."""

    message: str


InferenceEvent = Text | Reasoning | ToolCall | TokenLogprob | Done | Error
