"""GLM-4.5/4.6, gpt-oss, Llama 3.1 and 3.2, Gemma 3 and Phi-4-mini.

Replies follow vLLM's parsers: ``glm45`` (``<tool_call>NAME`` then ``<arg_key>``/``<arg_value>``
pairs, reasoning in ``<think>`` after a newline), ``openai`` for gpt-oss's harmony format
(analysis channel first; a call goes to the commentary channel ``to=functions.NAME`` with
``<|constrain|>json`` and ends the turn with ``<|call|>``), ``llama3_json`` (bare JSON
``{"name", "parameters"}``, several calls joined by "; ", or after ``<|python_tag|>``),
``pythonic`` for Gemma 3 (which has no tool format of its own; vLLM's Gemma 3 tool template
teaches ``[get_weather(city="Paris")]``), and ``phi4_mini_json`` (``functools[{...}]``).
"""

from __future__ import annotations

from cortex.testing.families.spec import (
    ANSWER,
    HELLO,
    RESULT,
    SCENARIOS,
    THOUGHT,
    TOOL_THOUGHT,
    Expected,
    Family,
    FamilyFixture,
    answer_and_call,
    scenario,
    weather,
)
from cortex.testing.tokenizer import CONTROL_TOKENS

__all__ = ["GEMMA3", "GLM45", "GPT_OSS", "LLAMA3_1", "LLAMA3_2", "PHI4_MINI"]

_ENDOFTEXT = "<|endoftext|>"
_USER = "<|user|>"
_OBSERVATION = "<|observation|>"


def _glm_call(city: str) -> str:
    arguments = f"<arg_key>city</arg_key>\n<arg_value>{city}</arg_value>\n"
    return f"\n<tool_call>get_weather\n{arguments}</tool_call>"


# GLM ends a turn with the token of the turn that follows: <|user|> after an answer,
# <|observation|> after tool calls.
GLM45 = Family(
    name="glm45",
    source="glm-4.6.jinja",
    template="families/glm45.jinja",
    special_tokens=(
        _ENDOFTEXT,
        "[MASK]",
        "[gMASK]",
        "[sMASK]",
        "<sop>",
        "<eop>",
        "<|system|>",
        _USER,
        "<|assistant|>",
        _OBSERVATION,
    ),
    # Qwen's think/tool_call/tool_response tags, then GLM's own.
    control_tokens=(
        *CONTROL_TOKENS,
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
        "/nothink",
    ),
    bos=None,
    eos=_ENDOFTEXT,
    pad=_ENDOFTEXT,
    generation_eos=(_ENDOFTEXT, _USER, _OBSERVATION),
    fixtures=(
        # Every GLM answer opens with a (here empty) think block.
        scenario("plain", f"\n<think></think>\n{HELLO}", _USER),
        scenario("reasoning", f"\n<think>{THOUGHT}</think>\n{ANSWER}", _USER),
        scenario(
            "tool_call",
            f"\n<think>{TOOL_THOUGHT}</think>{_glm_call('Paris')}",
            _OBSERVATION,
            reasoning=TOOL_THOUGHT,
        ),
        scenario(
            "two_tool_calls",
            f"\n<think>{TOOL_THOUGHT}</think>{_glm_call('Paris')}{_glm_call('London')}",
            _OBSERVATION,
            reasoning=TOOL_THOUGHT,
        ),
        scenario("tool_result", f"\n<think></think>\n{RESULT}", _USER),
    ),
    tool_format="glm45",
    reasoning_format="glm45",
)

_RETURN = "<|return|>"
_CALL = "<|call|>"


def _harmony(analysis: str, final: str) -> str:
    # The prompt ends "<|start|>assistant"; the reply starts with its first channel.
    return (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{final}"
    )


# gpt-oss writes one tool call per turn: the turn ends with <|call|> and the result comes back
# before any second call, so there is no two_tool_calls fixture for it.
GPT_OSS = Family(
    name="gpt-oss",
    source="gpt-oss.jinja",
    template="families/gpt-oss.jinja",
    special_tokens=(
        "<|startoftext|>",
        _ENDOFTEXT,
        _RETURN,
        "<|constrain|>",
        "<|channel|>",
        "<|start|>",
        "<|end|>",
        "<|message|>",
        _CALL,
    ),
    control_tokens=(),
    bos="<|startoftext|>",
    eos=_RETURN,
    pad=_ENDOFTEXT,
    generation_eos=(_RETURN, _ENDOFTEXT, _CALL),
    fixtures=(
        scenario(
            "plain",
            _harmony("The user wants a greeting.", HELLO),
            _RETURN,
            reasoning="The user wants a greeting.",
        ),
        scenario("reasoning", _harmony(THOUGHT, ANSWER), _RETURN),
        scenario(
            "tool_call",
            f"<|channel|>analysis<|message|>{TOOL_THOUGHT}<|end|>"
            "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "Paris"}',
            _CALL,
            reasoning=TOOL_THOUGHT,
        ),
        scenario(
            "tool_result",
            _harmony("The tool answered.", RESULT),
            _RETURN,
            reasoning="The tool answered.",
        ),
    ),
    tool_format="openai",
    reasoning_format="openai_gptoss",
)

