"""Training prompts rendered the way the neuron renders requests.

The tiny models are trained on the token ids that ``cortex.neuron.prompt.render`` makes of a
conversation, so that whatever the neuron does to messages before the chat template sees them
(ids reshaped for Mistral, arguments as strings for DeepSeek, tool descriptions injected for
Gemma, ...) is what the model learned to answer. Conversations come in the OpenAI wire format,
as the fixtures hold them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cortex.neuron.prompt import render
from cortex.protocol.openai import ChatMessage, Tool

__all__ = ["prompt_ids"]


def prompt_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """The prompt token ids the neuron would feed the model for this conversation."""
    prompt = render(
        tokenizer,
        [ChatMessage.model_validate(dict(message)) for message in messages],
        [Tool.model_validate(dict(tool)) for tool in tools] if tools else None,
        dict(chat_template_kwargs or {}),
    )
    return list(prompt.ids)
