"""Idempotent consumers: the inbox table makes a redelivered message a no-op.

On SQLite and PostgreSQL, memory:// and RabbitMQ, both backends. The crash is
simulated where it hurts: the handler's transaction has committed, and the process
"dies" before its ack reaches the broker (a call hook outside the database's blocks
after the commit; the runtime then stops, abandoning the call, and the channel closes
with the message unacked). A second runtime, the restarted process, gets it again.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import pytest

import farine.amqp
from farine._broker.interface import Outgoing
from farine._broker.message import Properties
from farine._connections import get_connection
from farine.connectors.sql import WithDatabase, migrate
from farine.connectors.sql._database import close as sql_close
from farine.connectors.sql._inbox import INBOX_TABLE, Inbox
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime
from farine.settings import Config
from tests._db import rows
from tests._sqlapp import APP, in_sqlapp, running
from tests.amqp.conftest import Broker, Recorder
from tests.sqlapp.models import Person

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from pathlib import Path

    import peewee

    from farine.amqp import Message
    from tests.amqp.conftest import LogWatcher

pytestmark = pytest.mark.anyio


def _database(config: Config) -> peewee.Database:
    import farine.connectors.sql as sql

    db = sql.setup(config.service("x"))
    assert db is not None
    return db


@pytest.fixture
def inbox(db_settings: str) -> Iterator[str]:
    """The database of `db_settings`, with the inbox table (as `farine migrate` makes)."""
    db = _database(Config.from_string("[DEFAULT]\n" + db_settings))
    with db.bind_ctx([Inbox]), db.connection_context():
        db.create_tables([Inbox])  # pyright: ignore[reportUnknownMemberType]
    try:
        yield db_settings
    finally:
        with db.bind_ctx([Inbox]), db.connection_context():
            db.drop_tables([Inbox])  # pyright: ignore[reportUnknownMemberType]
        sql_close(db)


def _count(config: Config, statement: str) -> int:
    db = _database(config)
    try:
        with db.connection_context():
            return int(rows(db, statement)[0][0])
    finally:
        sql_close(db)


async def _publish(runtime: Runtime, exchange: str, body: bytes, message_id: str | None) -> None:
    assert runtime.config is not None
    connection = await get_connection(runtime.config.service("x"))
    await connection.publish(
        Outgoing(
            exchange,
            "rk",
            body,
            Properties(content_type="application/json", message_id=message_id),
        )
    )


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
async def test_message_redelivered_after_a_crash_between_commit_and_ack_is_processed_once(
    broker: Broker, inbox: str, idempotent: bool, watch_log: Callable[..., LogWatcher]
) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    name = f"crash-{broker.prefix}"
    calls = Recorder()
    committed = Recorder()
    crash = threading.Event()
    already = watch_log("was already processed")

    class Ledger(WithDatabase):
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            idempotent=idempotent,
            shutdown_timeout=0.1,
        )
        def record(self, body: dict[str, Any], message: Message) -> None:
            Person.create(name=body["name"])
            calls.add(body["name"])

    @contextlib.contextmanager
    def die_after_commit() -> Generator[None]:
        yield
        # The database's hook, inside this one, has committed the handler's work.
        committed.add(True)
        crash.wait(30)  # the process is gone before its ack: it never sends it

    config = broker.config(inbox)
    try:
        async with running(Ledger, config=config) as first:
            first.services["ledger"].call_hooks.insert(0, die_after_commit)
            await _publish(first, exchange, f'{{"name": "{name}"}}'.encode(), "m-1")
            await committed.wait_for(1)
        # Stopped: the call was abandoned at its shutdown_timeout, the message requeued.
        async with running(Ledger, config=config):
            if idempotent:
                await already.wait()
            else:
                await calls.wait_for(2)
    finally:
        crash.set()
    people = _count(config, f"SELECT count(*) FROM person WHERE name = '{name}'")
    inbox_rows = _count(config, f"SELECT count(*) FROM {INBOX_TABLE} WHERE message_id = 'm-1'")
    if idempotent:
        assert calls.items == [name]
        assert (people, inbox_rows) == (1, 1)
    else:
        assert calls.items == [name, name]
        assert (people, inbox_rows) == (2, 0)
    assert await broker.ready(queue) == 0  # acked by the second runtime


async def test_a_message_without_an_id_is_handled_each_time_with_a_startup_warning(
    inbox: str, watch_log: Callable[..., LogWatcher]
) -> None:
    # On memory:// only: farine's AMQP broker layer gives every message it publishes
    # an id, so only the in-process broker lets a test publish one without.
    broker = Broker("memory")
    exchange, queue = broker.exchange(), broker.queue()
    calls = Recorder()
    warned = watch_log("a message without a message id cannot be deduplicated")
    skipped = watch_log("was already processed")

    class Ledger(WithDatabase):
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, idempotent=True)
        def record(self, body: dict[str, Any], message: Message) -> None:
            calls.add(message.message_id)

    async with running(Ledger, config=broker.config(inbox)) as runtime:
        await warned.wait()
        for message_id in (None, None, "m-1", "m-1"):
            await _publish(runtime, exchange, b"{}", message_id)
        await calls.wait_for(3)
        await skipped.wait()
    assert calls.items.count(None) == 2
    assert calls.items.count("m-1") == 1


async def _start_fails(cls: type, config: Config, match: str) -> None:
    runtime = Runtime(in_sqlapp(cls), config=config)
    with pytest.RaisesGroup(
        pytest.RaisesExc(ConfigurationError, match=match), flatten_subgroups=True
    ):
        await runtime.run()


async def test_idempotent_needs_a_database_a_def_handler_and_the_inbox_table(
    tmp_path: Path,
) -> None:
    memory = f"[DEFAULT]\namqp_uri = memory://inbox-{tmp_path.name}\n"
    sqlite = f"db_connector = sqlite\ndb_name = {tmp_path / 'db.sqlite'}\n"

    class NoDatabase:
        @farine.amqp.consume(exchange="x", routing_key="rk", idempotent=True)
        def record(self, body: Any, message: Message) -> None: ...

    class AsyncHandler(WithDatabase):
        @farine.amqp.consume(exchange="x", routing_key="rk", idempotent=True)
        async def record(self, body: Any, message: Message) -> None: ...

    class NoTable(WithDatabase):
        @farine.amqp.consume(exchange="x", routing_key="rk", idempotent=True)
        def record(self, body: Any, message: Message) -> None: ...

    await _start_fails(NoDatabase, Config.from_string(memory), "idempotent=True needs a database")
    config = Config.from_string(memory + sqlite)
    await _start_fails(AsyncHandler, config, "idempotent=True needs a `def` handler")
    await _start_fails(
        NoTable, config, f"needs the {INBOX_TABLE} table: run `farine migrate {APP}`"
    )


def test_migrate_creates_the_inbox_of_a_module_with_an_idempotent_consumer(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    db_file = tmp_path / "app.sqlite"
    write_config(f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {db_file}\n")
    models = migrate("tests.apps.inboxapp")
    assert [model._meta.table_name for model in models] == ["order", INBOX_TABLE]  # pyright: ignore[reportPrivateUsage]
    config = Config.from_string(f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {db_file}\n")
    assert _count(config, f"SELECT count(*) FROM {INBOX_TABLE}") == 0
    # Modules without an idempotent consumer get no inbox.
    assert INBOX_TABLE not in [model._meta.table_name for model in migrate(APP)]  # pyright: ignore[reportPrivateUsage]
