"""Build a service's database from its settings, and check that it can connect."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import peewee
from playhouse.pool import (
    MaxConnectionsExceeded,
    PooledDatabase,
    PooledPostgresqlDatabase,
    PooledSqliteDatabase,
)

from farine._redact import add_secret, redact
from farine.exceptions import ConfigurationError, SettingsError
from farine.settings import ServiceSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("CONNECTORS", "check_connection", "close", "database_key", "describe", "setup")

#: The values `db_connector` accepts, and the keys each one requires.
CONNECTORS: Final[Mapping[str, tuple[str, ...]]] = {
    # db_password is optional: trust, peer and .pgpass authentication need none.
    "postgres": ("db_name", "db_user", "db_host"),
    "sqlite": ("db_name",),
}


def _service_name(settings: Mapping[str, Any]) -> str | None:
    name = settings.name if isinstance(settings, ServiceSettings) else settings.get("name")
    return str(name) if name and name != "DEFAULT" else None


def _where(settings: Mapping[str, Any]) -> tuple[str, str]:
    """`(prefix, sections)` for errors: "file: service x: " and where to set a key."""
    source = settings.source if isinstance(settings, ServiceSettings) else "<settings>"
    name = _service_name(settings)
    if name is None:
        return f"{source}: ", "[DEFAULT]"
    return f"{source}: service {name}: ", f"[DEFAULT] or [{name}]"


def _connector(settings: Mapping[str, Any]) -> str | None:
    raw: object = settings.get("db_connector")
    if raw is None or raw == "":
        return None
    connector = str(raw).strip().lower()
    prefix, sections = _where(settings)
    if connector not in CONNECTORS:
        raise SettingsError(
            f"{prefix}db_connector = {raw!r}: expected one of " + ", ".join(CONNECTORS)
        )
    for key in CONNECTORS[connector]:
        if settings.get(key) in (None, ""):
            raise SettingsError(
                f"{prefix}db_connector = {connector} requires {key} (set it in {sections})"
            )
    return connector


def setup(settings: Mapping[str, Any]) -> peewee.Database | None:
    """Build the database described by a service's settings.

    `db_connector = postgres` gives a pool of PostgreSQL connections (psycopg2) of
    `db_max_conn` connections; a call waits up to `db_timeout` seconds for a free one
    (0 waits forever). `db_connector = sqlite` gives a pool of SQLite connections to
    the file `db_name`, in WAL mode, whose transactions take the write lock when they
    begin (`BEGIN IMMEDIATE`) so concurrent writers wait instead of failing.

    The database does not connect by itself (`autoconnect=False`): a query runs only
    where a connection was opened, which farine does around each handler call. In a
    script, use `with db.connection_context(): ...`.

    Args:
        settings: A service's settings (`farine.settings.get("name")`) or any mapping
            with the `db_*` keys.

    Returns:
        The database, or None when `db_connector` is not set.

    Raises:
        SettingsError: `db_connector` is unknown or a key it requires is missing.
    """
    connector = _connector(settings)
    if connector is None:
        return None
    password: str | None = settings.get("db_password") or None
    add_secret(password)
    max_conn = int(settings.get("db_max_conn") or 10)
    stale: float | None = settings.get("db_stale_timeout")
    wait = settings.get("db_timeout")
    wait = 10.0 if wait is None else float(wait)
    name = str(settings["db_name"])
    if connector == "sqlite":
        return PooledSqliteDatabase(
            name,
            max_connections=max_conn,
            stale_timeout=stale,
            timeout=wait,
            autoconnect=False,
            # Pooled connections move between worker threads (one call at a time).
            check_same_thread=False,
            lock_type="IMMEDIATE",
            # busy_timeout first: switching to WAL needs a lock another thread may hold.
            pragmas=(
                ("busy_timeout", int(wait * 1000) if wait else 2**31 - 1),
                ("journal_mode", "wal"),
                ("foreign_keys", 1),
            ),
        )
    extra: dict[str, Any] = {}
    connect_timeout = settings.get("connect_timeout")
    if connect_timeout:
        # libpq takes whole seconds; 0 would mean "wait forever".
        extra["connect_timeout"] = max(1, math.ceil(float(connect_timeout)))
    return PooledPostgresqlDatabase(
        name,
        user=settings["db_user"],
        password=password,
        host=settings["db_host"],
        port=settings.get("db_port"),
        max_connections=max_conn,
        stale_timeout=stale,
        timeout=wait,
        autoconnect=False,
        **extra,
    )


def database_key(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a database in the settings: services with equal keys share one."""
    keys = (
        "db_connector", "db_name", "db_user", "db_host", "db_password", "db_port",
        "db_max_conn", "db_stale_timeout", "db_timeout",
    )  # fmt: skip
    return tuple(settings.get(key) for key in keys)


def describe(settings: Mapping[str, Any]) -> str:
    """Name the database for log lines and errors, never showing the password."""
    connector = str(settings.get("db_connector") or "").strip().lower()
    if connector == "sqlite":
        return f"SQLite {settings.get('db_name')}"
    port = settings.get("db_port")
    host = f"{settings.get('db_host')}:{port}" if port else str(settings.get("db_host"))
    return f"PostgreSQL {settings.get('db_user')}@{host}/{settings.get('db_name')}"


def check_connection(
    db: peewee.Database, settings: Mapping[str, Any], *, service: str | None = None
) -> None:
    """Open and close one connection, so bad credentials fail at start-up.

    Blocking: call it from a worker thread.

    Args:
        db: The database, as built by `setup()`.
        settings: The settings it was built from (named in the error).
        service: The service starting, named in the error.

    Raises:
        ConfigurationError: The database refused the connection; the message says why
            (the driver's reason) and never shows the password.
    """
    try:
        with db.connection_context():
            db.execute_sql("SELECT 1")  # pyright: ignore[reportUnknownMemberType]
    except (peewee.PeeweeException, MaxConnectionsExceeded) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        who = f"service {service}: " if service else ""
        raise ConfigurationError(
            redact(f"{who}cannot connect to {describe(settings)}: {reason}")
        ) from None


def close(db: peewee.Database) -> None:
    """Close the connections of `db` that no thread is using.

    A connection still checked out belongs to a worker thread the runtime gave up on
    (past the shutdown grace period); closing it under that thread could crash the
    process (sqlite3 does), so it is left to the thread, which returns it to the pool.
    """
    if isinstance(db, PooledDatabase):
        db.close_idle()
    db.close()  # this thread's own connection, if it has one
