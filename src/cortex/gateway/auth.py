"""API keys at the gateway: who may call, which models, operator rights, rate limits.

The ``KeyTable`` owns the keys of ``[[keys]]`` in cortex.toml and of its ``keys_file``.
Without either the gateway is open, as it was before keys, and ``enabled`` is false.

Contracts:

* No secret is kept: a key is known by its sha256. A presented key is hashed once and
  looked up in a dict of digests, so the time taken says nothing about any secret; no
  log line or error message carries a presented key.
* A key comes as ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Claude Code and
  the anthropic SDK send the latter). Missing or unknown: ``Unauthorized`` (401).
* ``models`` are glob patterns matched against the name the client sent (an alias in
  models.toml, say) and against the model id it resolves to: either may match. A model the
  key may not use is refused exactly as a model that does not exist (404
  ``model_not_found``), so a key learns nothing about models outside its patterns.
* ``requests_per_minute`` is a sliding window of 60 one-second buckets: at most that many
  requests admitted in the last 60 seconds; past it, 429 with ``Retry-After`` = the seconds
  until enough of the oldest leave the window. O(1) per request and 60 counters per key,
  whatever the rate (a log of admission times would grow with it). ``max_concurrent``
  counts requests admitted and not yet released; past it, 429 with ``Retry-After: 1``.
  Whoever ``admit``s releases, in a ``finally``.
* Everything runs on the event loop: no locks. ``reload`` (SIGHUP) swaps the table in
  one assignment; a key file that does not load leaves the old table and logs why. A
  key's window and in-flight count belong to its name and survive reloads.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from cortex.config import CortexConfig, KeyEntry, read_keys_file
from cortex.errors import ConfigError, Forbidden, ModelNotFound, Overloaded, Unauthorized

log = logging.getLogger(__name__)

RATE_WINDOW = 60  # one-second buckets: requests_per_minute counts those admitted in them
MAX_CACHED = 4096  # (name, model) verdicts kept per key; a client sending random names resets it
Headers = Iterable[tuple[bytes, bytes]]  # names lower-cased, as both HTTP servers give them
_sha256 = hashlib.sha256


class Usage:
    """What a key name has in flight and admitted lately; survives reloads."""

    __slots__ = ("admitted", "buckets", "in_flight", "second")

    def __init__(self) -> None:
        self.in_flight = 0
        self.buckets = [0] * RATE_WINDOW  # admissions in second s at [s % RATE_WINDOW]
        self.second = 0  # the latest second counted in buckets
        self.admitted = 0  # the buckets' sum: admissions in the window

    def advance(self, second: int) -> None:
        """Empty the buckets of the seconds that left the window by ``second``."""
        gap = second - self.second
        if gap <= 0:
            return
        if gap >= RATE_WINDOW:
            self.buckets = [0] * RATE_WINDOW
            self.admitted = 0
        else:
            buckets = self.buckets
            for past in range(self.second + 1, second + 1):
                self.admitted -= buckets[past % RATE_WINDOW]
                buckets[past % RATE_WINDOW] = 0
        self.second = second

    def wait(self, now: float, limit: int) -> float:
        """Seconds until fewer than ``limit`` admissions are left in the window."""
        left = self.admitted
        for oldest in range(self.second - RATE_WINDOW + 1, self.second + 1):
            left -= self.buckets[oldest % RATE_WINDOW]
            if left < limit:
                return oldest + RATE_WINDOW - now
        return RATE_WINDOW  # unreachable while admitted >= limit > 0


class Key:
    """One key's rights and limits, and its ``Usage``."""

    __slots__ = (
        "_allowed",
        "_clock",
        "admin",
        "max_concurrent",
        "name",
        "patterns",
        "rpm",
        "usage",
    )

    def __init__(self, entry: KeyEntry, usage: Usage, clock: Callable[[], float]) -> None:
        self.name = entry.name
        self.admin = entry.admin
        self.patterns = None if entry.models is None else tuple(entry.models)
        self.rpm = entry.requests_per_minute
        self.max_concurrent = entry.max_concurrent
        self.usage = usage
        self._clock = clock
        self._allowed: dict[tuple[str, str], bool] = {}

    def may_use(self, name: str, model: str) -> bool:
        """Whether a request naming ``name`` (resolved to ``model``) is within the key's
        patterns; cached per pair, so a glob is matched once."""
        if self.patterns is None:
            return True
        verdict = self._allowed.get((name, model))
        if verdict is None:
            if len(self._allowed) >= MAX_CACHED:
                self._allowed.clear()
            verdict = any(fnmatchcase(name, p) or fnmatchcase(model, p) for p in self.patterns)
            self._allowed[name, model] = verdict
        return verdict

    def may_list(self, model: str, aliases: Iterable[str]) -> bool:
        """Whether ``/v1/models`` shows ``model`` (reached by itself or by an alias)."""
        return self.may_use(model, model) or any(self.may_use(a, model) for a in aliases)

    def admit(self, name: str, model: str) -> None:
        """Count a request for ``name`` (resolved to ``model``) in, or raise ``ModelNotFound``
        (outside the key's patterns) or ``Overloaded``; once in, the caller ``release``s."""
        if self.patterns is not None and not self.may_use(name, model):
            raise ModelNotFound(f"The model {name!r} does not exist", param="model")
        usage = self.usage
        if self.max_concurrent is not None and usage.in_flight >= self.max_concurrent:
            raise Overloaded(
                f"This key has {self.max_concurrent} requests in flight, its limit; "
                "retry when one ends",
                headers={"Retry-After": "1"},
            )
        if self.rpm is not None:
            now = self._clock()
            second = int(now)
            if second != usage.second:
                usage.advance(second)
            if usage.admitted >= self.rpm:
                wait = max(1, math.ceil(usage.wait(now, self.rpm)))
                raise Overloaded(
                    f"This key may make {self.rpm} requests per minute; retry in {wait}s",
                    headers={"Retry-After": str(wait)},
                )
            usage.buckets[second % RATE_WINDOW] += 1
            usage.admitted += 1
        usage.in_flight += 1

    def release(self) -> None:
        self.usage.in_flight -= 1


