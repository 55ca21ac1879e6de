"""Give a running service its database: `self.db` per handler call, `db_run`, transactions.

peewee keeps its connection per thread. Each handler call runs in a worker thread, so
the call opens (checks out) a connection when it starts and closes (returns) it when it
ends, in that same thread: the per-call hook below, entered by
`ServiceContext.run_sync()`. The worker-thread limit of the service is lowered to the
pool size, so a call never waits for a connection held by another of its calls.

A service instance is shared by every thread, so `self.db` is not an attribute assigned
per call (two threads would race); it is a descriptor reading a context variable that
the hook sets in the worker thread's own context.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, Self, TypeVar, overload

import anyio
import peewee

from farine.entrypoints import current_service, requested_transaction
from farine.entrypoints import handler_transaction as handler_transaction
from farine.exceptions import ConfigurationError, FarineError

from ._database import check_connection, close, database_key, describe, setup
from ._inbox import inbox_exists, make_idempotent
from ._models import init

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from farine.entrypoints import ServiceContext

__all__ = (
    "DatabaseUnavailable",
    "WithDatabase",
    "attach_database",
    "handler_transaction",
)

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("farine.connectors.sql")

_current_db: ContextVar[peewee.Database] = ContextVar("farine_sql_database")


class DatabaseUnavailable(FarineError, AttributeError):
    """`self.db` was used where no connection is open (on the event loop, say)."""

    __module__ = "farine.connectors.sql"  # where users import it from, as tracebacks show it


@contextlib.contextmanager
def _call_scope(entry: _Shared, transaction: bool) -> Generator[None]:
    """One handler call, in its worker thread: a connection, maybe a transaction."""
    db = entry.db
    flag = requested_transaction()
    in_transaction = transaction if flag is None else flag
    token = _current_db.set(db)
    try:
        # connection_context() returns the connection to the pool even when the handler
        # raises; atomic() rolls back on an exception and commits otherwise, before the
        # call returns (so before a consumer acks the message).
        with db.connection_context():
            if in_transaction:
                with db.atomic():  # pyright: ignore[reportUnknownMemberType]
                    yield
            else:
                yield
    finally:
        _current_db.reset(token)
        if entry.closed:
            # The service stopped while this call ran (or it came late): nobody will
            # close the pool again, so the connection just returned must not stay open.
            close(db)


class _DatabaseAttribute:
    """`self.db`: the database of the handler call running in this thread."""

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> peewee.Database: ...
    def __get__(
        self, instance: object | None, owner: type[Any] | None = None
    ) -> Self | peewee.Database:
        if instance is None:
            return self
        db = _current_db.get(None)
        if db is not None:
            return db
        ctx = current_service()
        if ctx is None:
            reason = "self.db exists only during a handler call of a running service"
        elif not ctx.settings.db_connector:
            reason = f"service {ctx.name} has no database (db_connector is not set)"
        else:
            reason = (
                "no connection is open here: self.db works in `def` handlers and in "
                "functions run by `await self.db_run(fn, ...)` from `async def` ones"
            )
        raise DatabaseUnavailable(reason)

    def __set__(self, instance: object, value: object) -> NoReturn:
        # Assigning would hide the per-call database from every thread at once.
        raise AttributeError("self.db is provided by farine and cannot be assigned")


class WithDatabase:
    """Optional base class that declares `self.db` and `self.db_run` for type checkers.

    farine adds both to every service class whose service has a database, so deriving
    from this class is needed only for a type checker to know them.
    """

    db = _DatabaseAttribute()
    """The service's database; a connection is open for the current `def` handler call."""

    async def db_run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking database work from an `async def` handler and return its result.

        `fn(*args, **kwargs)` runs in one of the service's worker threads, with a
        connection open for it (and in a transaction when the handler's transaction
        setting is on), exactly like a `def` handler call; the event loop keeps running
        meanwhile. Each call has its own connection: put work that must be atomic in one
        function.

        Args:
            fn: A blocking function (it may use `self.db` and the models).
            *args: Positional arguments for `fn`.
            **kwargs: Keyword arguments for `fn`.

        Raises:
            DatabaseUnavailable: Not called from a handler of a service with a database.
        """
        ctx = current_service()
        if ctx is None or not ctx.settings.db_connector:
            raise DatabaseUnavailable(
                "db_run() works in handlers of a running service that has a database"
            )
        return await ctx.run_sync(fn, *args, **kwargs)


_PROVIDED: dict[str, object] = {
    "db": WithDatabase.__dict__["db"],
    "db_run": WithDatabase.__dict__["db_run"],
}


@dataclass(eq=False)
class _Shared:
    """One database per models module: the module's models can be bound to only one."""

    db: peewee.Database
    key: tuple[Any, ...]
    owner: str
    users: int = 0
    closed: bool = False
    inbox: bool = False  # the inbox table of idempotent consumers exists
    models: list[type[peewee.Model]] = field(default_factory=list[type[peewee.Model]])


