"""Rendering a chat template a client sent, bounded in time, work and size.

A model's own template is trusted like its weights; a client's template is code from the
network. ``render_client_template`` renders one in ``BoundedEnvironment``: Hugging Face's
immutable jinja sandbox (the same globals and filters, so a template renders the same) whose
hooks charge a ``budget.Budget`` for every step that builds something (``+ * ** %``, ``~``,
filters, method calls, output), while a trace function counts the steps and minds the
deadline and the client (see ``budget``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from cortex.neuron.prompt import budget
from cortex.neuron.prompt.budget import RenderLimit

__all__ = ["RenderLimit", "render_client_template"]


def render_client_template(
    source: str,
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    kwargs: dict[str, Any],
) -> str:
    """``source`` rendered as ``apply_chat_template`` would (blocking: off the event loop).

    Raises RenderLimit past a limit, jinja's errors for a template that fails."""
    with budget.running() as kept:
        template = _compile(source)
        context = {
            **getattr(tokenizer, "special_tokens_map", {}),
            **kwargs,
            "messages": [_with_reasoning_aliases(m) for m in messages],
            "tools": tools,
            "documents": None,
            "add_generation_prompt": True,
        }
        pieces = []
        for piece in template.generate(context):
            kept.charge(len(piece))
            pieces.append(piece)
        return "".join(pieces)


def _with_reasoning_aliases(message: dict[str, Any]) -> dict[str, Any]:
    """As Hugging Face passes messages: ``None`` values dropped, reasoning also as ``thinking``."""
    plain = {k: v for k, v in message.items() if v is not None}
    reasoning = plain.get("reasoning_content")
    return {"thinking": reasoning, **plain} if reasoning is not None else plain


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(source)


# --- the environment ---------------------------------------------------------------------


class _Generator(CodeGenerator):
    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # ``a ~ b`` joins through the environment, which charges what it builds.
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` (Hugging Face's assistant-mask tag): the body."""

    tags = {"generation"}  # noqa: RUF012 (jinja reads it from the class)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _TemplateNamespace(Namespace):
    """Hugging Face's: no attribute that starts with an underscore."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"no underscore attributes on a namespace: {name!r}")


def _finalize(value: Any) -> Any:
    """What ``{{ … }}`` writes out: checked before it becomes text."""
    budget.check(value)
    return value


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    if indent is not None and (not isinstance(indent, int) or indent > 64):
        raise RenderLimit("tojson's indent is past the limit of 64")
    # Indenting writes each item on its own line, as many spaces deep as it is nested.
    budget.charge_size(budget.size_of(value) * (2 + (indent or 0)))
    text = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return str(text)


def _guarded_filter(name: str, run: Callable[..., Any]) -> Callable[..., Any]:
    passes = getattr(run, "jinja_pass_arg", None) is not None  # then args[0] is jinja's

    @functools.wraps(run)  # keeps jinja's pass_context/pass_eval_context mark
    def guarded(*args: Any, **kwargs: Any) -> Any:
        head, plain = (args[:1], list(args[1:])) if passes else ((), list(args))
        if name == "join" and plain and not isinstance(plain[0], str | list | tuple):
            plain[0] = list(plain[0])  # a generator is read once: size the list, pass it on
        budget.check(*plain, *kwargs.values())
        budget.check_ints(name, [*plain[1:], *kwargs.values()])
        if plain:
            target, rest = plain[0], tuple(plain[1:])
            if name == "join" and isinstance(target, list):
                separator = rest[0] if rest else kwargs.get("d", "")
                budget.charge_size(budget.predicted("join", str(separator), (target,), {}))
            else:
                budget.charge_size(budget.predicted(name, target, rest, kwargs))
            if name == "format" and isinstance(target, str):
                budget.check_format(target, printf=True)
        return budget.charge(run(*head, *plain, **kwargs))

    return guarded


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Hugging Face's chat template environment, with every building step charged."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
            finalize=_finalize,
        )
        self.filters["tojson"] = _tojson
        self.filters = {name: _guarded_filter(name, run) for name, run in self.filters.items()}
        self.globals.pop("lipsum", None)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)
        self.globals["namespace"] = _TemplateNamespace

    def concat(self, parts: Any) -> str:
        """Joins a block's output, and ``a ~ b`` (see ``_Generator``)."""
        parts = list(parts)
        budget.check(*parts)
        budget.charge_size(sum(budget.size_of(part) for part in parts))
        return "".join(str(part) for part in parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget.check(left, right)
        if operator == "*":
            predicted = budget.repeated(left, right)
        elif operator == "+" and isinstance(left, str | list | tuple):
            predicted = budget.size_of(left) + budget.size_of(right)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and abs(left).bit_length() * right > budget.MAX_BITS:
                raise RenderLimit(f"an integer past {budget.MAX_BITS} bits")
            predicted = 0
        else:
            if operator == "%" and isinstance(left, str):
                budget.check_format(left, printf=True)
                budget.check_ints("%", right if isinstance(right, tuple) else (right,))
            predicted = 0
        budget.charge_size(predicted)
        result = super().call_binop(context, operator, left, right)
        return result if predicted else budget.charge(result)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        target = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if name == "join" and args and not isinstance(args[0], str | list | tuple):
            args = (list(args[0]), *args[1:])  # a generator is read once: size the list
        budget.check(*args, *kwargs.values())
        if isinstance(target, str | list | tuple):  # a method: its numbers size what it builds
            budget.check_ints(name, [*args, *kwargs.values()])
        if name in ("format", "format_map") and isinstance(target, str):
            budget.check_format(target, printf=False)
            for mapping in (a for a in args if isinstance(a, dict)):
                budget.check_ints(name, mapping.values())
        budget.charge_size(budget.predicted(name, target, args, kwargs))
        return budget.charge(super().call(__context, __obj, *args, **kwargs))


_ENVIRONMENT = BoundedEnvironment()
