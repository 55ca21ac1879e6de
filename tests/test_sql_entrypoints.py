"""The database through real entrypoints, on both backends.

The seed's flow (an RPC `save` then `count`) through real RPC clients, and the
per-handler `transaction=` flag on each kind of entrypoint. Each test runs services with
a database (SQLite and PostgreSQL, from `db_settings`) and the in-process broker. The
services are defined here but belong to the `tests.sqlapp` module, so its models
(`Person`) are bound to their database.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.amqp
import farine.execute
import farine.rpc
import farine.stream
from farine._broker import get_broker
from farine.connectors.sql import WithDatabase
from farine.exceptions import ConfigurationError, RPCError
from farine.settings import Config
from tests._db import postgres, rows
from tests._sqlapp import running
from tests._sse_server import Reply, serve_sse
from tests.amqp.conftest import LogWatcher, Recorder
from tests.sqlapp.models import Person
from tests.sqlapp.service import Boom

if TYPE_CHECKING:
    from collections.abc import Iterator

    from farine.amqp import Message
    from farine.runtime import Runtime

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]

EXCHANGE = "ledger"


def config(db_lines: str, **extra: object) -> Config:
    """A memory broker of the test's own, the database, and `extra` keys."""
    lines = [f"amqp_uri = memory://tx-{uuid.uuid4().hex[:10]}", "shutdown_timeout = 5"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return Config.from_string("[DEFAULT]\n" + "\n".join(lines) + "\n" + db_lines)


async def publish(runtime: Runtime, *bodies: dict[str, Any]) -> None:
    assert runtime.config is not None
    publisher = farine.amqp.AsyncPublisher(EXCHANGE, "rk", settings=runtime.config.service("x"))
    for body in bodies:
        await publisher(body)


def count_people() -> int:
    return Person.select().count()


# -- the seed's flow: RPC save, then count -------------------------------------------


class Users(WithDatabase):
    """The seed's database service, served over RPC."""

    @farine.rpc.method()
    def save(self, name: str) -> bool:
        Person.create(name=name)
        return True

    @farine.rpc.method()
    async def count(self) -> int:
        return await self.db_run(count_people)


def seed_script(names: list[str]) -> int:
    """What a plain script does with the blocking client, as the seed's tests did."""
    rpc = farine.rpc.Client("users", timeout=10)
    for name in names:
        assert rpc.save(name) is True
    return rpc.count()


async def test_seed_flow_save_then_count_through_rpc(db_settings: str) -> None:
    async with (
        running(Users, config=config(db_settings)),
        farine.rpc.Client("users", timeout=10) as rpc,
    ):
        assert await rpc.count() == 0
        assert await rpc.save("ada") is True
        assert await rpc.count() == 1
        # Concurrent calls, each with its own connection from the pool.
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(rpc.save, f"user {i}")
        assert await rpc.count() == 21
        with anyio.fail_after(30):
            seen = await anyio.to_thread.run_sync(seed_script, ["bob", "eve"])
        assert seen == 23


# -- the transaction= flag -----------------------------------------------------------


class Ledger(WithDatabase):
    """A consumer in a transaction; `probe` messages report the rows they see.

    prefetch=1: a message is delivered only once the one before it is settled, so a
    probe sees the outcome of everything published before it, committed or not.
    """

    def __init__(self) -> None:
        self.attempts = Recorder()
        self.probes = Recorder()

    # Retry.seed(): the seed's requeue-once rule, which the tests below follow (the
    # default would dead-letter Boom, a permanent failure, at once).
    @farine.amqp.consume(
        exchange=EXCHANGE,
        routing_key="rk",
        queue="ledger",
        prefetch=1,
        transaction=True,
        retry=farine.amqp.Retry.seed(),
    )
    def save(self, body: dict[str, Any], message: Message) -> None:
        if body.get("probe"):
            self.probes.add(count_people())
            return
        Person.create(name=body["name"])
        self.attempts.add((message.redelivered, self.db.in_transaction()))
        if body.get("fail"):
            raise Boom(body["name"])


async def test_consumer_transaction_rolls_back_then_the_message_is_requeued_once_and_rejected(
    db_settings: str,
) -> None:
    async with running(Ledger, config=config(db_settings)) as runtime:
        ledger: Ledger = runtime.services["ledger"].instance  # pyright: ignore[reportAssignmentType]
        await publish(runtime, {"name": "ada", "fail": True}, {"probe": True})
        assert await ledger.probes.wait_for(1) == [0]
        assert runtime.config is not None
        uri = runtime.config.service("ledger").amqp_uri
        assert get_broker(uri).message_count("ledger") == 0
    # Tried, rolled back and requeued; tried again, rolled back and rejected.
    assert ledger.attempts.items == [(False, True), (True, True)]


async def test_consumer_transaction_commits_before_the_ack(db_settings: str) -> None:
    async with running(Ledger, config=config(db_settings)) as runtime:
        ledger: Ledger = runtime.services["ledger"].instance  # pyright: ignore[reportAssignmentType]
        await publish(runtime, {"name": "ada"}, {"probe": True})
        assert await ledger.probes.wait_for(1) == [1]
    assert ledger.attempts.items == [(False, True)]


class Accounts(WithDatabase):
    @farine.rpc.method(transaction=True)
    def save(self, name: str) -> bool:
        Person.create(name=name)
        return self.db.in_transaction()

    @farine.rpc.method(transaction=True)
    def save_then_fail(self, name: str) -> None:
        Person.create(name=name)
        raise Boom(name)

    @farine.rpc.method(transaction=True)
    async def save_async(self, name: str) -> bool:
        return await self.db_run(self.save_row, name)

    @farine.rpc.method()
    def unguarded_save_then_fail(self, name: str) -> None:
        Person.create(name=name)
        raise Boom(name)

    @farine.rpc.method(transaction=False)
    def in_transaction(self) -> bool:
        return self.db.in_transaction()

    @farine.rpc.method(transaction=True)
    def save_each(self, names: list[str]) -> Iterator[bool]:
        # Each step (from one item to the next) runs in its own worker-thread call.
        for name in names:
            Person.create(name=name)
            if name == "fail":
                raise Boom(name)
            yield self.db.in_transaction()

    @farine.rpc.method()
    def count(self) -> int:
        return count_people()

    def save_row(self, name: str) -> bool:
        Person.create(name=name)
        return self.db.in_transaction()


async def test_rpc_transaction_rolls_back_before_the_error_reply(db_settings: str) -> None:
    async with (
        running(Accounts, config=config(db_settings)),
        farine.rpc.Client("accounts", timeout=10) as rpc,
    ):
        with pytest.raises(RPCError, match="Boom"):
            await rpc.save_then_fail("ada")
        assert await rpc.count() == 0
        # Without the flag (and the setting off), the insert commits on its own.
        with pytest.raises(RPCError, match="Boom"):
            await rpc.unguarded_save_then_fail("bob")
        assert await rpc.count() == 1


async def test_rpc_transaction_commits_before_the_reply(db_settings: str) -> None:
    async with (
        running(Accounts, config=config(db_settings)),
        farine.rpc.Client("accounts", timeout=10) as rpc,
    ):
        assert await rpc.save("ada") is True
        assert await rpc.save_async("bob") is True  # each db_run in a transaction
        assert await rpc.count() == 2


async def test_rpc_stream_transaction_covers_each_step(db_settings: str) -> None:
    async with (
        running(Accounts, config=config(db_settings)),
        farine.rpc.Client("accounts", timeout=10) as rpc,
    ):
        steps = [step async for step in rpc.save_each(["ada", "bob"], __stream__=True)]
        assert steps == [True, True]
        assert await rpc.count() == 2
        with pytest.raises(RPCError, match="Boom"):  # the stream, then its error
            async for _ in rpc.save_each(["eve", "fail"], __stream__=True):
                pass
        # Steps committed before the failing one stay; the failing step rolled back.
        assert await rpc.count() == 3


async def test_transaction_false_overrides_the_setting(db_settings: str) -> None:
    async with (
        running(Accounts, config=config(db_settings, transaction="true")),
        farine.rpc.Client("accounts", timeout=10) as rpc,
    ):
        assert await rpc.in_transaction() is False
        # The setting applies where the decorator says nothing.
        with pytest.raises(RPCError, match="Boom"):
            await rpc.unguarded_save_then_fail("bob")
        assert await rpc.count() == 0


class Batch(WithDatabase):
    @farine.execute.method(restart=False, transaction=True)
    def fill(self) -> None:
        Person.create(name="ada")
        raise Boom("ada")

    # A second entrypoint keeps the service (and its database) up once `fill` has
    # returned, so the test counts through a running service.
    @farine.rpc.method()
    def count(self) -> int:
        return count_people()


async def test_execute_transaction_rolls_back(db_settings: str) -> None:
    watcher = LogWatcher("not restarting")
    log = logging.getLogger("farine.execute")
    log.addHandler(watcher)
    try:
        async with running(Batch, config=config(db_settings)) as runtime:
            await watcher.wait()
            ctx = runtime.services["batch"]
            assert await ctx.call(count_people) == 0
    finally:
        log.removeHandler(watcher)


class Once(WithDatabase):
    @farine.execute.method(restart=False)
    def run(self) -> None:
        count_people()


def _backends(database: str) -> set[int]:
    """The process ids of the server's backends connected to `database`."""
    admin = postgres("test")
    try:
        found = rows(admin, f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}'")
    finally:
        admin.close()
    return {int(row[0]) for row in found}


async def _backends_once_closed(database: str, others: set[int]) -> set[int]:
    """The backends connected to `database`, but `others`, once those closing are gone
    (within 10 s): the server ends a backend a moment after its client closed it."""
    with anyio.move_on_after(10):
        while True:
            if not _backends(database) - others:
                return set()
            await anyio.sleep(0.05)
    return _backends(database) - others


async def test_a_call_after_the_service_stopped_leaves_no_connection_open(
    db_settings: str,
) -> None:
    # `once` stops when its only entrypoint returns, and its database is closed then; a
    # call that comes later (or that was still running) must close what it opened.
    watcher = LogWatcher("service stopped: once")
    log = logging.getLogger("farine.runtime")
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(watcher)
    database = db_settings.split("db_name = ", 1)[1].split("\n", 1)[0]
    postgres = "postgres" in db_settings
    fixtures = _backends(database) if postgres else set[int]()  # the tables' set-up
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            async with running(Once, config=config(db_settings)) as runtime:
                await watcher.wait()
                # The service closed its own connection when it stopped...
                assert not postgres or not await _backends_once_closed(database, fixtures)
                ctx = runtime.services["once"]
                assert await ctx.call(count_people) == 0
                # ...and the late call closed the one it opened.
                assert not postgres or not await _backends_once_closed(database, fixtures)
            gc.collect()  # Python 3.13 warns about a SQLite connection collected open
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        log.removeHandler(watcher)
        log.setLevel(level)


class Feed(WithDatabase):
    def __init__(self) -> None:
        self.counted = Recorder()

    @farine.stream.http(transaction=True)
    def on_event(self, data: dict[str, Any]) -> None:
        if data["op"] == "count":
            self.counted.add(count_people())
            return
        Person.create(name=data["name"])
        if data["op"] == "fail":
            raise Boom(data["name"])


async def test_stream_transaction_rolls_back_a_failed_event(db_settings: str) -> None:
    body = (
        'data: {"op": "fail", "name": "ada"}\n\n'
        'data: {"op": "save", "name": "bob"}\n\n'
        'data: {"op": "count"}\n\n'
    )
    async with serve_sse([Reply(body)]) as server:
        text = f"endpoint = {server.url()}\n" + db_settings
        async with running(Feed, config=config(text)) as runtime:
            feed: Feed = runtime.services["feed"].instance  # pyright: ignore[reportAssignmentType]
            # Events are handled one after the other: the count sees both outcomes.
            assert await feed.counted.wait_for(1) == [1]


class NoDatabase:
    @farine.rpc.method(transaction=True)
    def save(self) -> None: ...


async def test_transaction_true_without_a_database_is_a_startup_error() -> None:
    text = f"[DEFAULT]\namqp_uri = memory://tx-{uuid.uuid4().hex[:10]}\n"
    with pytest.RaisesGroup(
        pytest.RaisesExc(ConfigurationError, match=r"nodatabase\.save: transaction=True needs"),
        flatten_subgroups=True,
    ):
        async with running(NoDatabase, config=Config.from_string(text)):
            pass


def test_no_database_no_peewee() -> None:
    """The flag lives in farine.entrypoints: entrypoints never import the sql connector."""
    code = (
        "import sys, farine.amqp, farine.rpc, farine.stream, farine.execute, farine.runtime\n"
        "assert 'peewee' not in sys.modules, 'peewee imported'\n"
        "assert 'farine.connectors.sql' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
