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
from dataclasses import dataclass

from cortex.neuron.formats.base import Marker

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

    def opening(self, name: str | None) -> str:
        """What follows the prompt's ``<|start|>assistant`` to open a call of ``name``."""
        opened = f"{self.channel.text}commentary to=functions."
        if name is None:
            return opened
        constrain = f"{self.constrain.text}json" if self.constrain else "json"
        return f"{opened}{name} {constrain}{self.message.text}"
