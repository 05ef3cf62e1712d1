"""A chat request → what the engine runs: prompt ids, sampling, and the output parser.

Shared by every dialect (chat completions and the Responses API are both turned into
a ``ChatCompletionRequest`` first). Owns ``tool_choice``: ``none`` keeps tools out of
the prompt and parses no calls; ``required`` and a named function constrain the reply to a
call (``structured``), or, for a format without a call grammar, steer the model by opening
the call in the assistant turn. Structured outputs (``response_format``, ``strict`` tools,
``structured_outputs``) become one grammar per request, compiled here, off the device's
thread, and a matcher per choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.engine.base import InferenceRequest, InferenceStream, SamplingParams
from cortex.neuron.formats import Format
from cortex.neuron.loaded import LoadedModel
from cortex.neuron.prompt import Prompt
from cortex.neuron.structured import rules as structured
from cortex.neuron.structured.matcher import Constraint
from cortex.neuron.wire.events import Done, Error, InferenceEvent
from cortex.neuron.wire.harmony import HarmonyOutput
from cortex.neuron.wire.output import OutputProcessor, TextOutput
from cortex.neuron.wire.stream import FormattedOutput, State, start_state
from cortex.protocol.openai import ChatCompletionRequest, NamedToolChoice, Tool


@dataclass(slots=True)
class Generation:
    """A validated request, ready to submit: nothing has reached the engine yet.

    One inference per choice (``n``); each has its own output parser and sampler.
    """

    model: LoadedModel
    inferences: list[InferenceRequest]
    # Generated so far per choice, as of the last event ``run`` yielded for it.
    completion_tokens: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return len(self.inferences[0].prompt_ids)


def prepare(request: ChatCompletionRequest, model: LoadedModel, request_id: str) -> Generation:
    """Render, steer and check one request (blocking: run it off the event loop)."""
    model.harness.check_room()  # a full queue is a 429 before anything streams
    weights = model.weights
    template = weights.template
    choice = request.tool_choice
    tools = request.tools if choice != "none" else None
    fmt = parsed_format(template.format, tools, choice)
    prompt = template.render(request.messages, tools, template_kwargs(request))
    if not prompt.ids:
        raise InvalidRequest(
            "The chat template rendered these messages as no tokens at all; there is nothing "
            "to generate from",
            param="messages",
        )
    start: State = start_state(prompt.ids, fmt.think)
    steer = Steer(prompt)
    forced = choice == "required" or isinstance(choice, NamedToolChoice)
    if forced:
        _check_forced(request, model)
    rules = structured.rules(request, fmt)
    if rules is not None and rules.user_grammar is not None and model.record.engine == "vllm":
        raise InvalidRequest(
            "structured_outputs.grammar is not available on the vLLM engine yet: cortex's "
            "grammar around it is a list of grammars, which vLLM does not take; use json, "
            "regex or choice there, or the transformers engine",
            param="structured_outputs.grammar",
        )
    if forced and (rules is None or rules.calls != "required"):
        steer = _open_call(request, model, prompt, start)  # no grammar for its calls: steer
        if steer.in_prompt:
            start = "tool"
    prompt = steer.prompt
    where = structured.start_of(prompt.ids, fmt, start)
    constrained = rules if start != "tool" else None
    params = sampling_params(request, model, len(prompt.ids))
    tool_dicts = [t.model_dump(exclude_none=True) for t in tools] if tools else None

    def output() -> OutputProcessor:
        options: dict[str, Any] = {
            "stops": request.stop_strings,
            "tools": tool_dicts,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "thinking_budget": request.thinking_token_budget,
        }
        if fmt.harmony is not None:
            return HarmonyOutput(
                model.tokenizer,
                fmt.harmony,
                forced=steer.forced,
                deferred=steer.deferred,
                **options,
            )
        if fmt.think is not None or fmt.tools is not None:
            return FormattedOutput(
                model.tokenizer,
                fmt,
                start=start,
                tool_prefix=steer.opened,
                opening=steer.opening,
                **options,
            )
        return TextOutput(model.tokenizer, request.stop_strings)

    text_of = token_text(model.tokenizer) if params.logprobs is not None else None
    inferences = [
        InferenceRequest(
            request_id=f"{request_id}-{i}",
            prompt_ids=prompt.ids,
            # Each choice samples on its own: a seeded request gives n different, and
            # reproducible, choices.
            params=replace(params, seed=params.seed + i)
            if params.seed is not None and i
            else params,
            output=output(),
            eos_token_ids=weights.eos_token_ids,
            token_text=text_of,
            constraint=_constraint(model, constrained, where, fmt, params.max_tokens)
            if constrained
            else None,
        )
        for i in range(request.n)
    ]
    return Generation(model, inferences, [0] * request.n)


async def run(generation: Generation) -> AsyncGenerator[tuple[int, InferenceEvent], None]:
    """``(choice index, event)`` for every choice, until each has ended (Done or Error).

    Use it under ``contextlib.aclosing``: closing it early cancels the generation at the
    engine's next step and ends the model's session at once.
    """
    model = generation.model
    with model.session():
        streams: list[InferenceStream] = []
        try:
            for inference in generation.inferences:
                # A full queue raises here: the streams already submitted are closed below.
                streams.append(model.harness.submit(inference))
            if len(streams) == 1:
                async for event in streams[0]:
                    generation.completion_tokens[0] = streams[0].completion_tokens
                    yield 0, event
                return
            merged: asyncio.Queue[tuple[int, InferenceEvent]] = asyncio.Queue()
            pumps = [asyncio.ensure_future(_pump(i, s, merged)) for i, s in enumerate(streams)]
            try:
                ended = 0
                while ended < len(streams):
                    index, event = await merged.get()
                    generation.completion_tokens[index] = streams[index].completion_tokens
                    ended += isinstance(event, Done | Error)
                    yield index, event
            finally:
                for pump in pumps:
                    pump.cancel()
        finally:
            for stream in streams:
                await stream.aclose()


async def _pump(
    index: int, stream: InferenceStream, into: asyncio.Queue[tuple[int, InferenceEvent]]
) -> None:
    async for event in stream:
        into.put_nowait((index, event))


def token_text(tokenizer: Any) -> Callable[[int], str]:
    """How one token id reads, special tokens included (for logprobs)."""

    def text(token: int) -> str:
        return str(tokenizer.decode([token], skip_special_tokens=False))

    return text


@dataclass(frozen=True, slots=True)
class Steer:
    """How a forced tool choice opens the call: in the prompt (``opened``: the call's body so
    far, which the parser takes as written); for a model that can reason, as the tokens that
    take the place of the first it writes after reasoning (``opening``); for harmony, as
    tokens forced at the start (``forced``) and after the analysis message (``deferred``)."""

    prompt: Prompt
    opened: str = ""
    opening: tuple[int, ...] = ()
    forced: tuple[int, ...] = ()
    deferred: tuple[int, ...] = ()

    @property
    def in_prompt(self) -> bool:
        """The prompt opened the call: the output starts inside it."""
        return not (self.opening or self.forced)


def _constraint(
    model: LoadedModel,
    rules: structured.Rules,
    where: structured.Start,
    fmt: Format,
    limit: int,
) -> Constraint:
    """One sequence's matcher: the answer's grammar, compiled once per model and grammar."""
    grammars = model.weights.grammars
    whole = structured.grammar(rules, fmt, where)
    answer = structured.grammar(rules, fmt, "answer")
    direct = after = None
    if where in ("text", "either"):
        first: structured.Start = "opening" if where == "either" else "text"
        direct = grammars.compile(structured.grammar(rules, fmt, first), rules.param)
    if where in ("reasoning", "either"):
        after = grammars.compile(answer, rules.param)
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    eos_ids = model.weights.eos_token_ids
    think = fmt.think
    return Constraint(
        direct,
        after,
        whole=whole,
        answer=answer,
        phase="answer" if where == "text" else "reasoning" if where == "reasoning" else "either",
        vocab_size=grammars.vocab_size,
        tokenizer=tokenizer,
        eos=eos if eos in eos_ids else min(eos_ids, default=None),
        think=(think.start.id, think.end.id) if think is not None else None,
        reasoning=grammars.reasoning_mask(think.end.id) if think is not None else None,
        closers=grammars.closers() if rules.content is not None else None,
        limit=limit,
    )


def _check_forced(request: ChatCompletionRequest, model: LoadedModel) -> None:
    """A forced tool choice needs a model that calls tools, tools, and a name among them."""
    fmt: Format = model.weights.template.format
    if not fmt.can_call_tools:
        raise InvalidRequest(
            "tool_choice needs a model that can make tool calls; no tool-call format was found "
            "in this model's tokenizer or chat template",
            param="tool_choice",
        )
    choice = request.tool_choice
    if not request.tools:
        raise InvalidRequest(
            "tool_choice asks for a tool call but no tools were given", param="tool_choice"
        )
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.function.name for t in request.tools or []}:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )


def _open_call(
    request: ChatCompletionRequest, model: LoadedModel, prompt: Prompt, start: State
) -> Steer:
    """Open a call of the requested tool in the model's own syntax (see ``Steer``)."""
    fmt: Format = model.weights.template.format
    choice = request.tool_choice
    name = choice.function.name if isinstance(choice, NamedToolChoice) else None
    encode = model.tokenizer.encode
    harmony = fmt.harmony
    if harmony is not None:
        # gpt-oss reasons before it acts: its analysis message first, then the call.
        analysis = f"{harmony.channel.text}analysis{harmony.message.text}"
        call = f"{harmony.start.text}assistant{harmony.opening(name)}"
        return Steer(
            prompt,
            forced=tuple(encode(analysis, add_special_tokens=False)),
            deferred=tuple(encode(call, add_special_tokens=False)),
        )
    syntax = fmt.tools
    if syntax is None:  # can_call_tools said otherwise
        raise InvalidRequest("this model cannot make tool calls", param="tool_choice")
    body = syntax.opening(name)
    opening = (syntax.start.text if syntax.start is not None and not syntax.by_text else "") + body
    if fmt.think is not None:
        # A model that can reason reasons first: the opening takes the place of the first
        # token it writes outside reasoning (the output parser redirects it there).
        return Steer(prompt, opening=tuple(encode(opening, add_special_tokens=False)))
    return Steer(_extend(model, prompt, opening), opened=body)