_shared: dict[str, _Shared] = {}


async def attach_database(ctx: ServiceContext) -> None:
    """Set up the database of a starting service (called by the runtime).

    Builds (or shares, with the other services of the same module) the database from
    the settings, checks that it connects, binds `<module>.models`, lowers the worker
    thread limit to the pool size, installs the per-call hook and provides `self.db`
    and `self.db_run`. Everything is undone through `ctx.exit_stack`.

    Raises:
        SettingsError: A wrong or missing `db_*` setting.
        ConfigurationError: The database refused to connect, two services of one
            module configure different databases, or the class already has a `db`.
    """
    settings = ctx.settings
    _provide_attributes(ctx)
    key = database_key(settings)
    entry = _shared.get(ctx.module)
    if entry is not None and entry.key != key:
        raise ConfigurationError(
            f"services {entry.owner} and {ctx.name} of module {ctx.module!r} configure "
            f"different databases, but {ctx.module}.models can be bound to only one"
        )
    if entry is None:
        db = setup(settings)
        if db is None:  # db_connector empty: nothing to attach
            return
        entry = _Shared(db=db, key=key, owner=ctx.name)
        try:
            await anyio.to_thread.run_sync(
                functools.partial(check_connection, db, settings, service=ctx.name)
            )
            entry.inbox = await anyio.to_thread.run_sync(inbox_exists, db)
            entry.models = init(ctx.module, db)
        except BaseException:
            close(db)
            raise
        _shared[ctx.module] = entry
    entry.users += 1
    ctx.exit_stack.callback(_release, ctx.module, entry)

    pool = settings.db_max_conn
    if ctx.workers.max_workers > pool:
        logger.info(
            "service %s: %d worker thread(s) at most, the database pool's size "
            "(db_max_conn; max_workers = %d)",
            ctx.name,
            pool,
            settings.max_workers,
        )
        ctx.workers.max_workers = pool
    ctx.call_hooks.append(functools.partial(_call_scope, entry, settings.transaction))
    ctx.inbox = functools.partial(
        _idempotent, database=_current_db.get, module=ctx.module, entry=entry
    )
    models = ", ".join(model.__name__ for model in entry.models) or "none"
    logger.info(
        "service %s: database %s (pool of %d), models: %s",
        ctx.name,
        describe(settings),
        pool,
        models,
    )


def _idempotent(
    handler: Callable[..., Any],
    consumer: str,
    where: str,
    *,
    database: Callable[[], peewee.Database],
    module: str,
    entry: _Shared,
) -> Callable[..., Any]:
    return make_idempotent(
        handler, consumer, where, database=database, module=module, ready=entry.inbox
    )


def _provide_attributes(ctx: ServiceContext) -> None:
    cls = type(ctx.instance)
    for name, value in _PROVIDED.items():
        existing = inspect.getattr_static(cls, name, None)
        if existing is value:
            continue
        if existing is not None or name in getattr(ctx.instance, "__dict__", {}):
            raise ConfigurationError(
                f"service {ctx.name}: {cls.__qualname__} has its own {name!r}, but farine "
                f"provides self.{name} to services with a database; rename it"
            )
        setattr(cls, name, value)


def _release(module: str, entry: _Shared) -> None:
    entry.users -= 1
    if entry.users == 0:
        if _shared.get(module) is entry:
            del _shared[module]
        # Set before closing: a call still running closes its own connection when it
        # returns it (see _call_scope).
        entry.closed = True
        close(entry.db)
