"""InferenceEvents → OpenAI Responses API objects and stream events.

One projection of the event model (``wire.events``), like ``wire.chat_projection``. Output items
open in the order their events arrive and a different kind of event closes the open
one: reasoning → a ``reasoning`` item (its text as ``reasoning_text`` content), text →
a ``message`` item with one ``output_text`` part, each tool call → its own
``function_call`` item. The stream is exactly what the official SDK's accumulator
accepts::

    response.created, response.in_progress
    per item: response.output_item.added
      reasoning: content_part.added (reasoning_text), reasoning_text.delta…,
                 reasoning_text.done, content_part.done
      message:   content_part.added (output_text), output_text.delta…,
                 output_text.done, content_part.done
      call:      function_call_arguments.delta, function_call_arguments.done
    response.output_item.done
    response.completed | response.incomplete (max_output_tokens) | response.failed

Every event carries a ``sequence_number`` from 0. Dicts are built once and dumped once,
because this runs once per generated token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from cortex import sse
from cortex.neuron.wire.events import Done, Error, InferenceEvent, Reasoning, Text, ToolCall
from cortex.protocol.responses import ResponsesRequest


def new_id(prefix: str) -> str:
    """``resp``, ``msg``, ``rs`` or ``fc`` plus random hex."""
    return f"{prefix}_{uuid.uuid4().hex}"


def response_head(request: ResponsesRequest, response_id: str, created_at: int) -> dict[str, Any]:
    """The ``response`` object before any output: the request's settings echoed back."""
    choice = request.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "reasoning": request.reasoning.model_dump(mode="json")
        if request.reasoning
        else {"effort": None, "summary": None},
        "store": request.store is not False,
        "metadata": request.metadata or {},
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": "auto"
        if choice is None
        else (choice if isinstance(choice, str | dict) else choice.model_dump(mode="json")),
        "tools": [
            tool if isinstance(tool, dict) else tool.model_dump(mode="json")
            for tool in request.tools or []
        ],
        "truncation": request.truncation or "disabled",
        "user": request.user,
        "prompt_cache_key": request.prompt_cache_key,
        "usage": None,
    }


def usage(done: Done) -> dict[str, Any]:
    return {
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": done.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": done.reasoning_tokens},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


