"""TLS contexts: the embedded listener (server side) and the client of an external broker.

Building a context reads the certificate files (I/O): call these at start, not in
constructors. Errors are `TlsConfigError` naming the config key and the OS/SSL reason,
never file contents. Both sides require TLS 1.2 or later.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from gateway.security.config import ListenerTlsConfig


class TlsConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message names the key."""


def _load(what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise TlsConfigError(f"{what}: {reason}") from None


def server_context(config: ListenerTlsConfig, key_prefix: str = "ingress.tls") -> ssl.SSLContext:
    """The listener's context. With `ca_file`, client certificates signed by it are verified
    (required with `require_client_cert`, else optional); without it none are asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(
        f"{key_prefix}.cert_file/key_file: cannot load {config.cert_file!r} / {config.key_file!r}",
        lambda: ctx.load_cert_chain(config.cert_file or "", config.key_file or ""),
    )
    if config.ca_file:
        ca_file = config.ca_file
        _load(f"{key_prefix}.ca_file: cannot load {ca_file!r}", lambda: ctx.load_verify_locations(ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, key_prefix: str = "ingress"
) -> ssl.SSLContext:
    """A client context verifying the server (system CAs without `ca_file`), with an optional client certificate."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        _load(f"{key_prefix}.ca_file: cannot load {ca_file!r}", lambda: ctx.load_verify_locations(ca_file))
    if cert_file:
        _load(
            f"{key_prefix}.cert_file/key_file: cannot load {cert_file!r} / {key_file!r}",
            lambda: ctx.load_cert_chain(cert_file, key_file),
        )
    return ctx


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The CN of the peer's certificate when it was verified against the CA, else None."""
    if ssl_object is None:
        return None
    cert: Any = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
