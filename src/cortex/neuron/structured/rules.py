"""What a chat request constrains → one Lark grammar (llguidance's dialect) for the whole reply.

A request constrains its reply with ``response_format`` (``json_object``, ``json_schema``),
vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``),
``tool_choice`` ``required`` or a named function, or tools marked ``strict``. ``Rules`` says what
the answer holds (``content``) and which calls it may or must make; ``grammar`` writes them for
one model's ``Format``:

* **Reasoning is free.** A reply that starts inside reasoning (the prompt opened it, as the
  output parser decides), or that may open it (the prompt has no reasoning block, as Qwen3's
  template with thinking on), reasons as it likes; the constraint starts after the
  end-of-reasoning token. After a block the template closed (thinking off) the reply is the
  answer.
* **Calls in the family's own syntax** (``ToolSyntax.call_grammar``): the name is one of the
  declared tools, the arguments match its schema. Only a format with a grammar is constrained;
  for the others a forced call is steered as before (``prepare``).
* **Content**: JSON (compact, no free whitespace), a regex, one of some strings, or the client's
  own grammar. With ``tool_choice`` ``auto`` the reply is the content or calls; without a content
  constraint, free text and then calls.

Everything here is pure; an impossible request is an ``InvalidRequest`` naming its field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cortex.errors import InvalidRequest
from cortex.neuron.formats import Format
from cortex.neuron.formats.grammar import NO_ARGUMENTS, GrammarTool, alternatives, json_expr, lit
from cortex.neuron.formats.grammar import token as special
from cortex.protocol.openai import ChatCompletionRequest, NamedToolChoice

__all__ = ["Rules", "Start", "grammar", "rules", "start_of"]

CallMode = Literal["none", "auto", "required"]
# Where the reply starts: inside reasoning the prompt opened; where the model may open it
# itself (a Qwen3 template with thinking on opens nothing); or with the answer (no reasoning
# syntax, or a template that closed an empty block: thinking off).
# What the transformers engine's matchers hold generation to, reasoning never being masked:
# "answer", the answer after reasoning; "opening", the opening of reasoning or the answer.
Start = Literal["reasoning", "either", "text", "answer", "opening"]

# Whitespace between the end of reasoning and the answer (the template's layout), bounded.
_SPACE = r"/[ \t\r\n]{1,8}/"


@dataclass(frozen=True, slots=True)
class Rules:
    """What a request constrains (see the module docstring).

    ``content``: a Lark expression for the answer (None: free text). ``user_grammar``: the
    client's own grammar (Lark), which ``content`` refers to as ``@user``. ``calls``: whether
    the reply may (``auto``) or must (``required``) call ``tools``. ``param``: the request field
    a grammar error is reported against."""

    content: str | None = None
    user_grammar: str | None = None
    tools: tuple[GrammarTool, ...] = ()
    calls: CallMode = "none"
    parallel: bool = True
    param: str = "response_format"


def rules(request: ChatCompletionRequest, fmt: Format) -> Rules | None:
    """What ``request`` constrains for a model writing ``fmt``; None: nothing."""
    content, user, kind = _content(request)
    choice = request.tool_choice
    tools = request.tools if choice != "none" else None
    forced = choice == "required" or isinstance(choice, NamedToolChoice)
    strict = any(tool.function.strict for tool in tools or ())
    constrained_calls = bool(tools) and (forced or strict or content is not None)
    if content is None and not constrained_calls:
        return None
    if (
        tools
        and fmt.harmony is None
        and fmt.tools is not None
        and fmt.tools.call_grammar([], True) is None
    ):
        if content is None:
            return None  # calls this format cannot constrain: steered (prepare) or free
        raise InvalidRequest(
            f"{kind} with tools needs a tool-call grammar, and cortex has none for this "
            f"model's tool-call format ({fmt.tools.name})",
            param="response_format",
        )
    offered: list[GrammarTool] = []
    for tool in tools or ():
        function = tool.function
        if isinstance(choice, NamedToolChoice) and function.name != choice.function.name:
            continue
        schema = function.parameters if function.parameters else NO_ARGUMENTS
        offered.append(GrammarTool(function.name, schema, lenient=not function.strict))
    mode: CallMode = "none"
    if offered and (fmt.tools is not None or fmt.harmony is not None):
        mode = "required" if forced else "auto"
    if mode == "none" and content is None:
        return None  # calls this format cannot constrain (harmony): steered or free
    return Rules(
        content=content,
        user_grammar=user,
        tools=tuple(offered),
        calls=mode,
        parallel=request.parallel_tool_calls is not False,
        param=kind if content is not None else "tools",
    )


def start_of(prompt_ids: Sequence[int], fmt: Format, state: str) -> Start:
    """Where a reply starts for the grammar, from the output parser's start ``state``."""
    think = fmt.think
    if think is None:
        return "text"
    if state == "reasoning":
        return "reasoning"
    closed = think.end.id in prompt_ids[-6:]  # the template closed an empty block at its end
    return "text" if closed else "either"