class _Builder:
    """The output items and the stream events that build them, one event at a time."""

    __slots__ = ("_head", "_kind", "_names", "_open", "_parts", "_seq", "output", "response")

    def __init__(self, head: Mapping[str, Any], tool_names: Mapping[str, tuple[str, str]]) -> None:
        self._head = dict(head)
        self._names = tool_names
        self._seq = 0
        self._kind: str | None = None  # "reasoning" | "message" while an item is open
        self._open: dict[str, Any] = {}  # item id and output index of the open item
        self._parts: list[str] = []
        self.output: list[dict[str, Any]] = []
        self.response: dict[str, Any] | None = None  # the final object, once terminal

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return payload

    def start(self) -> list[dict[str, Any]]:
        return [
            self.event("response.created", response=self._head),
            self.event("response.in_progress", response=self._head),
        ]

    def feed(self, event: InferenceEvent) -> list[dict[str, Any]]:
        if self.response is not None:
            return []
        if isinstance(event, Text | Reasoning):
            if not event.text:
                return []
            kind = "message" if isinstance(event, Text) else "reasoning"
            out = [] if self._kind == kind else [*self._close("completed"), *self._begin(kind)]
            self._parts.append(event.text)
            delta = (
                "response.output_text.delta"
                if kind == "message"
                else "response.reasoning_text.delta"
            )
            extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
            out.append(
                self.event(delta, **self._where(), content_index=0, delta=event.text, **extra)
            )
            return out
        if isinstance(event, ToolCall):
            return [*self._close("completed"), *self._call(event)]
        if isinstance(event, Done):
            ended = event.finish_reason in ("stop", "tool_calls")
            status = "completed" if ended else "incomplete"
            return [*self._close(status), self._finish(event)]
        if isinstance(event, Error):
            return [*self._close("incomplete"), self._fail(event.message, None)]
        return []

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._open["id"], "output_index": self._open["output_index"]}

    def _begin(self, kind: str) -> list[dict[str, Any]]:
        self._kind = kind
        self._open = {
            "id": new_id("msg" if kind == "message" else "rs"),
            "output_index": len(self.output),
        }
        self._parts = []
        item = self._item(kind, "in_progress", None)
        part = self._part(kind, "")
        return [
            self.event(
                "response.output_item.added", output_index=self._open["output_index"], item=item
            ),
            self.event("response.content_part.added", **self._where(), content_index=0, part=part),
        ]

    def _close(self, status: str) -> list[dict[str, Any]]:
        kind = self._kind
        if kind is None:
            return []
        text = "".join(self._parts)
        where = self._where()
        if kind == "message":
            done = [
                self.event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            ]
        else:
            done = [self.event("response.reasoning_text.done", **where, content_index=0, text=text)]
        item = self._item(kind, status, text)
        self.output.append(item)
        self._kind = None
        return [
            *done,
            self.event(
                "response.content_part.done", **where, content_index=0, part=self._part(kind, text)
            ),
            self.event("response.output_item.done", output_index=where["output_index"], item=item),
        ]

    def _item(self, kind: str, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(kind, text)]
        if kind == "message":
            return {
                "id": self._open["id"],
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": content,
            }
        return {
            "id": self._open["id"],
            "type": "reasoning",
            "summary": [],
            "content": content,
            "status": status,
        }

    @staticmethod
    def _part(kind: str, text: str) -> dict[str, Any]:
        if kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        namespace, name = self._names.get(call.name, (None, call.name))
        where = {"item_id": new_id("fc"), "output_index": len(self.output)}
        item: dict[str, Any] = {
            "id": where["item_id"],
            "type": "function_call",
            "call_id": call.id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        if namespace is not None:
            item["namespace"] = namespace
        done = {**item, "arguments": call.arguments, "status": "completed"}
        self.output.append(done)
        return [
            self.event("response.output_item.added", output_index=where["output_index"], item=item),
            self.event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self.event("response.function_call_arguments.done", **where, arguments=call.arguments),
            self.event("response.output_item.done", output_index=where["output_index"], item=done),
        ]

    def _finish(self, done: Done) -> dict[str, Any]:
        if done.finish_reason == "error":
            return self._fail("generation failed", usage(done))
        final = {**self._head, "output": self.output, "usage": usage(done)}
        if done.finish_reason == "length":
            final.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
            kind = "response.incomplete"
        elif done.finish_reason == "cancelled":
            final.update(status="cancelled")  # the client went away; nobody reads this
            kind = "response.incomplete"
        else:
            final.update(status="completed", completed_at=int(time.time()))
            kind = "response.completed"
        self.response = final
        return self.event(kind, response=final)

    def _fail(self, message: str, counts: dict[str, Any] | None) -> dict[str, Any]:
        error = {"code": "server_error", "message": message}
        final = {
            **self._head,
            "status": "failed",
            "error": error,
            "output": self.output,
            "usage": counts,
        }
        self.response = final
        return self.event("response.failed", response=final)


def _event(payload: Mapping[str, Any]) -> bytes:
    return sse.encode(payload, payload["type"])


class ResponseStreamProjector:
    """Events → SSE lines (``event: <type>`` / ``data: <json>``) of a Responses stream."""

    __slots__ = ("_builder",)

    def __init__(
        self, head: Mapping[str, Any], tool_names: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        self._builder = _Builder(head, tool_names or {})

    def start(self) -> bytes:
        return b"".join(_event(e) for e in self._builder.start())

    def project(self, event: InferenceEvent) -> bytes:
        return b"".join(_event(e) for e in self._builder.feed(event))

    @property
    def response(self) -> dict[str, Any] | None:
        """The final ``response`` object, once the stream has ended."""
        return self._builder.response


class ResponseCollector:
    """Accumulates a whole ``response`` object for a non-streaming request."""

    __slots__ = ("_builder",)

    def __init__(
        self, head: Mapping[str, Any], tool_names: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        self._builder = _Builder(head, tool_names or {})

    def add(self, event: InferenceEvent) -> None:
        self._builder.feed(event)

    def response(self) -> dict[str, Any]:
        """The final object; ``failed`` if the events ended without ``Done`` or ``Error``."""
        if self._builder.response is None:
            self._builder.feed(Error("generation ended without a result"))
        final = self._builder.response
        if final is None:  # unreachable: feeding Error always ends the response
            raise RuntimeError("response not finished")
        return final
