"""What rendering a client's chat template may cost, and the count kept while it runs.

A ``Budget`` is kept for each render of a client template (``sandbox``) and read by the hooks
of its environment through a context variable:

* work: every Python function call on the rendering thread and every line of template code
  is a step (``running`` sets a trace function on that thread only), so every loop iteration
  counts, however it loops, and so does compiling the template;
* time: a wall-clock deadline, checked at the same steps;
* the client: the ``threading.Event`` of the ``cancel_scope`` the render started in (the
  event loop sets it when the client leaves) stops it at the next step;
* size: what a template builds is charged at its written-out size (``size_of``), before it
  is built where one step could build too much (``predicted``), so no value outgrows
  ``MAX_VALUE`` and all of them together stay under ``MAX_WORK``.

Past any limit ``RenderLimit`` ends the render. It is a ``BaseException`` so that no
``except Exception`` on the way can swallow it and let the render go on unbounded.
"""

from __future__ import annotations

import contextlib
import re
import string
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from jinja2.utils import Namespace

DEADLINE = 2.0  # seconds
MAX_STEPS = 20_000_000
MAX_VALUE = 32 * 1024**2  # characters (items) one value may stand for
MAX_WORK = 256 * 1024**2  # characters (items) all values built in one render may stand for
MAX_WIDTH = 100_000  # padding and indent widths
MAX_BITS = 65_536  # integers

_CANCEL: ContextVar[threading.Event | None] = ContextVar("cortex_render_cancel", default=None)
_BUDGET: ContextVar[Budget | None] = ContextVar("cortex_render_budget", default=None)


class RenderLimit(BaseException):
    """A client template went past a limit, or its client left."""


@contextlib.contextmanager
def cancel_scope() -> Iterator[threading.Event]:
    """Client templates rendered in this context stop once it ends (or its event is set).

    ``asyncio.to_thread`` copies the context, so a render on a worker thread sees it."""
    event = threading.Event()
    token = _CANCEL.set(event)
    try:
        yield event
    finally:
        event.set()
        _CANCEL.reset(token)


@dataclass(slots=True)
class Budget:
    deadline: float
    cancel: threading.Event | None
    steps: int = 0
    work: int = 0
    # Sizes of the containers seen (``size_of``), holding each so that its id stays its own.
    sizes: dict[int, tuple[Any, int]] = field(default_factory=dict)

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RenderLimit(f"the chat template took more than {MAX_STEPS} steps")
        if self.steps & 63 == 0:
            if time.monotonic() > self.deadline:
                raise RenderLimit(f"the chat template took longer than {DEADLINE:g}s")
            if self.cancel is not None and self.cancel.is_set():
                raise RenderLimit("the client went away")

    def charge(self, size: int) -> None:
        if size > MAX_VALUE:
            raise RenderLimit(f"the chat template built a value of more than {MAX_VALUE} chars")
        self.work += size
        if self.work > MAX_WORK:
            raise RenderLimit(f"the chat template built more than {MAX_WORK} chars in all")

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        """sys.settrace's function: a step per call, and per line of template code."""
        self.step()
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.step()
        return self._line


@contextlib.contextmanager
def running() -> Iterator[Budget]:
    """A fresh budget, kept for what runs on this thread until the block ends."""
    budget = Budget(time.monotonic() + DEADLINE, _CANCEL.get())
    token = _BUDGET.set(budget)
    previous = sys.gettrace()
    sys.settrace(budget.trace)
    try:
        yield budget
    finally:
        sys.settrace(previous)
        _BUDGET.reset(token)


def charge(value: Any) -> Any:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size_of(value))
    return value


def charge_size(size: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size)


def check(*values: Any) -> None:
    """Refuse to hand on a value that stands for more than MAX_VALUE (a template can build
    one from shared parts, ``[big, big, …]``, which is cheap until something writes it out)."""
    for value in values:
        if size_of(value) > MAX_VALUE:
            raise RenderLimit(f"the chat template used a value of more than {MAX_VALUE} chars")


def size_of(value: Any) -> int:
    """What ``value`` stands for written out: characters of text, an item at least for
    everything else, a shared part counted each time it appears (computed once a render)."""
    budget = _BUDGET.get()
    return _size(value, budget.sizes if budget is not None else {})


def _size(value: Any, memo: dict[int, tuple[Any, int]]) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    if not isinstance(value, list | tuple | dict | set | frozenset | Namespace):
        return 1
    # Sandboxed templates cannot change a list or dict, so a size stays true for the render;
    # a namespace can change, so it is sized afresh.
    mutable = isinstance(value, Namespace)
    known = memo.get(id(value))
    if known is not None and known[0] is value and not mutable:
        return known[1]
    memo[id(value)] = (value, 1)  # a cycle counts once
    items: Any = value
    if isinstance(value, Namespace):
        items = value._Namespace__attrs.items()
    elif isinstance(value, dict):
        items = value.items()
    total = 1 + sum(_size(item, memo) + 1 for item in items)
    memo[id(value)] = (value, total)
    return total


def check_ints(name: str, values: Any) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE:
            raise RenderLimit(f"{name}() was given {value}, past the limit of {MAX_VALUE}")


def predicted(name: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """What a step that could build too much at once (one C call) would build; 0 for others."""
    if not isinstance(target, str):
        return 0
    if name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = target.count(old) if old else len(target) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        return len(target) + count * max(len(new) - len(old), 0)
    if name == "join" and args and isinstance(args[0], list | tuple):
        return len(target) * len(args[0]) + sum(size_of(item) for item in args[0])
    widths = [len(v) if isinstance(v, str) else v for v in (*args, *kwargs.values())]
    widest = max((w for w in widths if isinstance(w, int)), default=0)
    if name in ("indent", "expandtabs", "wordwrap") and widest > MAX_WIDTH:
        raise RenderLimit(f"{name}() of {widest} is past the limit of {MAX_WIDTH}")
    if name == "indent":
        return len(target) + (target.count("\n") + 1) * widest
    if name == "expandtabs":
        return len(target) + target.count("\t") * widest
    if name == "wordwrap":  # a line per character at worst, each ended by the wrap string
        return len(target) * (1 + widest)
    return 0


_SPEC_NUMBER = re.compile(r"\d+")
_PRINTF_WIDTH = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d+|\*)?(?:\.(\d+|\*))?")


def check_format(template: str, printf: bool) -> None:
    """Padding in a format string stays under MAX_WIDTH (a ``*`` or nested width is an argument,
    which ``check_ints`` keeps under MAX_VALUE; ``%`` and ``.format`` charge what they build)."""
    if printf:
        numbers = [n for match in _PRINTF_WIDTH.finditer(template) for n in match.groups() if n]
    else:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(template)]
        numbers = [n for spec in specs for n in _SPEC_NUMBER.findall(spec)]
    for number in numbers:
        if number != "*" and int(number) > MAX_WIDTH:
            raise RenderLimit(f"a format width of {number} is past the limit of {MAX_WIDTH}")


def repeated(left: Any, right: Any) -> int:
    if isinstance(left, int) and not isinstance(left, bool) and not isinstance(right, int):
        left, right = right, left
    if isinstance(right, int) and isinstance(left, str | list | tuple):
        return size_of(left) * max(right, 0)
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and abs(left).bit_length() + abs(right).bit_length() > MAX_BITS
    ):
        raise RenderLimit(f"an integer past {MAX_BITS} bits")
    return 0
