"""The shortest text that closes a JSON value cut off part-way, so that constrained JSON still
parses when ``max_tokens`` runs out.

``closing('{"a": [1, "x')`` is ``'"]}'``. It reads compact JSON as the grammars write it (no free
whitespace, ``", "`` and ``": "`` between items), completes what is open (a string, a key's value,
a number, a literal), and closes every container in turn. Whether the closed value still matches
the request's schema is for the grammar to say (``Constraint``): the closing is only taken when
the grammar accepts it.

Pure.
"""

from __future__ import annotations

__all__ = ["closing"]

_LITERALS = ("true", "false", "null")


def closing(text: str) -> str | None:
    """What closes the JSON value ``text`` begins (``""`` when it is whole); None when ``text``
    is not the start of one JSON value."""
    stack: list[str] = []  # "{" or "["
    expect = "value"  # value | key | colon | comma
    in_string = escape = False
    unicode = 0  # hex digits still owed to a \\u escape
    is_key = False
    started = False
    at = 0
    text = text.lstrip()
    while at < len(text):
        char = text[at]
        at += 1
        if in_string:
            if unicode:
                unicode -= 1
            elif escape:
                escape = False
                unicode = 4 if char == "u" else 0
            elif char == "\\":
                escape = True
            elif char == '"':
                in_string = False
                expect = "colon" if is_key else "comma"
            continue
        if char in " \t\r\n":
            continue
        if stack == [] and started and expect == "comma":
            return None  # text after the value
        started = True
        if char == '"' and expect in ("value", "key"):
            in_string, is_key = True, expect == "key"
        elif char in "{[" and expect == "value":
            stack.append(char)
            expect = "key" if char == "{" else "value"
        elif char in "}]" and stack and stack[-1] == ("{" if char == "}" else "["):
            if expect not in ("comma", "key" if char == "}" else "value"):
                return None
            stack.pop()
            expect = "comma"
        elif char == ":" and expect == "colon":
            expect = "value"
        elif char == "," and expect == "comma" and stack:
            expect = "key" if stack[-1] == "{" else "value"
        elif expect == "value" and (char in "-0123456789" or char in "tfn"):
            end = at
            while end < len(text) and text[end] not in ' \t\r\n,:]}"[{':
                end += 1
            word = text[at - 1 : end]
            at = end
            if at < len(text):
                expect = "comma"
                continue
            return _finish_scalar(word) + _close(stack)
        else:
            return None
    suffix = ""
    if in_string:
        if escape:
            suffix += "n"
        suffix += "0" * unicode + '"'
        expect = "colon" if is_key else "comma"
    if not started:
        return None
    if expect == "colon":
        suffix += ": 0"
    elif expect == "value":
        suffix += (" " if text.endswith((":", ",")) else "") + "0"
    elif expect == "key" and text.rstrip().endswith(","):
        suffix += ("" if text.endswith(" ") else " ") + '"": 0'
    return suffix + _close(stack)


def _finish_scalar(word: str) -> str:
    """What completes a number or literal cut off as ``word``."""
    for literal in _LITERALS:
        if literal.startswith(word):
            return literal[len(word) :]
    return "0" if word[-1] in "-.eE+" else ""


def _close(stack: list[str]) -> str:
    return "".join("}" if opened == "{" else "]" for opened in reversed(stack))
