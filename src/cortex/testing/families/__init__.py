"""Tiny models of every model family the neuron serves, one per chat template.

Each ``Family`` (``FAMILIES``) pairs the tiny Qwen3 architecture with a tokenizer that has that
family's special and control tokens (special or not, as in the real tokenizer) and a condensed chat
template of our own that behaves like the family's real one (the same variables, the same
``raise_exception`` checks, the same special-token layout). Its model is trained so that greedy
decoding of every ``FamilyFixture`` yields the fixture's raw reply, in the family's real output
format (reasoning blocks, tool-call syntax), then its end-of-turn token. ``Expected`` says what a
client must get from each reply once the neuron has parsed it.

``cached_family_model(name)`` returns a family's model folder from a content-addressed cache,
building it once; ``python -m cortex.testing build OUT --family NAME`` writes one anywhere.
``qwen3`` is the original tiny model (``cortex.testing.cached_model(trained=True)``).
"""

from __future__ import annotations

from cortex.testing.families.build import (
    FixtureRenderError,
    build_family_model,
    build_family_tokenizer,
    cached_family_model,
    family_cache_key,
    family_examples,
    fixture_prompt_ids,
    verify_family_model,
)
from cortex.testing.families.catalogue import FAMILIES, family
from cortex.testing.families.spec import SCENARIOS, Expected, Family, FamilyFixture

__all__ = [
    "FAMILIES",
    "SCENARIOS",
    "Expected",
    "Family",
    "FamilyFixture",
    "FixtureRenderError",
    "build_family_model",
    "build_family_tokenizer",
    "cached_family_model",
    "family",
    "family_cache_key",
    "family_examples",
    "fixture_prompt_ids",
    "verify_family_model",
]
