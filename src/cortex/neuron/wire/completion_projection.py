"""InferenceEvents → OpenAI's legacy ``text_completion`` objects and stream chunks.

One projector per request, over every choice of every prompt (choice ``i * n + j`` is prompt
``i``'s ``j``-th). A choice's text is its prompt's text first when the request echoes it, then
what the model wrote. Logprobs take the legacy shape: per token its text, its logprob, the
most likely alternatives with the chosen token among them (as vLLM returns them), and where
it starts in the choice's text. A token's logprob arrives before its text (stop strings and
split characters hold text back), so a chunk carries the logprobs of every token since the
previous chunk, and the last chunk of a choice whatever is left. Streaming chunks are dicts
dumped once, because this runs once per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cortex import sse
from cortex.neuron.wire.chat_projection import client_finish_reason
from cortex.neuron.wire.events import Done, InferenceEvent, Text, TokenLogprob
from cortex.protocol.completions import Completion, CompletionChoice, CompletionLogprobs
from cortex.protocol.openai import usage

# JSON has no -inf: a token the model rules out reads as this, as in OpenAI's and vLLM's.
LOGPROB_FLOOR = -9999.0


class LegacyLogprobs:
    """One choice's logprobs in the legacy shape; ``offset`` is where its first generated
    token starts in the choice's text (after an echoed prompt)."""

    __slots__ = ("_offset", "text_offset", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self, offset: int = 0) -> None:
        self._offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, event: TokenLogprob) -> None:
        chosen = max(event.logprob, LOGPROB_FLOOR)
        top = {token: max(logprob, LOGPROB_FLOOR) for token, logprob in event.top}
        top.setdefault(event.token, chosen)
        self.tokens.append(event.token)
        self.token_logprobs.append(chosen)
        self.top_logprobs.append(top)
        self.text_offset.append(self._offset)
        self._offset += len(event.token)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def shape(self) -> CompletionLogprobs:
        return CompletionLogprobs(
            tokens=self.tokens,
            token_logprobs=self.token_logprobs,
            top_logprobs=self.top_logprobs,
            text_offset=self.text_offset,
        )

    def take(self) -> dict[str, Any]:
        """What was added since the last ``take``, as a chunk's ``logprobs``."""
        taken = {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return taken


@dataclass(slots=True)
class CompletionCollector:
    """One choice of a non-streaming response; ``echo`` is its prompt's text when echoed."""

    echo: str = ""
    logprobs: LegacyLogprobs | None = None
    text: list[str] = field(default_factory=list)

    def add(self, event: InferenceEvent) -> None:
        if isinstance(event, Text):
            self.text.append(event.text)
        elif isinstance(event, TokenLogprob) and self.logprobs is not None:
            self.logprobs.add(event)

    def choice(self, index: int, done: Done) -> CompletionChoice:
        return CompletionChoice(
            index=index,
            text=self.echo + "".join(self.text),
            logprobs=self.logprobs.shape() if self.logprobs is not None else None,
            finish_reason=client_finish_reason(done, made_calls=False),
            stop_reason=done.stop_reason,
        )


def completion(
    completion_id: str,
    model: str,
    created: int,
    choices: list[tuple[CompletionCollector, Done]],
    prompt_tokens: int,
) -> Completion:
    """The whole response; ``prompt_tokens`` counts each prompt once."""
    generated = sum(done.completion_tokens for _, done in choices)
    return Completion(
        id=completion_id,
        created=created,
        model=model,
        choices=[collector.choice(i, done) for i, (collector, done) in enumerate(choices)],
        usage=usage(prompt_tokens, generated),
    )


class CompletionChunkProjector:
    """Events of every choice → SSE lines of ``text_completion`` chunks.

    ``echoes``: each choice's echoed prompt text ("" when not echoed); ``prompt_tokens``: each
    choice's prompt size; ``logprobs``: whether the request asked for them."""

    __slots__ = (
        "_base", "_continuous", "_done", "_echoes", "_generated", "_include_usage", "_logprobs",
        "_prompt_tokens", "_total_prompt",
    )  # fmt: skip

    def __init__(
        self,
        completion_id: str,
        model: str,
        created: int,
        *,
        echoes: list[str],
        prompt_tokens: list[int],
        total_prompt_tokens: int,
        logprobs: bool,
        include_usage: bool,
        continuous_usage: bool = False,
    ) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
        }
        self._echoes = echoes
        self._prompt_tokens = prompt_tokens
        self._total_prompt = total_prompt_tokens
        self._logprobs = [LegacyLogprobs(len(echo)) if logprobs else None for echo in echoes]
        self._include_usage = include_usage
        self._continuous = continuous_usage
        self._done = 0
        self._generated = 0

    def start(self) -> bytes:
        """Each echoed prompt, as its choice's first chunk."""
        return b"".join(self._chunk(i, echo, 0) for i, echo in enumerate(self._echoes) if echo)

    def project(self, index: int, event: InferenceEvent, tokens: int = 0) -> bytes:
        if isinstance(event, Text):
            return self._chunk(index, event.text, tokens)
        if isinstance(event, TokenLogprob):
            pending = self._logprobs[index]
            if pending is not None:
                pending.add(event)
            return b""
        if isinstance(event, Done):
            out = self._chunk(
                index,
                "",
                event.completion_tokens,
                finish_reason=client_finish_reason(event, made_calls=False),
                stop_reason=event.stop_reason,
            )
            self._done += 1
            self._generated += event.completion_tokens
            if self._done < len(self._echoes):
                return out
            if self._include_usage:
                final = usage(self._total_prompt, self._generated)
                out += sse.encode(
                    dict(self._base, choices=[], usage=final.model_dump(exclude_none=True))
                )
            return out + sse.DONE
        return b""

    def _chunk(
        self,
        index: int,
        text: str,
        tokens: int,
        *,
        finish_reason: str | None = None,
        stop_reason: str | int | None = None,
    ) -> bytes:
        pending = self._logprobs[index]
        choice: dict[str, Any] = {
            "index": index,
            "text": text,
            "logprobs": pending.take() if pending else None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        payload = dict(self._base, choices=[choice])
        if self._continuous:
            prompt = self._prompt_tokens[index]
            payload["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": tokens,
                "total_tokens": prompt + tokens,
            }
        return sse.encode(payload)
