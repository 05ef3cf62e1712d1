"""Model families' output formats: one module per tool/reasoning syntax, and their detection."""

from __future__ import annotations

from cortex.neuron.formats.base import Call, Marker, ThinkSyntax, ToolSyntax
from cortex.neuron.formats.detect import Format, detect, single_token
from cortex.neuron.formats.harmony import Harmony

__all__ = [
    "Call",
    "Format",
    "Harmony",
    "Marker",
    "ThinkSyntax",
    "ToolSyntax",
    "detect",
    "single_token",
]
