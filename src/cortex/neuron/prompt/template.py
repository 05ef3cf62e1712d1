"""``ChatTemplate``: a tokenizer's chat template, what it accepts, and how its model writes.

Built once per tokenizer (``of``): the template is probed (``probe``) and the model's output
format detected (``formats.detect``) from the vocabulary and the template's text. ``render``
then turns OpenAI messages into prompt ids the way the template wants them (``adapt``).
Template failures are 400s that name the template's error, never 500s.

A template the client sends (``chat_template_kwargs.chat_template``) is refused unless the
neuron allows it (``allow_client_chat_template``); then it renders in the bounded sandbox
(``sandbox``), never in Hugging Face's unbounded one.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from cortex.errors import InvalidRequest
from cortex.neuron.formats import Format, detect
from cortex.neuron.prompt.adapt import TemplateProfile, adapt
from cortex.neuron.prompt.messages import template_messages
from cortex.neuron.prompt.probe import probe_declare, probe_profile, reasoning_key
from cortex.neuron.prompt.sandbox import RenderLimit, render_client_template
from cortex.protocol.openai import ChatMessage, Tool

__all__ = ["CLIENT_TEMPLATE", "MAX_CLIENT_TEMPLATE", "ChatTemplate", "Prompt", "render"]

_FAILURES = (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
CLIENT_TEMPLATE = "chat_template_kwargs.chat_template"
MAX_CLIENT_TEMPLATE = 256 * 1024  # characters; the largest model templates are ~20k


@dataclass(slots=True, frozen=True)
class Prompt:
    text: str
    ids: list[int]


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    tokenizer: Any
    source: str | None
    format: Format
    profile: TemplateProfile
    # Whether a client may send its own template (the neuron's allow_client_chat_template).
    client_templates: bool = False

    @classmethod
    def of(cls, tokenizer: Any) -> ChatTemplate:
        """The tokenizer's template, probed on first use (blocking: keep it off the event
        loop); one per tokenizer object, shared by every thread."""
        with _LOCK:
            found = _CACHE.get(tokenizer)
        if found is None:
            found = _build(tokenizer)
            with _LOCK:
                found = _CACHE.setdefault(tokenizer, found)
        return found

    def allowing_client_templates(self, allowed: bool) -> ChatTemplate:
        return dataclasses.replace(self, client_templates=allowed)

    def render(
        self,
        messages: list[ChatMessage],
        tools: list[Tool] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> Prompt:
        """Render and tokenize; blocking (runs off the event loop for long prompts)."""
        kwargs = dict(template_kwargs or {})
        client = self._client_template(kwargs.pop("chat_template", None))
        if not self.source and client is None:
            raise InvalidRequest(
                "This model has no chat template, so it cannot serve chat completions",
                param="model",
            )
        tool_dicts = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
        adapted, declared = adapt(
            template_messages(messages), tool_dicts, self.profile, self.format.tools
        )
        if client is not None:
            text = _render_client(client, self.tokenizer, adapted, declared, kwargs)
            return Prompt(
                text=text, ids=list(self.tokenizer.encode(text, add_special_tokens=False))
            )
        try:
            text = self._apply(adapted, declared, kwargs)
        except _FAILURES as exc:
            # Some templates refuse reasoning beside text on a turn with calls (gpt-oss): the
            # reasoning of past turns is the one thing a prompt can go without.
            stripped = [_without_reasoning(m) for m in adapted]
            if stripped == adapted:
                raise _rejected(exc) from None
            try:
                text = self._apply(stripped, declared, kwargs)
            except _FAILURES:
                raise _rejected(exc) from None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Prompt(text=text, ids=list(ids))

    def _client_template(self, value: Any) -> str | None:
        """The client's template to render instead of the model's (None: the model's own)."""
        if value is None or value == self.source:
            return None
        if not self.client_templates:
            raise InvalidRequest(
                f"{CLIENT_TEMPLATE}: this neuron renders only the model's own chat template; "
                "client templates need allow_client_chat_template = true in its config "
                "(--allow-client-chat-template, NEURON_ALLOW_CLIENT_CHAT_TEMPLATE)",
                param=CLIENT_TEMPLATE,
            )
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(f"{CLIENT_TEMPLATE}: must be a template", param=CLIENT_TEMPLATE)
        if len(value) > MAX_CLIENT_TEMPLATE:
            raise InvalidRequest(
                f"{CLIENT_TEMPLATE}: {len(value)} characters is past the limit of "
                f"{MAX_CLIENT_TEMPLATE}",
                param=CLIENT_TEMPLATE,
            )
        return value

    def _apply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
    ) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
        )
        if not isinstance(text, str):
            raise TypeError(f"the chat template rendered {type(text).__name__}, not text")
        return text


_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary[Any, ChatTemplate] = weakref.WeakKeyDictionary()


def _build(tokenizer: Any) -> ChatTemplate:
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        return ChatTemplate(tokenizer, None, detect(tokenizer, None), TemplateProfile())

    def probe_render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
        return text if isinstance(text, str) else ""

    declare = probe_declare(probe_render)
    fmt = detect(tokenizer, source, renders_tools=declare != "describe")
    profile = probe_profile(probe_render, declare, fmt.tools, reasoning_key(source))
    return ChatTemplate(tokenizer, source, fmt, profile)


def _render_client(
    source: str,
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    kwargs: dict[str, Any],
) -> str:
    try:
        return render_client_template(source, tokenizer, messages, tools, kwargs)
    except RenderLimit as exc:
        raise InvalidRequest(
            f"{CLIENT_TEMPLATE}: rendering stopped: {exc}", param=CLIENT_TEMPLATE
        ) from None
    except Exception as exc:  # anything a client's template does wrong is the client's 400
        raise InvalidRequest(
            f"{CLIENT_TEMPLATE}: the chat template failed: {type(exc).__name__}: {exc}",
            param=CLIENT_TEMPLATE,
        ) from None


def _without_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("reasoning_content", "thinking")}


def _rejected(exc: Exception) -> InvalidRequest:
    if isinstance(exc, TemplateError):
        return InvalidRequest(f"The model's chat template rejected the messages: {exc}")
    return InvalidRequest(f"The messages could not be rendered by the chat template: {exc}")


def render(
    tokenizer: Any,
    messages: list[ChatMessage],
    tools: list[Tool] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    *,
    client_templates: bool = False,
) -> Prompt:
    """``ChatTemplate.of(tokenizer).render(...)``, with or without client templates."""
    template = ChatTemplate.of(tokenizer).allowing_client_templates(client_templates)
    return template.render(messages, tools, template_kwargs)