def _extend(model: LoadedModel, prompt: Prompt, text: str) -> Prompt:
    extra = model.tokenizer.encode(text, add_special_tokens=False)
    return Prompt(text=prompt.text + text, ids=prompt.ids + list(extra))


def parsed_format(fmt: Format, tools: list[Tool] | None, tool_choice: Any) -> Format:
    """What the reply is parsed as. ``tool_choice: none`` parses no calls: markers stay text.
    Calls written as plain JSON or Python are parsed only when tools were offered, so that a
    JSON answer stays an answer."""
    if fmt.tools is not None and (tool_choice == "none" or (not tools and fmt.tools.by_text)):
        return replace(fmt, tools=None)
    return fmt


def template_kwargs(request: ChatCompletionRequest) -> dict[str, Any]:
    """What the chat template is given: ``reasoning_effort`` as the switches templates read
    (``enable_thinking`` in Qwen3 and GLM, ``thinking`` in DeepSeek V3.1, ``reasoning_effort``
    in gpt-oss), then the request's own ``chat_template_kwargs``, which win."""
    kwargs: dict[str, Any] = {}
    effort = request.reasoning_effort
    if effort is not None:
        reasons = effort not in ("none", "minimal")
        kwargs = {"enable_thinking": reasons, "thinking": reasons}
        if reasons:
            kwargs["reasoning_effort"] = effort
    return {**kwargs, **(request.chat_template_kwargs or {})}


class SamplingRequest(Protocol):
    """What ``sampling_params`` reads of a request (chat completions, text completions)."""

    @property
    def completion_limit(self) -> int | None: ...
    @property
    def logprob_count(self) -> int | None: ...

    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    repetition_penalty: float | None
    min_tokens: int | None
    ignore_eos: bool
    stop_token_ids: list[int] | None


def sampling_params(
    request: SamplingRequest, model: LoadedModel, prompt_tokens: int, *, what: str = "messages"
) -> SamplingParams:
    """Request fields, else the model's generation_config defaults, else OpenAI's.

    ``what`` names the request's prompt field in a context-length error."""
    # The model's context, or less where its KV cache holds fewer tokens (the record's).
    context = model.record.context_length or model.weights.context_length
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your {what} "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=what,
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

    vocab = len(model.tokenizer)
    for token in request.stop_token_ids or ():
        if token >= vocab:
            raise InvalidRequest(
                f"stop_token_ids: {token} is not a token id of this model (its vocabulary "
                f"has {vocab})",
                param="stop_token_ids",
            )
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
        logprobs=request.logprob_count,
    )
