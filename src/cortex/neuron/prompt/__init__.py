"""The prompt side: OpenAI messages → the model's own chat template → prompt token ids, with
the messages adapted to what that template accepts (found by probing it at load)."""

from __future__ import annotations

from cortex.neuron.prompt.adapt import Adaptations, TemplateProfile, adapt
from cortex.neuron.prompt.budget import cancel_scope
from cortex.neuron.prompt.messages import template_messages
from cortex.neuron.prompt.template import ChatTemplate, Prompt, render

__all__ = [
    "Adaptations",
    "ChatTemplate",
    "Prompt",
    "TemplateProfile",
    "adapt",
    "cancel_scope",
    "render",
    "template_messages",
]
