"""The TLS side of `amqps://` connections: the client's context, and why a handshake failed."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from farine._broker.interface import ConnectionOptions

__all__ = ("client_context", "verification_failure", "verifies")


def verifies(url: str, options: ConnectionOptions) -> bool:
    """Whether the broker's certificate and host name are checked for `url`."""
    query = dict(parse_qsl(urlsplit(url).query))
    return options.tls_verify and query.get("no_verify_ssl", "0") == "0"


def client_context(url: str, options: ConnectionOptions) -> ssl.SSLContext:
    """Build the TLS context for an `amqps://` node (blocking: it reads files).

    The URI's own `cafile`, `certfile`, `keyfile` and `no_verify_ssl` query parameters
    (aiormq's names) win over the `tls_*` options.

    Args:
        url: The node's URI.
        options: The connection's options.

    Raises:
        ConfigurationError: A certificate or key file is missing or unreadable.
    """
    query = dict(parse_qsl(urlsplit(url).query))
    ca = query.get("cafile") or options.tls_ca
    cert = query.get("certfile") or options.tls_cert
    key = query.get("keyfile") or options.tls_key
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"amqp_tls_ca: cannot load {ca}: {_reason(exc)}") from None
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"amqp_tls_cert/amqp_tls_key: cannot load {cert}"
                f"{f' with key {key}' if key else ''}: {_reason(exc)}"
            ) from None
    elif key:
        raise ConfigurationError("amqp_tls_key is set without amqp_tls_cert")
    if not verifies(url, options):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def verification_failure(exc: BaseException) -> str | None:
    """Why the broker's certificate was not accepted, or None if that is not the error."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)
        cause = cause.__cause__
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
