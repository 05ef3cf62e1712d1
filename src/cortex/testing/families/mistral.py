"""The Mistral families: Mistral Small 3.2, Mistral Nemo, Devstral and Ministral 3 Reasoning.

Every control token of Mistral's tekken tokenizers is special. Replies follow vLLM's ``mistral``
tool parser: tokenizers from v11 on (those with ``[ARGS]``) write
``[TOOL_CALLS]NAME[ARGS]{...}`` once per call; Nemo's v3 tokenizer has no ``[ARGS]`` and writes
one ``[TOOL_CALLS]`` followed by a JSON list of calls, each with the nine-character id Nemo's
template renders (llama.cpp's Nemo grammar requires it too). Ministral 3 Reasoning wraps its
reasoning in ``[THINK]...[/THINK]`` (vLLM's ``mistral`` reasoning parser). All turns end with
``</s>``.
"""

from __future__ import annotations

import dataclasses
import json

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

__all__ = ["DEVSTRAL", "MINISTRAL_3_REASONING", "MISTRAL_NEMO", "MISTRAL_SMALL_3_2"]

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
PAD = "<pad>"

# Tekken v3 (Mistral Nemo).
_V3_TOKENS = (
    UNK,
    BOS,
    EOS,
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    PAD,
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
)
# Tekken v11 and later (Mistral Small 3.x, Devstral): images, system prompts, call ids and [ARGS].
_V11_TOKENS = (
    *_V3_TOKENS,
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
    "[ARGS]",
    "[CALL_ID]",
)


def _calls(*cities: str) -> str:
    return "".join('[TOOL_CALLS]get_weather[ARGS]{"city": "' + city + '"}' for city in cities)


MISTRAL_SMALL_3_2 = Family(
    name="mistral-small-3.2",
    source="mistral-small-3.2.jinja",
    template="families/mistral-small-3.2.jinja",
    special_tokens=_V11_TOKENS,
    control_tokens=(),
    bos=BOS,
    eos=EOS,
    pad=PAD,
    unk=UNK,
    generation_eos=(EOS,),
    fixtures=answer_and_call(EOS, _calls),
    tool_format="mistral",
)

# Devstral's tokenizer and output format are Mistral Small's; only its template differs.
DEVSTRAL = dataclasses.replace(
    MISTRAL_SMALL_3_2, name="devstral", source="devstral.jinja", template="families/devstral.jinja"
)

MINISTRAL_3_REASONING = dataclasses.replace(
    MISTRAL_SMALL_3_2,
    name="ministral-3-reasoning",
    source="ministral-3-reasoning.jinja",
    template="families/ministral-3-reasoning.jinja",
    special_tokens=(*_V11_TOKENS, "[THINK]", "[/THINK]"),
    fixtures=(
        scenario("plain", HELLO, EOS),
        scenario("reasoning", f"[THINK]{THOUGHT}[/THINK]{ANSWER}", EOS),
        scenario(
            "tool_call",
            f"[THINK]{TOOL_THOUGHT}[/THINK]" + _calls("Paris"),
            EOS,
            reasoning=TOOL_THOUGHT,
        ),
        scenario(
            "two_tool_calls",
            f"[THINK]{TOOL_THOUGHT}[/THINK]" + _calls("Paris", "London"),
            EOS,
            reasoning=TOOL_THOUGHT,
        ),
        scenario("tool_result", RESULT, EOS),
    ),
    reasoning_format="mistral",
)


def _nemo_calls(*cities: str) -> str:
    # The ids are what the model makes up; Nemo's template requires nine letters and digits.
    ids = ("a1b2c3d4e", "f5g6h7i8j")
    calls = [
        {"name": "get_weather", "arguments": {"city": city}, "id": call_id}
        for city, call_id in zip(cities, ids, strict=False)
    ]
    return "[TOOL_CALLS]" + json.dumps(calls)


MISTRAL_NEMO = Family(
    name="mistral-nemo",
    source="mistral-nemo.jinja",
    template="families/mistral-nemo.jinja",
    special_tokens=_V3_TOKENS,
    control_tokens=(),
    bos=BOS,
    eos=EOS,
    pad=None,
    unk=UNK,
    generation_eos=(EOS,),
    fixtures=answer_and_call(EOS, _nemo_calls),
    tool_format="mistral",
)
