"""Idempotent consumers: the inbox of the message ids each consumer has processed.

`consume(idempotent=True)` wraps the handler: in its worker thread, with the call's
connection open, one transaction first inserts `(consumer, message id)` into the inbox
table, then runs the handler. Both commit together, before the message is acked. A
message redelivered after that commit (the process died before its ack reached the
broker) finds its row: the insert fails on the primary key, and the message is acked
without calling the handler again. Two deliveries of one id at once serialise on that
key (PostgreSQL makes the second insert wait for the first transaction; SQLite's
transactions take the write lock when they begin).
"""

from __future__ import annotations

import datetime
import functools
import logging
from typing import TYPE_CHECKING, Any, Final

import peewee

from farine.entrypoints import is_async_callable
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from farine._broker.message import Message

__all__ = ("INBOX_TABLE", "Inbox", "inbox_exists", "make_idempotent")

logger = logging.getLogger("farine.connectors.sql")

#: The table of processed message ids, created by `farine migrate`.
INBOX_TABLE: Final = "farine_inbox"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Inbox(peewee.Model):
    """One message processed by one consumer (bound to no database: queries name it)."""

    consumer = peewee.CharField(max_length=255)
    message_id = peewee.CharField(max_length=255)
    processed_at = peewee.DateTimeField(default=_now, index=True)

    class Meta:
        table_name = INBOX_TABLE
        primary_key = peewee.CompositeKey("consumer", "message_id")


def inbox_exists(db: peewee.Database) -> bool:
    """True when the inbox table exists in `db` (blocking: call it from a thread)."""
    with db.connection_context():
        return bool(db.table_exists(INBOX_TABLE))  # pyright: ignore[reportUnknownMemberType]


def make_idempotent(
    handler: Callable[..., Any],
    consumer: str,
    where: str,
    *,
    database: Callable[[], peewee.Database],
    module: str,
    ready: bool,
) -> Callable[..., Any]:
    """Wrap a consumer's `def` handler so that each message id is processed once.

    Args:
        handler: The handler, `(body, message)`.
        consumer: The consumer's name in the inbox (its queue).
        where: `service.method`, for errors and log lines.
        database: Returns the database of the call running in this thread.
        module: The user's module (named in the error when the table is missing).
        ready: Whether the inbox table exists.

    Raises:
        ConfigurationError: The handler is `async def` (its database work could not
            share the inbox's transaction), or the inbox table does not exist.
    """
    if is_async_callable(handler):
        raise ConfigurationError(
            "idempotent=True needs a `def` handler: its database work and the inbox row "
            "must commit in one transaction, which `await self.db_run(...)` cannot share"
        )
    if not ready:
        raise ConfigurationError(
            f"idempotent=True needs the {INBOX_TABLE} table: run `farine migrate {module}`"
        )
    logger.warning(
        "%s: idempotent consumer: a message without a message id cannot be deduplicated "
        "and is handled at each delivery (farine's publishers always set one)",
        where,
    )

    @functools.wraps(handler)
    def idempotent(body: Any, message: Message) -> Any:
        message_id = message.message_id
        if not message_id:
            logger.debug("%s: message without an id: handled without deduplication", where)
            return handler(body, message)
        db = database()
        with db.atomic():  # pyright: ignore[reportUnknownMemberType]
            try:
                # A savepoint: a duplicate key must not abort the whole transaction.
                with db.atomic():  # pyright: ignore[reportUnknownMemberType]
                    insert = Inbox.insert(consumer=consumer, message_id=message_id)  # pyright: ignore[reportUnknownMemberType]
                    insert.execute(db)  # pyright: ignore[reportUnknownMemberType]
            except peewee.IntegrityError:
                logger.info(
                    "%s: message %s was already processed; acking it without calling "
                    "the handler",
                    where, message_id,
                )  # fmt: skip
                return None
            return handler(body, message)

    return idempotent
