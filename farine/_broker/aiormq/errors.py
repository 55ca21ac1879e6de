"""How aiormq's errors read in farine's logs and errors, and which ones a publish retries."""

from __future__ import annotations

import errno
import logging
import re
from typing import Any, Final

import aiormq
from pamqp import commands as spec

from farine._broker.aiormq.tls import verification_failure
from farine._broker.errors import (
    LoginRefused,
    PublishError,
    ResourceRefused,
    TLSVerificationError,
    UnroutableError,
    declaration_mismatch,
)
from farine._redact import redact
from farine.exceptions import ConfigurationError, FarineError

logger = logging.getLogger("farine.amqp")

#: Channel errors that mean the declaration itself is wrong (not a passing outage).
DECLARATION_ERRORS: Final = (
    aiormq.ChannelNotFoundEntity,
    aiormq.ChannelPreconditionFailed,
    aiormq.ChannelAccessRefused,
    aiormq.ChannelLockedResource,
)

#: Errors of a publish the broker refused: retrying would change nothing.
REFUSALS: Final = (
    aiormq.PublishError,
    aiormq.ChannelNotFoundEntity,
    aiormq.ChannelAccessRefused,
)

#: Errors after which a publish is worth retrying on a new connection or channel.
RETRYABLE: Final = (
    aiormq.AMQPConnectionError,
    aiormq.ChannelInvalidStateError,
    aiormq.ChannelClosed,
    ConnectionError,
    RuntimeError,  # aiormq raises it for a channel requested on a closed connection
)


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if str(exc) else text)


def unreachable_kind(exc: BaseException, connect_timeout: float) -> str:
    """What a failed connection attempt means for the user, in a few words.

    A refused connection (nothing listens on the port: the broker is down, or the port in
    `amqp_uri` is wrong) reads differently from an attempt that got no answer within
    `connect_timeout` (a wrong host, a firewall dropping packets, an overloaded broker).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, aiormq.AMQPConnectionError)
            and current.args
            and current.args[0] == errno.ECONNREFUSED
        ):
            return (
                "connection refused (nothing listens there: is the broker running, and is "
                "the port in amqp_uri right?)"
            )
        if isinstance(current, TimeoutError):
            return (
                f"no answer within connect_timeout = {connect_timeout:g}s (is the host in "
                "amqp_uri right, or is a firewall dropping the packets?)"
            )
        current = current.__cause__ or current.__context__
    return describe(exc)


class TransportEchoFilter(logging.Filter):
    """Drop aiormq's own ERROR records of a failed or closed connection.

    farine logs the same event once, with its reason, on the `farine.amqp` logger (a
    WARNING per retried attempt, the error when it gives up), so aiormq's line would only
    repeat it. At DEBUG level on `aiormq.connection`, aiormq's records are kept.
    """

    ECHOES: Final = (
        "error when creating transport",
        "Unexpected connection close from remote",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.ECHOES):
            return True
        return logging.getLogger(record.name).getEffectiveLevel() <= logging.DEBUG


def login_refusal(exc: BaseException) -> str | None:
    """Why the broker refused to let this client in, or None for a failure worth retrying.

    A wrong user name or password, or a virtual host that does not exist or that the user
    may not use, will not fix itself by trying again.
    """
    if isinstance(exc, aiormq.ProbableAuthenticationError | aiormq.AuthenticationError):
        return "the broker refused the login: wrong user name or password"
    # aiormq reports the broker's Connection.Close in answer to Connection.Open (vhost
    # missing or not allowed) as an unexpected frame, without the broker's reply text.
    if isinstance(exc, aiormq.InvalidFrameError) and "Connection.Close" in str(exc):
        return (
            "the broker refused to open the virtual host: it does not exist, or this user "
            "has no permission on it"
        )
    return None


def not_retried(exc: BaseException, shown_uri: str) -> FarineError | None:
    """The error to raise at once for a failed connection attempt that trying again will
    not fix (refused login, certificate not accepted, bad TLS files), or None."""
    if isinstance(exc, ConfigurationError):
        return exc
    refusal = login_refusal(exc)
    if refusal is not None:
        return LoginRefused(f"{refusal} ({shown_uri})")
    failure = verification_failure(exc)
    if failure is not None:
        return TLSVerificationError(
            f"the broker's TLS certificate was not accepted: {failure} ({shown_uri}; "
            "check amqp_tls_ca and the host name in amqp_uri)"
        )
    return None


def refused(exc: BaseException, exchange: str, routing_key: str) -> PublishError:
    """The error of a publish the broker refused (one of `REFUSALS`)."""
    if isinstance(exc, aiormq.PublishError):
        return UnroutableError(
            f"unroutable message: no queue is bound to exchange {exchange!r} "
            f"with routing key {routing_key!r}"
        )
    if isinstance(exc, aiormq.ChannelAccessRefused):
        return ResourceRefused(
            f"the broker refused to let this user publish to exchange {exchange!r}: "
            f"{describe(exc)} (check the user's write permission)"
        )
    return PublishError(f"cannot publish to exchange {exchange!r}: {describe(exc)}")


def check_confirm(confirm: object, exchange: str) -> None:
    """Raise if the broker's answer to a publish is a nack."""
    if isinstance(confirm, spec.Basic.Nack):
        raise PublishError(f"the broker refused the message (nack) on exchange {exchange!r}")


_INEQUIVALENT: Final = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)'"
    r" in vhost '[^']*': received .* but current is (?P<current>.+)$"
)
_VALUE: Final = re.compile(r"^(?:the value )?'(?P<value>.*)'(?: of type '(?P<type>[^']+)')?$")
_NUMBER_TYPES: Final = frozenset({"byte", "short", "signedint", "long", "unsignedbyte"})


def _existing_value(text: str) -> Any:
    """A value as RabbitMQ's PRECONDITION_FAILED text shows it: `none`, `'true'`,
    `the value 'quorum' of type 'longstr'`."""
    text = text.strip()
    if text == "none":
        return None
    found = _VALUE.match(text)
    if found is None:
        return text
    value, kind = found.group("value"), found.group("type")
    if kind is None and value in {"true", "false"}:
        return value == "true"
    if kind in _NUMBER_TYPES:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def access_refused(exc: BaseException, kind: str, name: str) -> ResourceRefused:
    """The error of a declaration the user's permissions do not allow (ACCESS_REFUSED).

    Args:
        exc: The channel error aiormq raised.
        kind: What was declared (`queue`, `exchange`, `binding of queue`).
        name: Its name, shown as given (quote it).
    """
    shown = name if kind.startswith("binding") else repr(name)
    return ResourceRefused(
        f"the broker refused this user access to {kind} {shown}: {describe(exc)} (check "
        "the user's configure, write and read permissions on the virtual host)"
    )


def refused_declaration(
    exc: BaseException, kind: str, name: str, requested: dict[str, Any]
) -> ConfigurationError:
    """The error of a declaration the broker refused: for PRECONDITION_FAILED, one line
    naming the queue or exchange, the argument, and the existing and requested values.

    Args:
        exc: The channel error aiormq raised.
        kind: `queue` or `exchange`.
        name: Its name.
        requested: The flags and arguments the declaration asked for.
    """
    if isinstance(exc, aiormq.ChannelPreconditionFailed):
        found = _INEQUIVALENT.search(str(exc))
        if found is not None:
            argument = found.group("argument")
            return declaration_mismatch(
                found.group("kind"),
                found.group("name"),
                argument,
                _existing_value(found.group("current")),
                requested.get(argument),
            )
    return ConfigurationError(f"cannot declare {kind} {name!r}: {describe(exc)}")
