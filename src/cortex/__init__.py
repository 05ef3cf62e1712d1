"""cortex: one OpenAI/Anthropic endpoint for a fleet of machines serving open-weight LLMs."""

from __future__ import annotations

__version__ = "0.1.0"