class KeyTable:
    """The gateway's keys, looked up by the sha256 of what a request presents."""

    def __init__(self, config: CortexConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = config.has_keys
        self._config = config
        self._clock = clock
        self._usage: dict[str, Usage] = {}
        self._by_digest = self._build(load_entries(config))

    def authenticate(self, headers: Headers) -> Key:
        """The key a request presents (a Bearer token or ``x-api-key``; of both, the first
        that is a key), or ``Unauthorized``. One pass over the headers, one hash per key."""
        presented = False
        for name, value in headers:
            if name == b"authorization":
                scheme, _, secret = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    continue
            elif name == b"x-api-key":
                secret = value
            else:
                continue
            secret = secret.strip()
            if secret:
                presented = True
                key = self._by_digest.get(_sha256(secret).digest())
                if key is not None:
                    return key
        if not presented:
            raise Unauthorized(
                "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"
            )
        raise Unauthorized("Invalid API key")

    def operator(self, headers: Headers) -> Key:
        """An admin key, or ``Unauthorized`` / ``Forbidden`` (a valid key without the right)."""
        key = self.authenticate(headers)
        if not key.admin:
            raise Forbidden("This key may not run operator actions (it is not an admin key)")
        return key

    def reload(self) -> bool:
        """Read the keys again (SIGHUP); on a bad file keep the old keys and log why."""
        try:
            table = self._build(load_entries(self._config))
        except ConfigError as exc:
            log.error("keys not reloaded, the old keys stay: %s", exc.message)
            return False
        self._by_digest = table
        log.info("keys reloaded: %s", ", ".join(k.name for k in table.values()) or "none")
        return True

    def _build(self, entries: list[KeyEntry]) -> dict[bytes, Key]:
        usage = {e.name: self._usage.get(e.name) or Usage() for e in entries}
        table = {e.digest: Key(e, usage[e.name], self._clock) for e in entries}
        self._usage = usage
        return table


def load_entries(config: CortexConfig) -> list[KeyEntry]:
    """``[[keys]]`` and the entries of ``keys_file``, read now; names and secrets unique,
    else ``ConfigError``."""
    path = config.keys_file
    try:
        entries = [*config.keys, *(read_keys_file(path) if path is not None else [])]
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None
    names: set[str] = set()
    digests: set[bytes] = set()
    for entry in entries:
        if entry.name in names or entry.digest in digests:
            what = "name" if entry.name in names else "secret"
            where = str(path) if path is not None else None
            raise ConfigError(f"key {entry.name!r}: its {what} is used twice", file=where)
        names.add(entry.name)
        digests.add(entry.digest)
    return entries