def grammar(rules: Rules, fmt: Format, start: Start) -> str:
    """The whole reply's grammar, for a reply that starts in ``start`` (inside reasoning, or
    not). Lark text, or llguidance's JSON grammar list when the client gave its own grammar."""
    if fmt.harmony is not None:  # its own messages; its analysis is free as reasoning is
        lines = [
            "start: answer",
            *fmt.harmony.reply_grammar(rules.content, rules.tools, rules.calls),
        ]
        if rules.content is not None:
            lines.append(f"content: {rules.content}")
        return _finish(lines, rules)
    think = fmt.think
    if start == "opening" and think is not None:
        # The first tokens: the opening of reasoning (the matcher stops there, reasoning is
        # not masked) or the answer.
        lines = [f"start: SPACE? {special(think.start.id)} | answer"]
    else:
        lines = [f"start: {_reasoning(fmt, start)}answer"]
    content = rules.content
    syntax = fmt.tools
    if rules.calls != "none" and syntax is not None:
        calls = syntax.call_grammar(rules.tools, rules.parallel)
        if calls is None:  # rules() checked
            raise ValueError(f"no call grammar for {syntax.name}")
        lines.append(calls.strip())
        # A call may follow the family's layout whitespace (GLM writes "\n<tool_call>").
        if rules.calls == "required":
            lines.append("answer: SPACE? calls")
        elif content is not None:
            lines.append("answer: content | SPACE? calls")
        elif syntax.by_text:
            lines.append("answer: TEXT | SPACE? calls")
        else:
            lines.append("answer: TEXT? calls?")
    else:
        lines.append("answer: content" if content is not None else "answer: TEXT?")
    if content is not None:
        lines.append(f"content: {content}")
    return _finish(lines, rules)


def _finish(lines: list[str], rules: Rules) -> str:
    lines = [*lines, f"SPACE: {_SPACE}", r"TEXT: /(?s:.+)/", r"REASONING: /(?s:.*)/"]
    lark = "\n".join(lines) + "\n"
    if rules.user_grammar is None:
        return lark
    user = {"name": "user", "lark_grammar": rules.user_grammar}
    return json.dumps({"grammars": [{"lark_grammar": lark}, user]}, ensure_ascii=False)


def _reasoning(fmt: Format, start: Start) -> str:
    think = fmt.think
    if start == "answer":
        return "SPACE? "  # after reasoning: the template's layout before the answer
    if think is None or start == "text":
        return ""
    end = special(think.end.id)
    if start == "reasoning":
        return f"REASONING {end} SPACE? "
    return f"(SPACE? {special(think.start.id)} REASONING {end} SPACE?)? "


def _content(request: ChatCompletionRequest) -> tuple[str | None, str | None, str]:
    """(the content expression, the client's grammar as Lark, what asked for it)."""
    fmt = request.response_format
    extension = request.structured_outputs
    if fmt is not None and fmt.type != "text" and extension is not None:
        raise InvalidRequest(
            "Give response_format or structured_outputs, not both", param="structured_outputs"
        )
    if extension is not None:
        return _extension(extension)
    if fmt is None or fmt.type == "text":
        return None, None, ""
    if fmt.type == "json_object":
        return json_expr({"type": "object"}), None, "response_format"
    spec = fmt.json_schema
    if spec is None:
        raise InvalidRequest(
            'response_format of type "json_schema" needs a json_schema object',
            param="response_format.json_schema",
        )
    return json_expr(spec.schema_ or {}), None, "response_format"


def _extension(spec: Any) -> tuple[str | None, str | None, str]:
    """vLLM's ``structured_outputs``: exactly one of its constraints."""
    given = [
        name
        for name in ("json", "regex", "choice", "grammar", "json_object")
        if getattr(spec, name) not in (None, False)
    ]
    if len(given) != 1:
        raise InvalidRequest(
            "structured_outputs takes exactly one of json, regex, choice, grammar and "
            f"json_object; got {', '.join(given) or 'none'}",
            param="structured_outputs",
        )
    kind = given[0]
    where = f"structured_outputs.{kind}"
    if kind == "json_object":
        return json_expr({"type": "object"}), None, where
    if kind == "json":
        schema = spec.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequest(f"{where} is not JSON: {exc}", param=where) from None
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where} must be a JSON schema object", param=where)
        return json_expr(schema), None, where
    if kind == "regex":
        pattern = spec.regex.replace("/", "\\/")
        return f"/{pattern}/", None, where
    if kind == "choice":
        choices: Sequence[str] = spec.choice
        if not choices:
            raise InvalidRequest(f"{where} needs at least one string", param=where)
        return alternatives(lit(c) for c in choices), None, where
    return "@user", _as_lark(spec.grammar, where), where


def _as_lark(text: str, where: str) -> str:
    """The client's grammar (Lark or GBNF) as Lark."""
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        return str(any_to_lark(text))
    except Exception as exc:  # the converter raises whatever its parser met
        raise InvalidRequest(f"{where} is neither Lark nor GBNF: {exc}", param=where) from None
