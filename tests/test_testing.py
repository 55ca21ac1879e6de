"""`farine.testing`: running services in-process, unit-testing handlers, SSE without a
server, the pytest plugin; `farine.serve()` and `farine.run()`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING
from unittest import mock

import anyio
import pytest

import farine
import farine.amqp
import farine.execute
import farine.rpc
import farine.stream
import farine.testing
from farine import settings
from farine.amqp import AsyncPublisher, Message, MessageStateError, Publisher
from farine.connectors import sql
from farine.exceptions import ConfigurationError
from farine.settings import Config
from farine.stream import Event
from tests._proc import ROOT, FarineProcess

if TYPE_CHECKING:
    from pathlib import Path

    from farine.rpc import AsyncClient, Client

pytestmark = pytest.mark.anyio


# -- running() ------------------------------------------------------------------------------


async def test_running_yields_a_ready_app_and_stops_gracefully() -> None:
    started = anyio.Event()
    finished: list[str] = []

    class Worker:
        @farine.execute.method()
        async def work(self) -> None:
            started.set()
            await anyio.sleep(0.05)
            finished.append("run")

    async with farine.testing.running(Worker, config="[worker]\nshutdown_timeout = 5\n") as app:
        assert app.runtime.services["worker"].settings.shutdown_timeout == 5
        with anyio.fail_after(5):
            await started.wait()
    assert finished  # the in-flight run finished before the block was left


async def test_class_without_entrypoint_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="Plain has no entrypoint"):
        async with farine.testing.running(Plain):
            pass


async def test_sse_listeners_read_the_events_of_an_sse_transport() -> None:
    class Prices:
        @farine.stream.http(endpoint="http://prices.test/events")
        async def on_price(self, data: dict[str, int], event: Event) -> None:
            if "boom" in data:
                raise ValueError("bad price")

    transport = farine.testing.sse_transport(
        [
            Event(type="price", data='{"plum": 3}', id="1", retry=50),
            {"pear": 4},
            Event(type="message", data='{"boom": 1}'),
            '{\n"fig": 5}',
        ]
    )
    async with farine.testing.running(Prices, http_transport=transport) as app:
        calls = await app.wait_for("prices.on_price", count=4)
        await transport.wait_for_requests(2)  # the reconnection, answered 204
    assert [call.body for call in calls] == [{"plum": 3}, {"pear": 4}, {"boom": 1}, {"fig": 5}]
    first_event = calls[0].args[1]
    assert isinstance(first_event, Event)
    assert (first_event.type, first_event.id, first_event.retry) == ("price", "1", 50)
    assert calls[1].args[1].id == "1"  # the last event ID carries over, as the spec says
    assert isinstance(calls[2].exception, ValueError)
    assert str(transport.requests[0].url) == "http://prices.test/events"
    assert transport.requests[1].headers["Last-Event-ID"] == "1"


# -- worker_factory() and message() ----------------------------------------------------------


class Orders:
    """A service written against the documented API only."""

    @farine.amqp.consume(exchange="orders", routing_key="created")
    @farine.amqp.publish(exchange="billing", routing_key="bill")
    def created(self, publish: Publisher, body: dict[str, int], message: Message) -> None:
        if body["id"] < 0:
            message.reject()
            return
        publish({"order": body["id"]})

    @farine.rpc.method()
    @farine.rpc.client("stock")
    @farine.amqp.publish(exchange="audit")
    async def reserve(self, publish: AsyncPublisher, rpc: AsyncClient, item: str) -> int:
        left: int = await rpc.take(item)
        await publish({"reserved": item})
        return left

    @farine.rpc.client("stock")
    def levels(self, rpc: Client) -> dict[str, int]:
        return {"plum": rpc.level("plum")}


class Stock:
    @farine.rpc.method()
    @farine.rpc.client("warehouse")
    @farine.amqp.publish(exchange="audit")
    async def reserve(self, publish: AsyncPublisher, rpc: AsyncClient, item: str) -> int:
        left: int = await rpc.take(item)
        await publish({"reserved": item})
        return left


def test_worker_factory_replaces_injected_helpers_with_specced_mocks() -> None:
    worker = farine.testing.worker_factory(Orders)
    msg = farine.testing.message({"id": 1}, routing_key="created")
    worker.created({"id": 1}, msg)
    publish = vars(worker)["publish"]
    publish.assert_called_once_with({"order": 1})
    with pytest.raises(AttributeError):
        publish.no_such_method()
    assert isinstance(publish, Publisher)  # a mock with the spec of the blocking publisher
    assert msg.outcome is None  # the handler left it to the ack policy
    rejected = farine.testing.message({"id": -1})
    worker.created({"id": -1}, rejected)
    assert (rejected.outcome, rejected.requeued) == ("reject", False)
    assert isinstance(worker, Orders)
    assert type(worker).__name__ == "Orders"


async def test_worker_factory_mocks_async_helpers_and_takes_replacements() -> None:
    rpc = mock.AsyncMock()
    rpc.take.return_value = 7
    worker = farine.testing.worker_factory(Stock, rpc=rpc)
    assert await worker.reserve("plum") == 7
    rpc.take.assert_awaited_once_with("plum")
    publish = vars(worker)["publish"]
    publish.assert_awaited_once_with({"reserved": "plum"})
    assert isinstance(publish, AsyncPublisher)
    assert vars(worker)["rpc"] is rpc


def test_worker_factory_refuses_what_is_not_injected() -> None:
    with pytest.raises(ConfigurationError, match=r"Orders injects no pubish \(it injects: "):
        farine.testing.worker_factory(Orders, pubish=None)


async def test_one_mock_records_the_calls_of_def_and_async_def_methods() -> None:
    worker = farine.testing.worker_factory(Orders)
    rpc = vars(worker)["rpc"]
    rpc.level.return_value = 12
    rpc.take.return_value = 11
    assert worker.levels() == {"plum": 12}
    assert await worker.reserve("plum") == 11
    assert rpc.mock_calls == [mock.call.level("plum"), mock.call.take("plum")]


class Book(sql.Model):
    title = sql.CharField()


class Library(sql.WithDatabase):
    @farine.rpc.method()
    def add(self, title: str) -> str:
        with self.db.atomic():  # pyright: ignore[reportUnknownMemberType]
            return Book.create(title=title).to_json()

    @farine.rpc.method()
    async def count(self) -> int:
        return await self.db_run(Book.select().count)


async def test_worker_factory_gives_a_database() -> None:
    db = sql.SqliteDatabase(":memory:")
    with db.connection_context(), db.bind_ctx([Book]):
        db.create_tables([Book])  # pyright: ignore[reportUnknownMemberType]
        worker = farine.testing.worker_factory(Library, db=db)
        assert json.loads(worker.add("Dune")) == {"id": 1, "title": "Dune"}
        assert await worker.count() == 1
        assert worker.db is db


def test_message_records_how_it_was_settled() -> None:
    msg = farine.testing.message(
        {"id": 1}, headers={"h": "v"}, message_id="m-1", redelivered=True, exchange="orders"
    )
    assert (msg.payload, dict(msg.headers), msg.message_id) == ({"id": 1}, {"h": "v"}, "m-1")
    assert (msg.redelivered, msg.exchange, msg.content_type) == (True, "orders", "application/json")
    assert (msg.settled, msg.settleable, msg.outcome, msg.requeued) == (False, True, None, None)
    msg.nack()
    assert (msg.settled, msg.settleable, msg.outcome, msg.requeued) == (True, False, "nack", True)
    with pytest.raises(MessageStateError):
        msg.ack()
    raw = farine.testing.message(b"\x00raw", content_type="application/octet-stream")
    raw.ack()
    assert (raw.body, raw.outcome, raw.requeued) == (b"\x00raw", "ack", None)
    # Bytes are labelled as a publisher labels them, unless told otherwise.
    assert farine.testing.message(b"\x00raw").content_type == "application/data"


# -- the pytest plugin -----------------------------------------------------------------------


def test_the_pytest_plugin_is_registered() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "farine"]
    assert entry.value == "farine.testing.pytest_plugin"


def test_the_plugin_isolates_settings_and_its_config_can_be_overridden(tmp_path: Path) -> None:
    overridden = tmp_path / "overridden"
    overridden.mkdir()
    (overridden / "conftest.py").write_text(
        textwrap.dedent("""
            import pytest
            from farine.settings import Config

            @pytest.fixture
            def farine_config():
                return Config.from_string("[orders]\\nprefetch = 3\\n")
        """)
    )
    (overridden / "test_user.py").write_text(
        textwrap.dedent("""
            from farine import settings
            from farine.settings import Config

            def test_changes_settings(farine_config):
                assert settings.current() is farine_config
                settings.use(Config.from_string("[orders]\\nprefetch = 9\\n"))
                assert settings.get("orders").prefetch == 9

            def test_sees_its_own_config_again():
                assert settings.get("orders").prefetch == 3
        """)
    )
    # Without an override: farine's defaults, whatever FARINE_INI says.
    (tmp_path / "test_default.py").write_text(
        textwrap.dedent("""
            from farine import settings

            def test_defaults_whatever_farine_ini_says():
                assert settings.get("orders").prefetch != 7
                assert settings.current().sections() == []
        """)
    )
    ini = tmp_path / "farine.ini"
    ini.write_text("[orders]\nprefetch = 7\n", encoding="utf-8")
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "FARINE_INI": str(ini)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for test in (
        "test_changes_settings",
        "test_sees_its_own_config_again",
        "test_defaults_whatever_farine_ini_says",
    ):
        assert f"{test} PASSED" in out, out


def test_settings_using_restores_the_previous_config() -> None:
    outer = Config.from_string("[DEFAULT]\nprefetch = 2\n")
    inner = Config.from_string("[DEFAULT]\nprefetch = 5\n")
    with settings.using(outer):
        with settings.using(inner):
            assert settings.get("x").prefetch == 5
        assert settings.current() is outer


# -- farine.serve() and farine.run() ---------------------------------------------------------


class Calc:
    @farine.rpc.method()
    def add(self, a: int, b: int) -> tuple[int, bool]:
        return a + b, threading.current_thread() is threading.main_thread()


async def test_serve_runs_services_on_the_current_loop() -> None:
    config = Config.from_string("[DEFAULT]\namqp_uri = memory://serve-test\n")
    async with farine.serve(Calc, "tests.apps.once", config=config) as runtime:
        assert sorted(runtime.services) == ["calc", "once"]
        assert settings.current() is config
        async with farine.rpc.Client("calc") as rpc:
            assert await rpc.add(1, 2) == [3, False]
    assert settings.current() is not config
    with pytest.raises(ConfigurationError, match="nothing to run"):
        async with farine.serve():
            pass


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_blocks_until_a_signal_and_stops_gracefully(backend: str) -> None:
    program = (
        "import logging, farine; logging.basicConfig(level=logging.INFO); "
        f"farine.run('inflight', backend={backend!r}); print('run returned', flush=True)"
    )
    process = FarineProcess(command=["-c", program])
    try:
        process.expect("sync started", timeout=30)
        process.expect("async started", timeout=30)
        process.signal()
        assert process.wait(timeout=30) == 0, process.output
    finally:
        process.kill()
    assert "sync finished" in process.output
    assert "async finished" in process.output
    assert "run returned" in process.output