_LLAMA_BOS = "<|begin_of_text|>"
_LLAMA_EOT = "<|eot_id|>"
_LLAMA_EOM = "<|eom_id|>"
_LLAMA_END = "<|end_of_text|>"
_LLAMA_SPECIAL = (
    _LLAMA_BOS,
    _LLAMA_END,
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    _LLAMA_EOM,
    _LLAMA_EOT,
    "<|python_tag|>",
)


def _llama_calls(*cities: str) -> str:
    # Several calls in one turn: JSON objects joined by "; ", as vLLM's llama3_json parser reads.
    return "; ".join(
        '{"name": "get_weather", "parameters": {"city": "' + city + '"}}' for city in cities
    )


def _llama(name: str, fixtures: tuple[FamilyFixture, ...]) -> Family:
    return Family(
        name=name,
        source=f"{name}.jinja",
        template=f"families/{name}.jinja",
        special_tokens=_LLAMA_SPECIAL,
        control_tokens=(),
        bos=_LLAMA_BOS,
        eos=_LLAMA_EOT,
        pad=None,
        generation_eos=(_LLAMA_END, _LLAMA_EOM, _LLAMA_EOT),
        fixtures=fixtures,
        tool_format="llama3_json",
    )


LLAMA3_1 = _llama(
    "llama3.1",
    (
        *answer_and_call(_LLAMA_EOT, _llama_calls),
        # Llama 3.1 may also open a call with <|python_tag|> and end the turn with <|eom_id|>
        # (its ipython mode); a server must drop the tag and stop at either end token.
        FamilyFixture(
            name="python_tag_tool_call",
            messages=({"role": "user", "content": "What is the weather in London?"},),
            tools=SCENARIOS["tool_call"][1],
            reply="<|python_tag|>" + _llama_calls("London"),
            end=_LLAMA_EOM,
            expected=Expected(calls=(weather("London"),)),
        ),
    ),
)
LLAMA3_2 = _llama("llama3.2", answer_and_call(_LLAMA_EOT, _llama_calls))


def _pythonic(*cities: str) -> str:
    return "[" + ", ".join(f'get_weather(city="{city}")' for city in cities) + "]"


_END_OF_TURN = "<end_of_turn>"

GEMMA3 = Family(
    name="gemma3",
    source="gemma3.jinja",
    template="families/gemma3.jinja",
    special_tokens=(
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<mask>",
        "<start_of_turn>",
        _END_OF_TURN,
        "<start_of_image>",
        "<end_of_image>",
    ),
    control_tokens=(),
    bos="<bos>",
    eos="<eos>",
    pad="<pad>",
    unk="<unk>",
    generation_eos=("<eos>", _END_OF_TURN),
    fixtures=answer_and_call(_END_OF_TURN, _pythonic),
    tool_format="pythonic",
)


def _functools(*cities: str) -> str:
    calls = ", ".join(
        '{"name": "get_weather", "arguments": {"city": "' + city + '"}}' for city in cities
    )
    return f"functools[{calls}]"


_PHI_END = "<|end|>"

PHI4_MINI = Family(
    name="phi4-mini",
    source="phi4-mini.jinja",
    template="families/phi4-mini.jinja",
    special_tokens=(
        _ENDOFTEXT,
        "<|system|>",
        _USER,
        "<|assistant|>",
        _PHI_END,
        "<|tool|>",
        "<|/tool|>",
        "<|tool_call|>",
        "<|/tool_call|>",
        "<|tool_response|>",
    ),
    control_tokens=(),
    bos=_ENDOFTEXT,
    eos=_ENDOFTEXT,
    pad=_ENDOFTEXT,
    generation_eos=(_PHI_END, _ENDOFTEXT),
    fixtures=answer_and_call(_PHI_END, _functools),
    tool_format="phi4_mini_json",
)
