"""Finding, at load, what a chat template accepts: render probe conversations and watch.

Two questions, each answered by rendering and looking for sentinel strings in the output:

* **Where tools go.** A template that shows a tool's description when given ``tools`` takes
  them as the argument; else one that shows it from a system message's ``tools`` field
  (Phi-4-mini) takes them there; else cortex describes them itself.
* **Which message changes it needs.** The probe conversation is the shape every agent sends
  (system, user, assistant with two calls, two tool results, user). Every set of
  ``Adaptations`` is tried from the cheapest (changes that keep the template's own rendering
  cost 1, the ones that render a part of the conversation for it cost more), and the first
  under which the template renders without error and shows every part of the conversation wins;
  if none does, the one that shows the most.

A template error never escapes: a template that fails every probe gets the default profile,
and the request that renders it later gets a 400 naming the template's error.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from cortex.neuron.formats import ToolSyntax
from cortex.neuron.prompt.adapt import Adaptations, Declare, TemplateProfile, adapt

__all__ = [
    "PROBE_SHOWN",
    "PROBE_TOOLS",
    "Render",
    "conversation",
    "probe_declare",
    "probe_profile",
    "reasoning_key",
]

log = logging.getLogger(__name__)

Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]
"""Renders (messages, tools) with the template and the generation prompt; may raise."""

_DESCRIPTION = "Cortex probe tool 7Qx"
PROBE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{_DESCRIPTION} {name}",
            "parameters": {
                "type": "object",
                "properties": {key: {"type": "string", "description": "A value."}},
                "required": [key],
            },
        },
    }
    for name, key in (("probe_lookup", "query"), ("probe_fetch", "address"))
]

PROBE_SHOWN = (
    "Probe system 3Fv",
    "Probe question 8Kd",
    "probe value 2Wr",
    "probe value 5Tn",
    "Probe result 6Hj",
    "Probe result 9Pb",
    "Probe follow-up 4Zc",
)
"""What must appear in a faithful rendering of ``_CONVERSATION``, in order."""


def _call(n: int, name: str, key: str, value: str) -> dict[str, Any]:
    return {
        "id": f"call_probe{n}Xk2Lm9Rt4Zq1Vb7",
        "type": "function",
        "function": {"name": name, "arguments": {key: value}},
    }


_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": PROBE_SHOWN[0]},
    {"role": "user", "content": PROBE_SHOWN[1]},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Probe reasoning.",
        "tool_calls": [
            _call(0, "probe_lookup", "query", PROBE_SHOWN[2]),
            _call(1, "probe_fetch", "address", PROBE_SHOWN[3]),
        ],
    },
    {"role": "tool", "tool_call_id": "call_probe0Xk2Lm9Rt4Zq1Vb7", "content": PROBE_SHOWN[4]},
    {"role": "tool", "tool_call_id": "call_probe1Xk2Lm9Rt4Zq1Vb7", "content": PROBE_SHOWN[5]},
    {"role": "user", "content": PROBE_SHOWN[6]},
]

# Changes that keep the template's own rendering are cheap; the ones that render part of the
# conversation for it (calls as text, results as user turns) are the last resort.
_COST = {
    "ids9": 1,
    "content_none": 1,
    "args_string": 1,
    "split_calls": 1,
    "merge_roles": 1,
    "fold_system": 2,
    "tools_as_user": 4,
    "calls_as_text": 4,
}
_NAMES = [f.name for f in fields(Adaptations)]
_CANDIDATES = sorted(
    (combo for size in range(len(_NAMES) + 1) for combo in itertools.combinations(_NAMES, size)),
    key=lambda combo: (sum(_COST[name] for name in combo), len(combo)),
)


def _shows(render: Render, messages: list[dict[str, Any]], tools: Any, text: str) -> bool:
    try:
        return text in render(messages, tools)
    except Exception:  # a template may fail in any way on a probe: that is the answer
        return False


def probe_declare(render: Render) -> Declare:
    """Where the template takes tool declarations from."""
    user = [{"role": "user", "content": "Probe question 8Kd"}]
    if _shows(render, user, PROBE_TOOLS, _DESCRIPTION):
        return "tools"
    system = {"role": "system", "content": "Probe system 3Fv", "tools": json.dumps(PROBE_TOOLS)}
    if _shows(render, [system, *user], None, _DESCRIPTION):
        return "system_field"
    return "describe"


_THINKING = re.compile(
    r"""message\.thinking|message\[["']thinking["']\]|["']thinking["'] in message"""
)


def reasoning_key(template: str) -> str | None:
    """The key a template reads an assistant turn's reasoning from, if any."""
    if "reasoning_content" in template:
        return "reasoning_content"
    if _THINKING.search(template):
        return "thinking"
    return None


def _score(render: Render, messages: list[dict[str, Any]], tools: Any) -> int:
    """How many of the conversation's parts the rendering shows; -1 if it fails."""
    try:
        text = render(messages, tools)
    except Exception:  # see _shows
        return -1
    return sum(part in text for part in PROBE_SHOWN)


def probe_profile(
    render: Render, declare: Declare, syntax: ToolSyntax | None, key: str | None
) -> TemplateProfile:
    """The cheapest adaptations under which the template renders the probe conversation."""
    best = (-2, TemplateProfile(declare, Adaptations(), key))
    for combo in _CANDIDATES:
        profile = TemplateProfile(declare, Adaptations(**dict.fromkeys(combo, True)), key)
        messages, tools = adapt(_CONVERSATION, PROBE_TOOLS, profile, syntax)
        score = _score(render, messages, tools)
        if score == len(PROBE_SHOWN):
            return profile
        if score > best[0]:
            best = (score, profile)
    log.warning(
        "no adaptation lets the chat template render an agent conversation in full; "
        "using %s (shows %d of %d parts)",
        best[1].adaptations.names() or "none",
        max(best[0], 0),
        len(PROBE_SHOWN),
    )
    return best[1]


def conversation() -> list[dict[str, Any]]:
    """The probe conversation (for tests that check a template against it)."""
    return [dict(message) for message in _CONVERSATION]
