"""What every config file is made of: sizes, durations, listen addresses, tokens, and
the reading of a TOML file into a model with a ``ConfigError`` that names file, key and reason."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ValidationError,
)

from cortex.errors import ConfigError

C = TypeVar("C", bound=BaseModel)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$")


def parse_size(value: object) -> int:
    """Bytes from ``1234``, ``"64MiB"``, ``"1.5GB"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB or 20GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a size; use a number of bytes or e.g. 64MiB, 20GiB, 1.5GB")


def parse_speed(value: object) -> int:
    """Bytes per second from ``2000000000``, ``"2GB/s"`` or ``"2GB"``; ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    try:
        speed = parse_size(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a speed; use bytes per second or e.g. 2GB/s") from None
    if speed == 0:
        raise ValueError("a speed must be more than 0")
    return speed


def parse_duration(value: object) -> float:
    """Seconds from ``2``, ``"2s"``, ``"500ms"``, ``"5m"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s or 500ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration; use e.g. 2s, 500ms, 5m")


def parse_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → (host, port); ``[::1]:80`` style for IPv6."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host.strip("[]"), port


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Speed = Annotated[int, BeforeValidator(parse_speed)]


def check_token(value: str | None) -> str | None:
    """A bearer token as an HTTP header carries it: visible ASCII, no spaces."""
    if value is not None and not re.fullmatch(r"[!-~]+", value):
        raise ValueError("a token is one or more visible ASCII characters, without spaces")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None


def raise_first(exc: ValidationError, file: str, from_file: set[str]) -> None:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    top = str(error["loc"][0]) if error["loc"] else ""
    reason = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    where = file if top in from_file else "flags/environment"
    raise ConfigError(reason, file=where, key=key)


def validate(kind: type[C], data: dict[str, Any], file: str, base: Path | None = None) -> C:
    try:  # relative paths in the file (tls_cert, ca_file…) are from its folder
        return kind.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise_first(exc, file, set(data))
        raise
