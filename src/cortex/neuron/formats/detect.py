"""Which output format a model writes, found from its vocabulary and its chat template's text at
load time, never from its name.

A marker counts only when it is ONE token id that decodes back to itself, so the stream parser
recognises markers by id and never by text the model spelled out. The checks go from the most
specific vocabulary to the least:

=========================  ==========================================================
harmony                    ``<|start|>``, ``<|channel|>``, ``<|message|>``, ``<|end|>``
kimi                       ``<|tool_calls_section_begin|>`` … ``_end|>``
deepseek                   ``<｜tool▁calls▁begin｜>`` … ``end｜>`` (fenced if the template is);
                           as text, where the template writes them but they are no tokens
mistral                    ``[TOOL_CALLS]`` (``[ARGS]``, ``[CALL_ID]`` where present)
glm / qwen3_coder / hermes ``<tool_call>``/``</tool_call>``, told apart by the template
                           (``<arg_key>``, ``<function=``, else Hermes JSON)
json_list                  ``<|tool_call|>``/``<|/tool_call|>`` without the above (Phi-4-mini)
pythonic                   a template that teaches ``[func_name1(params_name1=…)]``
llama_json                 ``<|python_tag|>``, or a template that teaches ``{"name": …,
                           "parameters": …}``
pythonic (taught)          none of these, and a template that renders no tools at all:
                           cortex declares the tools itself (``prompt``)
=========================  ==========================================================

Reasoning: ``<think>``/``</think>``, or Mistral's ``[THINK]``/``[/THINK]``, where the template
mentions them (families share vocabularies); harmony has its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cortex.neuron.formats import deepseek
from cortex.neuron.formats.base import Marker, ThinkSyntax, ToolSyntax
from cortex.neuron.formats.glm import Glm
from cortex.neuron.formats.harmony import Harmony
from cortex.neuron.formats.hermes import Hermes
from cortex.neuron.formats.kimi import Kimi
from cortex.neuron.formats.llama_json import JsonList, LlamaJson
from cortex.neuron.formats.mistral import Mistral
from cortex.neuron.formats.pythonic import Pythonic
from cortex.neuron.formats.qwen3_coder import Qwen3Coder

__all__ = ["Format", "Tokenizes", "detect", "single_token"]


class Tokenizes(Protocol):
    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Any, skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True, slots=True)
class Format:
    """How one model writes reasoning and tool calls (``None``: it has no such syntax)."""

    think: ThinkSyntax | None = None
    tools: ToolSyntax | None = None
    harmony: Harmony | None = None

    @property
    def tool_format(self) -> str:
        if self.harmony is not None:
            return self.harmony.name
        return self.tools.name if self.tools is not None else "none"

    @property
    def reasoning_format(self) -> str:
        if self.harmony is not None:
            return self.harmony.name
        return self.think.name if self.think is not None else "none"

    @property
    def can_call_tools(self) -> bool:
        return self.harmony is not None or self.tools is not None

    @property
    def can_reason(self) -> bool:
        return self.harmony is not None or self.think is not None


def single_token(tokenizer: Tokenizes, text: str) -> Marker | None:
    """``text`` as a marker, if the tokenizer has it as exactly one token decoding to itself."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except (TypeError, ValueError):
        return None
    if len(ids) != 1:
        return None
    if tokenizer.decode(ids, skip_special_tokens=False) != text:
        return None
    return Marker(int(ids[0]), text)


def _pair(tokenizer: Tokenizes, start: str, end: str) -> tuple[Marker, Marker] | None:
    first, second = single_token(tokenizer, start), single_token(tokenizer, end)
    return (first, second) if first is not None and second is not None else None


def detect(tokenizer: Tokenizes, template: str | None, *, renders_tools: bool = True) -> Format:
    """The format of a model with this tokenizer and chat template (see the module docstring).

    ``renders_tools``: whether the template shows the ``tools`` it is given (``prompt`` probes
    it); a model with no tool syntax of its own whose template shows none is taught pythonic.
    """
    text = template or ""
    harmony = _harmony(tokenizer)
    if harmony is not None:
        return Format(harmony=harmony)
    think = None
    for name, start, end in (("think", "<think>", "</think>"), ("mistral", "[THINK]", "[/THINK]")):
        pair = _pair(tokenizer, start, end)
        # Vocabularies are shared across a family (Qwen3-Coder has Qwen3's <think>): a model
        # reasons if its template speaks of the markers too.
        if pair is not None and (template is None or end in text or start in text):
            think = ThinkSyntax(name, *pair)
            break
    tools = _tools(tokenizer, text)
    if tools is None and not renders_tools:
        tools = Pythonic()
    return Format(think=think, tools=tools)


def _harmony(tokenizer: Tokenizes) -> Harmony | None:
    start, channel, message, end = (
        single_token(tokenizer, t) for t in ("<|start|>", "<|channel|>", "<|message|>", "<|end|>")
    )
    if start is None or channel is None or message is None or end is None:
        return None
    return Harmony(
        start,
        channel,
        message,
        end,
        call=single_token(tokenizer, "<|call|>"),
        return_=single_token(tokenizer, "<|return|>"),
        constrain=single_token(tokenizer, "<|constrain|>"),
    )


def _tools(tokenizer: Tokenizes, template: str) -> ToolSyntax | None:
    section = _pair(tokenizer, "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>")
    if section is not None:
        return Kimi(*section)
    section = _pair(tokenizer, deepseek.CALLS_BEGIN, deepseek.CALLS_END)
    if section is not None:
        return deepseek.DeepSeek(*section, fenced="```json" in template)
    if deepseek.CALLS_BEGIN in template:  # the R1 distills: markers spelled out as text
        return deepseek.DeepSeekText(fenced="```json" in template)
    calls = single_token(tokenizer, "[TOOL_CALLS]")
    if calls is not None:
        return Mistral(
            calls,
            args=single_token(tokenizer, "[ARGS]"),
            call_id=single_token(tokenizer, "[CALL_ID]"),
        )
    block = _pair(tokenizer, "<tool_call>", "</tool_call>")
    if block is not None:
        if "<arg_key>" in template:
            return Glm(*block)
        if "<function=" in template:
            return Qwen3Coder(*block)
        return Hermes(*block)
    if _pair(tokenizer, "<|tool_call|>", "<|/tool_call|>") is not None:
        return JsonList()
    if "func_name1(" in template:
        return Pythonic()
    python_tag = single_token(tokenizer, "<|python_tag|>")
    if python_tag is not None or '"parameters"' in template:
        return LlamaJson(python_tag)
    return None
