"""gpt-oss's harmony format: the reply is a sequence of messages, each a header and a body::

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json
    <|message|>{"city": "Paris"}<|call|>

    <|channel|>analysis<|message|>…<|end|>
    <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>

(one line each in the output).

The ``analysis`` channel is reasoning, ``final`` (and ``commentary`` addressed to no one) is
text, and a message whose header names a recipient ``to=functions.NAME`` is a call with JSON
arguments. The recipient may stand in the header before or after the channel (the template
writes ``<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>``). The
stream parser is ``wire.harmony``; this module holds the tokens and how to open a call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cortex.neuron.formats.base import Marker
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, token

__all__ = ["Harmony", "Header", "parse_header"]

_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


@dataclass(frozen=True, slots=True)
class Header:
    channel: str | None
    recipient: str | None

    @property
    def function(self) -> str | None:
        """The called function's name, when the message is a call."""
        if self.recipient is None or self.recipient == "assistant":
            return None
        return self.recipient.removeprefix("functions.")


def parse_header(text: str) -> Header:
    channel = _CHANNEL.search(text)
    recipient = _RECIPIENT.search(text)
    return Header(channel.group(1) if channel else None, recipient.group(1) if recipient else None)


@dataclass(frozen=True, slots=True)
class Harmony:
    name = "harmony"
    start: Marker  # <|start|>
    channel: Marker  # <|channel|>
    message: Marker  # <|message|>
    end: Marker  # <|end|>
    call: Marker | None = None  # <|call|>
    return_: Marker | None = None  # <|return|>
    constrain: Marker | None = None  # <|constrain|>

    def reply_grammar(
        self, content: str | None, tools: Sequence[GrammarTool], calls: str
    ) -> list[str]:
        """Lark rules for rule ``answer``, the reply after the prompt's ``<|start|>assistant``:
        an analysis message (free, as reasoning is), then the final message (holding rule
        ``content``, else free text) or, where ``calls`` is ``auto`` or ``required``, one call
        of ``tools`` written as ``opening`` writes it (gpt-oss calls once a turn)."""
        channel, message = token(self.channel.id), token(self.message.id)
        lines = [
            f'analysis: {channel} "analysis" {message} REASONING {token(self.end.id)} '
            f'{token(self.start.id)} "assistant"',
            f'final: {channel} "final" {message} ' + ("content" if content else "TEXT?"),
        ]
        if calls == "none" or not tools:
            return [*lines, "answer: analysis? final"]
        constrain = f'{token(self.constrain.id)} "json"' if self.constrain else '"json"'
        named = alternatives(
            f"{lit(tool.name + ' ')} {constrain} {message} {tool.arguments()}" for tool in tools
        )
        end = f" {token(self.call.id)}" if self.call else ""
        lines.append(f'call: {channel} "commentary to=functions." {named}{end}')
        body = "call" if calls == "required" else "(final | call)"
        return [*lines, f"answer: analysis? {body}"]

    def opening(self, name: str | None) -> str:
        """What follows the prompt's ``<|start|>assistant`` to open a call of ``name``."""
        opened = f"{self.channel.text}commentary to=functions."
        if name is None:
            return opened
        constrain = f"{self.constrain.text}json" if self.constrain else "json"
        return f"{opened}{name} {constrain}{self.message.text}"
