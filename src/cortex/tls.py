"""TLS for cortex's servers and its gateway→neuron calls: the ``ssl.SSLContext`` builders.

* ``server_context(cert, key)`` serves HTTPS: the gateway's API and metrics listeners
  (its own HTTP server, through ``loop.create_server(ssl=…)``) and, through uvicorn's own
  files, a neuron. It is also the check the config runs on ``tls_cert``/``tls_key``.
* ``client_context(ca_file, verify)`` is how the gateway talks to one ``https://`` neuron:
  verified against ``ca_file`` when given, else the system's trust store; ``verify=False``
  (``tls_verify = false``, written out in cortex.toml) checks neither chain nor name.
* ``neuron_contexts(neurons)`` builds one context per ``https://`` neuron, once, at start;
  the upstream pool (the hot path) and the control-plane client share them.

Each failure is a ``ValueError`` whose text says what is wrong with which file, for
``ConfigError``; the config's TLS keys take their types and checks from the end of this
module.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, ValidationInfo

if TYPE_CHECKING:
    from cortex.config import NeuronEntry

ALPN = ["http/1.1"]  # the only protocol either side speaks


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def _cert_file(cert: Path) -> Path:
    if "-----BEGIN CERTIFICATE-----" not in _read(cert, "certificate"):
        raise ValueError(f"{cert} holds no PEM certificate")
    return cert


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context holding ``cert`` (a PEM chain, the server's own first) and its ``key``."""
    _cert_file(cert)
    if "PRIVATE KEY-----" not in _read(key, "key"):
        raise ValueError(f"{key} holds no PEM private key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.set_alpn_protocols(ALPN)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"the key {key} does not belong to the certificate {cert}") from None
        raise ValueError(f"cannot load {cert} with the key {key}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot load {cert} with the key {key}: {exc.strerror}") from None
    return ctx


def client_context(ca_file: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` (else the system's CAs), or nothing at all
    checked when ``verify`` is false."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file is None:
        ctx = ssl.create_default_context()
    else:
        _read(ca_file, "CA file")
        try:
            ctx = ssl.create_default_context(cafile=str(ca_file))
        except ssl.SSLError as exc:
            raise ValueError(f"{ca_file} holds no PEM CA certificate ({exc.reason})") from None
        except OSError as exc:
            raise ValueError(f"cannot read CA file {ca_file}: {exc.strerror}") from None
    ctx.set_alpn_protocols(ALPN)
    return ctx


def neuron_contexts(neurons: Iterable[NeuronEntry]) -> dict[str, ssl.SSLContext]:
    """Endpoint → the client context for each ``https://`` neuron."""
    return {
        n.endpoint: client_context(n.ca_file, verify=n.tls_verify)
        for n in neurons
        if n.endpoint.startswith("https://")
    }


# --- the config's TLS keys (cortex.config) ------------------------------------------------


def _user_path(value: Path, info: ValidationInfo) -> Path:
    """``~`` expanded; relative to the config file's folder where the loader passes one
    (``context={"base": folder}``, as for cortex.toml), else to the working directory."""
    base = (info.context or {}).get("base")
    value = value.expanduser()
    return base / value if isinstance(base, Path) else value


def _key_of_cert(value: Path | None, info: ValidationInfo) -> Path | None:
    """``tls_key`` comes with ``tls_cert`` (validated before it), and the pair must load."""
    if "tls_cert" not in info.data:
        return value  # the certificate was refused already
    cert: Path | None = info.data["tls_cert"]
    if (cert is None) != (value is None):
        raise ValueError("tls_cert and tls_key go together: set both, or neither")
    if cert is not None and value is not None:
        server_context(cert, value)
    return value


PemPath = Annotated[Path, AfterValidator(_user_path)]
# Serving HTTPS: ``tls_cert: TlsCert | None = None`` then ``tls_key: TlsKey = None``.
TlsCert = Annotated[PemPath, AfterValidator(_cert_file)]
TlsKey = Annotated[PemPath | None, AfterValidator(_key_of_cert), Field(validate_default=True)]


def check_neuron_tls(value: Path | bool | None, info: ValidationInfo) -> Path | bool | None:
    """A neuron's ``ca_file`` / ``tls_verify``: only for https://, not both, a CA that loads."""
    endpoint = info.data.get("endpoint")
    if value is None or value is True or not isinstance(endpoint, str):
        return value
    if not endpoint.startswith("https://"):
        raise ValueError(f"{info.field_name} is for https:// endpoints only")
    if value is False and info.data.get("ca_file") is not None:
        raise ValueError("tls_verify = false would ignore ca_file: keep one of them")
    if isinstance(value, Path):
        client_context(value)
    return value
