"""What the gateway's HTTP server will not hold or wait for, and the errors it answers with.

``Limits`` are a server's figures (from ``[gateway]`` in cortex.toml); ``Phase`` is where a
connection stands in reading its current request, which decides the deadline its one timer
enforces:

* ``IDLE``: nothing of a next request yet; closes quietly after ``keep_alive`` seconds.
* ``HEAD``: the head has begun; it must end within ``header_timeout`` of its first byte
  (of the moment it became the request being read, when it queued behind others) → 408.
* ``BODY``: the head is in; each read of body bytes gives ``body_timeout`` more → 408.

No deadline runs while a handler has a request: the client may be waiting on us.

What it answers past a limit is in ``cortex.errors``: ``HeadTooLarge`` (431),
``UriTooLong`` (414) and ``RequestTimeout`` (408).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["Limits", "Phase"]


class Phase(Enum):
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int
    keep_alive: float = 75.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    # After an error the server reads no more requests but drains what the client still
    # sends (until ``linger`` quiet seconds, ``linger_max`` in all), so the client reads
    # the error rather than a reset.
    linger: float = 2.0
    linger_max: float = 10.0
    # A connection's timer wakes at least this often; no deadline is shorter, so moving a
    # deadline later (every request does) never needs the timer re-armed.
    tick: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("keep_alive", "header_timeout", "body_timeout", "linger", "linger_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")
        if self.max_header_bytes < 1024 or self.max_headers < 1:
            raise ValueError("max_header_bytes must be at least 1024 and max_headers at least 1")
        object.__setattr__(
            self, "tick", min(self.keep_alive, self.header_timeout, self.body_timeout)
        )

    def timeout(self, phase: Phase) -> float:
        if phase is Phase.HEAD:
            return self.header_timeout
        if phase is Phase.BODY:
            return self.body_timeout
        return self.keep_alive
