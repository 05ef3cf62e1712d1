"""A chat request → what the engine runs: prompt ids, sampling, and the output parser.

Shared by every dialect (chat completions and the Responses API are both turned into
a ``ChatCompletionRequest`` first). Owns ``tool_choice``: ``none`` keeps tools out of
the prompt and parses no calls; ``required`` and a named function steer the model by
opening the call in the assistant turn (see the README for how that differs from
grammar-constrained decoding).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.models import LoadedModel
from cortex.neuron.prompt import Prompt, render
from cortex.neuron.wire.events import Done, Error, InferenceEvent
from cortex.neuron.wire.markers import MarkedOutput, Markers, State, start_state
from cortex.neuron.wire.output import OutputProcessor, TextOutput
from cortex.protocol.openai import ChatCompletionRequest, NamedToolChoice


@dataclass(slots=True)
class Generation:
    """A validated request, ready to submit: nothing has reached the engine yet."""

    model: LoadedModel
    inference: InferenceRequest
    completion_tokens: int = 0  # generated so far, as of the last event ``run`` yielded

    @property
    def prompt_tokens(self) -> int:
        return len(self.inference.prompt_ids)


def prepare(request: ChatCompletionRequest, model: LoadedModel, request_id: str) -> Generation:
    """Render, steer and check one request (blocking: run it off the event loop)."""
    weights = model.weights
    choice = request.tool_choice
    tools = request.tools if choice != "none" else None
    markers = weights.markers if choice != "none" else _without_tools(weights.markers)
    prompt = render(model.tokenizer, request.messages, tools, request.chat_template_kwargs)
    start: State = start_state(prompt.ids, markers) if markers.reasoning else "text"
    prefix = ""
    if choice == "required" or isinstance(choice, NamedToolChoice):
        prompt, prefix = _open_call(request, model, prompt, start)
        start = "tool"
    output: OutputProcessor
    if markers.reasoning or markers.tools:
        output = MarkedOutput(
            model.tokenizer,
            markers,
            start=start,
            tool_prefix=prefix,
            stops=request.stop_strings,
            tools=[t.model_dump(exclude_none=True) for t in tools] if tools else None,
            fmt=weights.tool_format,
            parallel_tool_calls=request.parallel_tool_calls is not False,
        )
    else:
        output = TextOutput(model.tokenizer, request.stop_strings)
    inference = InferenceRequest(
        request_id=request_id,
        prompt_ids=prompt.ids,
        params=sampling_params(request, model, len(prompt.ids)),
        output=output,
        eos_token_ids=weights.eos_token_ids,
    )
    return Generation(model, inference)


async def run(generation: Generation) -> AsyncGenerator[InferenceEvent, None]:
    """The events of one generation, ending after ``Done`` or ``Error``.

    Use it under ``contextlib.aclosing``: closing it early cancels the generation at the
    engine's next step and ends the model's session at once.
    """
    model = generation.model
    with model.session():
        stream = model.harness.submit(generation.inference)
        try:
            async for event in stream:
                generation.completion_tokens = stream.completion_tokens
                yield event
                if isinstance(event, Done | Error):
                    return
        finally:
            await stream.aclose()


def _without_tools(markers: Markers) -> Markers:
    return replace(markers, tool_start=None, tool_end=None)


def _open_call(
    request: ChatCompletionRequest, model: LoadedModel, prompt: Prompt, start: State
) -> tuple[Prompt, str]:
    """Append the opening of a tool call to the prompt; return it and the body's prefix."""
    markers = model.weights.markers
    if not markers.tools:
        raise InvalidRequest(
            "tool_choice needs a model that can make tool calls; this model's tokenizer has "
            "no tool-call markers",
            param="tool_choice",
        )
    choice = request.tool_choice
    if not request.tools:
        raise InvalidRequest(
            "tool_choice asks for a tool call but no tools were given", param="tool_choice"
        )
    prefix = ""
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.function.name for t in request.tools or []}:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )
        if model.weights.tool_format == "xml":
            prefix = f"<function={name}>\n"
        else:
            # No space after the colon: BPE vocabularies attach the space to the next
            # token (' {"'), so a prompt ending in a bare space leads the model astray.
            prefix = '{"name": ' + json.dumps(name) + ', "arguments":'
    opening = ""
    if start == "reasoning" and markers.think_end is not None:
        opening += markers.think_end_text + "\n\n"  # close the thinking the template opened
    opening += markers.tool_start_text + "\n" + prefix
    extra = model.tokenizer.encode(opening, add_special_tokens=False)
    return Prompt(text=prompt.text + opening, ids=prompt.ids + list(extra)), prefix


def sampling_params(
    request: ChatCompletionRequest, model: LoadedModel, prompt_tokens: int
) -> SamplingParams:
    """Request fields, else the model's generation_config defaults, else OpenAI's."""
    context = model.weights.context_length
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
            extra={"prompt_tokens": prompt_tokens, "context_length": context},
        )
    # A completion limit past the context is clamped (finish_reason "length"), not refused:
    # agents send large max_tokens and expect an answer.
    room = context - prompt_tokens
    limit = request.completion_limit
    max_tokens = min(limit, room) if limit is not None else room
    defaults: dict[str, Any] = model.weights.sampling_defaults

    def pick(value: Any, key: str, fallback: Any) -> Any:
        return value if value is not None else defaults.get(key, fallback)

    min_tokens = request.min_tokens or 0
    if min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens ({min_tokens}) is larger than max_tokens ({max_tokens})",
            param="min_tokens",
        )
    top_k = int(pick(request.top_k, "top_k", 0))
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(pick(request.temperature, "temperature", 1.0)),
        top_p=float(pick(request.top_p, "top_p", 1.0)),
        top_k=max(top_k, 0),
        min_p=float(pick(request.min_p, "min_p", 0.0)),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=float(pick(request.repetition_penalty, "repetition_penalty", 1.0)),
        min_tokens=min_tokens,
        ignore_eos=request.ignore_eos,
        stop_token_ids=tuple(request.stop_token_ids or ()),
    )
