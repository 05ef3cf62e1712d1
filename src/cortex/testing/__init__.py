"""Tiny local models for cortex's tests and demo; nothing here downloads weights.

``build_model`` writes a tiny Qwen3 model folder (tokenizer trained on an embedded corpus, ChatML
chat template, safetensors weights); with ``trained=True`` the weights are fitted so that greedy
decoding reproduces every fixture in ``FIXTURES``. ``cached_model`` returns such a folder from a
content-addressed cache, building it once per machine. ``python -m cortex.testing build OUT``
does the same from the command line.
"""

from __future__ import annotations

from cortex.testing.fixtures import FIXTURES, SYSTEM_PROMPT, TIME_TOOL, WEATHER_TOOL, Fixture
from cortex.testing.model import (
    BUILD_VERSION,
    DEFAULT_CONTEXT_LENGTH,
    FixtureMismatchError,
    build_model,
    cache_key,
    cached_model,
    default_cache_dir,
)
from cortex.testing.train import GreedyResult, TrainingError, greedy_reply, render_prompt

__all__ = [
    "BUILD_VERSION",
    "DEFAULT_CONTEXT_LENGTH",
    "FIXTURES",
    "SYSTEM_PROMPT",
    "TIME_TOOL",
    "WEATHER_TOOL",
    "Fixture",
    "FixtureMismatchError",
    "GreedyResult",
    "TrainingError",
    "build_model",
    "cache_key",
    "cached_model",
    "default_cache_dir",
    "greedy_reply",
    "render_prompt",
]
