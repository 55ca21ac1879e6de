"""A database outage loses nothing: transient failures are retried with backoff.

PostgreSQL is reached through a TCP proxy that the test switches off (connections are
then refused) for `OUTAGE` seconds while 1,000 messages arrive; once it is back, every
message is processed, none is dead-lettered, and the consumer never spun: its calls are
bounded by the backoff. On memory:// and RabbitMQ, on asyncio and trio.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

import anyio
import pytest

import farine.amqp
from farine._retry import Backoff
from farine.amqp import AsyncPublisher
from farine.connectors.sql import WithDatabase
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from tests._db import postgres
from tests.amqp._proxy import TcpProxy
from tests.amqp.conftest import Broker, LogWatcher, Recorder
from tests.sqlapp.models import Person

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from anyio.abc import TaskStatus

    from farine.amqp import Message

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.slow]

#: Seconds PostgreSQL refuses connections.
OUTAGE: Final = 10.0
MESSAGES: Final = 1000
#: The retry settings of the test (the defaults wait up to a minute between attempts).
RETRY_DELAY: Final = 0.2
RETRY_MAX_DELAY: Final = 2.0


def most_calls_per_message(outage: float) -> int:
    """Calls a message can take while the database is down, and the one that succeeds:
    each retry waits at least half its nominal delay (the jitter), so at most this many
    fit in the outage, plus the time to restart the proxy and drain the backlog."""
    backoff = Backoff(initial=RETRY_DELAY, cap=RETRY_MAX_DELAY)
    waited, calls = 0.0, 1
    while waited <= outage + RETRY_MAX_DELAY:
        waited += backoff.nominal(calls) / 2
        calls += 1
    return calls + 1


async def _switchable(proxy: TcpProxy, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
    """Serve `proxy` until the scope it reports is cancelled (then connections are refused)."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(proxy.serve)
            task_status.started(scope)


@contextlib.asynccontextmanager
async def person_table(dbname: str) -> AsyncGenerator[None]:
    db = postgres(dbname)
    with db.bind_ctx([Person]), db.connection_context():
        db.drop_tables([Person])  # pyright: ignore[reportUnknownMemberType]
        db.create_tables([Person])  # pyright: ignore[reportUnknownMemberType]
    try:
        yield
    finally:
        with db.bind_ctx([Person]), db.connection_context():
            db.drop_tables([Person])  # pyright: ignore[reportUnknownMemberType]


@pytest.mark.timeout(180)
async def test_a_ten_second_database_outage_loses_nothing(
    broker: Broker, pg_database: str, watch_log: Callable[..., LogWatcher]
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue("outage")
    saved = Recorder()

    class Ledger(WithDatabase):
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        def save(self, body: dict[str, Any], message: Message) -> None:
            Person.create(name=f"m{body['n']}")
            saved.add(body["n"])

    proxy = TcpProxy(5432)
    config = broker.config(
        "[ledger]\n"
        f"db_connector = postgres\ndb_name = {pg_database}\ndb_user = postgres\n"
        f"db_host = 127.0.0.1\ndb_port = {proxy.port}\n",
        retry_delay=RETRY_DELAY,
        retry_max_delay=RETRY_MAX_DELAY,
    )
    # A service of tests.sqlapp: its models (Person) are bound to the service's database.
    runtime = Runtime(
        [ServiceDefinition(Ledger, "tests.sqlapp", find_entrypoints(Ledger))], config=config
    )
    # While PostgreSQL is down, each call fails before the handler runs (no connection).
    failures = watch_log("; retrying in ", count=MESSAGES)
    async with person_table(pg_database), anyio.create_task_group() as proxies:
        up = await proxies.start(_switchable, proxy)
        async with anyio.create_task_group() as services:
            with anyio.fail_after(30):
                await services.start(runtime.run)
            up.cancel()  # PostgreSQL now refuses connections
            publisher = AsyncPublisher(exchange, "rk", settings=config.service("tests"))
            for n in range(MESSAGES):
                await publisher({"n": n})
            await failures.wait(60)  # every message failed at least once
            await anyio.sleep(OUTAGE)  # the outage itself: what the test is about
            await proxies.start(_switchable, proxy)
            await saved.wait_for_unique(MESSAGES, seconds=120)
            assert await broker.dead_letters(queue) == []
            runtime.stop()
        proxies.cancel_scope.cancel()
    assert sorted(set(saved.items)) == list(range(MESSAGES))
    assert len(saved.items) == MESSAGES  # each message saved once
    deliveries = len(failures.records) + len(saved.items)
    assert deliveries <= MESSAGES * most_calls_per_message(OUTAGE), deliveries
    assert await broker.ready(queue) == 0
