"""The DeepSeek-format families: DeepSeek-V3.1, DeepSeek-R1-Distill-Qwen and Kimi K2 (two
template generations).

Replies follow vLLM's parsers: ``deepseek_v31`` (``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS``),
``deepseek_v3`` for R1's fenced form (``function<｜tool▁sep｜>NAME`` then a ```json block), and
``kimi_k2`` (``functions.NAME:INDEX`` ids inside ``<|tool_calls_section_begin|>``); reasoning
follows ``deepseek_v3`` / ``deepseek_r1`` (``...</think>`` after a prompt that opened it).

Tokenizers, as the real ones: in DeepSeek-V3.1's vocabulary only BOS, EOS and padding are special
and every chat and tool marker is one non-special token. R1-Distill-Qwen keeps the Qwen2.5
vocabulary with DeepSeek's BOS/EOS/User/Assistant and <think> added: its tool-call markers are NOT
tokens, so its model spells them out as plain text (while Qwen's ``<tool_call>`` tokens are still
in the vocabulary). Kimi's tiktoken tokenizer lists its chat tokens as special but not its five
tool-call tokens.
"""

from __future__ import annotations

from cortex.testing.families.spec import (
    ANSWER,
    HELLO,
    RESULT,
    THOUGHT,
    TOOL_THOUGHT,
    Family,
    answer_and_call,
    scenario,
)

__all__ = ["DEEPSEEK_V3_1", "KIMI_K2", "KIMI_K2_0711", "R1_DISTILL_QWEN"]

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
_TOOL_MARKERS = (
    CALLS_BEGIN,
    CALLS_END,
    CALL_BEGIN,
    CALL_END,
    SEP,
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)


def _v31_calls(*cities: str) -> str:
    calls = "".join(
        f'{CALL_BEGIN}get_weather{SEP}{{"city": "{city}"}}{CALL_END}' for city in cities
    )
    return CALLS_BEGIN + calls + CALLS_END


DEEPSEEK_V3_1 = Family(
    name="deepseek-v3.1",
    source="deepseek-v3.1.jinja",
    template="families/deepseek-v3.1.jinja",
    special_tokens=(BOS, EOS, PAD),
    control_tokens=(USER, ASSISTANT, "<think>", "</think>", *_TOOL_MARKERS),
    bos=BOS,
    eos=EOS,
    pad=PAD,
    generation_eos=(EOS,),
    fixtures=(
        # thinking=False (the default): the prompt ends "<｜Assistant｜></think>".
        scenario("plain", HELLO, EOS),
        # thinking=True: the prompt ends "<｜Assistant｜><think>", so the reply only closes it.
        scenario(
            "reasoning", f"{THOUGHT}</think>{ANSWER}", EOS, chat_template_kwargs={"thinking": True}
        ),
        # V3.1 calls tools in non-thinking mode.
        scenario("tool_call", _v31_calls("Paris"), EOS),
        scenario("two_tool_calls", _v31_calls("Paris", "London"), EOS),
        # After tool results the template adds no generation prompt: the answer follows directly.
        scenario("tool_result", RESULT, EOS),
    ),
    tool_format="deepseek_v31",
    reasoning_format="deepseek_v3",
)


def _r1_calls(*cities: str) -> str:
    calls = "\n".join(
        f'{CALL_BEGIN}function{SEP}get_weather\n```json\n{{"city": "{city}"}}\n```{CALL_END}'
        for city in cities
    )
    return CALLS_BEGIN + calls + CALLS_END


R1_DISTILL_QWEN = Family(
    name="r1-distill-qwen",
    source="r1-distill-qwen.jinja",
    template="families/r1-distill-qwen.jinja",
    special_tokens=(BOS, EOS),
    control_tokens=(
        USER,
        ASSISTANT,
        "<|EOT|>",
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
    ),
    bos=BOS,
    eos=EOS,
    pad=EOS,
    generation_eos=(EOS,),
    fixtures=(
        # The prompt ends "<｜Assistant｜><think>\n"; R1's empty reasoning is "\n</think>\n\n".
        scenario("plain", f"\n</think>\n\n{HELLO}", EOS),
        scenario("reasoning", f"{THOUGHT}\n</think>\n\n{ANSWER}", EOS),
        scenario(
            "tool_call",
            f"{TOOL_THOUGHT}\n</think>\n\n{_r1_calls('Paris')}",
            EOS,
            reasoning=TOOL_THOUGHT,
        ),
        scenario(
            "two_tool_calls",
            f"{TOOL_THOUGHT}\n</think>\n\n{_r1_calls('Paris', 'London')}",
            EOS,
            reasoning=TOOL_THOUGHT,
        ),
        # After tool results the template adds no generation prompt (and opens no <think>).
        scenario("tool_result", RESULT, EOS),
    ),
    tool_format="deepseek_v3",
    reasoning_format="deepseek_r1",
)

IM_END = "<|im_end|>"
_KIMI_SPECIAL = (
    "[BOS]",
    "[EOS]",
    IM_END,
    "<|im_user|>",
    "<|im_assistant|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "[EOT]",
    "<|im_system|>",
    "<|im_middle|>",
    "[UNK]",
    "[PAD]",
)
_KIMI_CONTROL = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)


def _kimi_calls(*cities: str) -> str:
    calls = "".join(
        f"<|tool_call_begin|>functions.get_weather:{index}<|tool_call_argument_begin|>"
        f'{{"city": "{city}"}}<|tool_call_end|>'
        for index, city in enumerate(cities)
    )
    return f"<|tool_calls_section_begin|>{calls}<|tool_calls_section_end|>"


def _kimi(name: str, source: str) -> Family:
    return Family(
        name=name,
        source=source,
        template=f"families/{name}.jinja",
        special_tokens=_KIMI_SPECIAL,
        control_tokens=_KIMI_CONTROL,
        bos="[BOS]",
        eos="[EOS]",
        pad="[PAD]",
        unk="[UNK]",
        generation_eos=(IM_END,),
        fixtures=answer_and_call(IM_END, _kimi_calls),
        tool_format="kimi_k2",
    )


# Kimi-K2-Instruct-0905: call ids from the conversation, results matched to calls in order.
KIMI_K2 = _kimi("kimi-k2", "kimi-k2.jinja")
# The original Kimi-K2-Instruct (2025-07): calls renumbered per turn, results by tool_call_id.
KIMI_K2_0711 = _kimi("kimi-k2-0711", "kimi-k2-0711.jinja")
