"""Every model family the neuron serves, by name."""

from __future__ import annotations

from cortex.testing.families.chatml import HERMES3, QWEN3, QWEN3_CODER, QWQ
from cortex.testing.families.deepseek import DEEPSEEK_V3_1, KIMI_K2, KIMI_K2_0711, R1_DISTILL_QWEN
from cortex.testing.families.mistral import (
    DEVSTRAL,
    MINISTRAL_3_REASONING,
    MISTRAL_NEMO,
    MISTRAL_SMALL_3_2,
)
from cortex.testing.families.others import GEMMA3, GLM45, GPT_OSS, LLAMA3_1, LLAMA3_2, PHI4_MINI
from cortex.testing.families.spec import Family

__all__ = ["FAMILIES", "family"]

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        QWEN3,
        QWQ,
        QWEN3_CODER,
        HERMES3,
        GLM45,
        GPT_OSS,
        LLAMA3_1,
        LLAMA3_2,
        MISTRAL_SMALL_3_2,
        MISTRAL_NEMO,
        DEVSTRAL,
        MINISTRAL_3_REASONING,
        DEEPSEEK_V3_1,
        R1_DISTILL_QWEN,
        KIMI_K2,
        KIMI_K2_0711,
        GEMMA3,
        PHI4_MINI,
    )
}


def family(name: str | Family) -> Family:
    """The family called ``name`` (a ``Family`` is returned as is)."""
    if isinstance(name, Family):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
