"""Fixtures of the AMQP tests: every behaviour test runs on memory:// and on RabbitMQ."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

import farine.testing
from farine._broker import get_broker
from farine._connections import get_connection
from farine._retry import DELAY_LEVELS, level_name
from farine.amqp._dlq import DeadLetterView, peek
from farine.runtime import Runtime
from farine.settings import Config, ServiceSettings
from tests.amqp import _rabbit

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

    from farine.runtime import Runtime


_rabbit_up: bool | None = None


async def _rabbitmq_up() -> bool:
    global _rabbit_up
    if _rabbit_up is None:
        _rabbit_up = await anyio.to_thread.run_sync(_rabbit.rabbitmq_available)
    return _rabbit_up


class Broker:
    """The broker a test runs against, with unique names and an independent view of it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.prefix = f"farine-test-{uuid.uuid4().hex[:10]}"
        # A memory broker of its own per test: nothing leaks between tests.
        self.uri = _rabbit.RABBITMQ_URI if kind == "rabbitmq" else f"memory://{self.prefix}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    @property
    def is_memory(self) -> bool:
        return self.kind == "memory"

    def exchange(self, what: str = "ex") -> str:
        name = f"{self.prefix}-{what}"
        self.exchanges.append(name)
        return name

    def queue(self, what: str = "q") -> str:
        name = f"{self.prefix}-{what}"
        self.queues.append(name)
        return name

    def config(self, text: str = "", **keys: object) -> Config:
        values: dict[str, object] = {
            "amqp_uri": self.uri,
            "connect_retry_timeout": 10,
            "shutdown_timeout": 10,
        }
        values.update(keys)
        lines = [f"{key} = {value}" for key, value in values.items()]
        return Config.from_string("[DEFAULT]\n" + "\n".join(lines) + "\n" + text)

    def settings(self, runtime: Runtime, service: str = "tests") -> ServiceSettings:
        """The settings a runtime gives `service`."""
        assert runtime.config is not None
        return runtime.config.service(service)

    async def ready(self, queue: str) -> int:
        """Messages ready (not delivered) in `queue`."""
        if self.is_memory:
            return get_broker(self.uri).message_count(queue)
        ready, _ = await _rabbit.queue_counts(queue)
        return ready

    def retrying_queue(self, what: str = "q") -> str:
        """A queue name, whose delay queues are removed after the test too."""
        name = self.queue(what)
        self.queues.extend(f"{name}.delay.{level_name(level)}" for level in DELAY_LEVELS)
        return name

    async def dead_letters(self, queue: str) -> list[DeadLetterView]:
        """The messages of the dead-letter queue of `queue` (they stay in it)."""
        connection = await get_connection(ServiceSettings(name="tests", amqp_uri=self.uri))
        if await connection.queue_size(f"{queue}.dead") is None:
            return []
        return await peek(connection, f"{queue}.dead", 1000)

    async def cleanup(self) -> None:
        if not self.is_memory and (self.queues or self.exchanges):
            # Dead-letter queues are declared by consumers whose handlers failed.
            dead = [f"{queue}.dead" for queue in self.queues if ".delay." not in queue]
            await _rabbit.delete([*self.queues, *dead], self.exchanges)


@pytest.fixture(params=["memory", "rabbitmq"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker per test: the in-process one, then the real RabbitMQ."""
    kind = str(request.param)
    if kind == "rabbitmq":
        request.applymarker(pytest.mark.rabbitmq)
        if not await _rabbitmq_up():
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (start it: .ci/run does)")
    found = Broker(kind)
    yield found
    with anyio.CancelScope(shield=True):
        await found.cleanup()


@pytest.fixture
async def rabbitmq() -> AsyncIterator[Broker]:
    """The real RabbitMQ only (reconnection and outage tests)."""
    if not await _rabbitmq_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (start it: .ci/run does)")
    found = Broker("rabbitmq")
    yield found
    with anyio.CancelScope(shield=True):
        await found.cleanup()


class Recorder:
    """Collects items from handlers (loop or worker threads) and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()

    def add(self, item: Any) -> None:
        if threading.get_ident() == self._thread:
            self._add(item)
        else:
            anyio.from_thread.run_sync(self._add, item, token=self._token)

    def _add(self, item: Any) -> None:
        self.items.append(item)
        for count, event in self._waiters:
            if len(self.items) >= count:
                event.set()

    async def wait_for_unique(self, count: int, seconds: float = 30) -> None:
        """Wait until `count` distinct items were recorded (duplicates do not count)."""
        with anyio.fail_after(seconds):
            while len({repr(item) for item in self.items}) < count:
                await self.wait_for(len(self.items) + 1, seconds)

    async def wait_for(self, count: int, seconds: float = 15) -> list[Any]:
        """Wait until `count` items were recorded and return them all."""
        if len(self.items) < count:
            event = anyio.Event()
            self._waiters.append((count, event))
            with anyio.fail_after(seconds):
                await event.wait()
        return list(self.items)


class LogWatcher(logging.Handler):
    """Sets an event once `count` log records containing `text` were emitted (from any
    thread)."""

    def __init__(self, text: str, count: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = count
        self.event = anyio.Event()
        self.records: list[logging.LogRecord] = []
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()
        # Other records must not take the handler's lock: a worker thread holds it while
        # it waits for the loop (below), and the loop logging meanwhile would deadlock.
        self.addFilter(self._matches)

    def _matches(self, record: logging.LogRecord) -> bool:
        return self.text in record.getMessage()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) < self.count:
            return
        if threading.get_ident() == self._thread:
            self.event.set()
        else:
            with contextlib.suppress(Exception):  # the test's loop may have ended
                anyio.from_thread.run_sync(self.event.set, token=self._token)

    async def wait(self, seconds: float = 15) -> None:
        with anyio.fail_after(seconds):
            await self.event.wait()


@pytest.fixture
def watch_log() -> Iterator[Callable[..., LogWatcher]]:
    """Watch farine's log for a message."""
    watchers: list[LogWatcher] = []
    root = logging.getLogger("farine")
    previous = root.level
    root.setLevel(logging.DEBUG)

    def watch(text: str, count: int = 1) -> LogWatcher:
        watcher = LogWatcher(text, count)
        root.addHandler(watcher)
        watchers.append(watcher)
        return watcher

    yield watch
    for watcher in watchers:
        root.removeHandler(watcher)
    root.setLevel(previous)


T = TypeVar("T")


def instance_of(runtime: Runtime, name: str, kind: type[T]) -> T:
    """The running instance of service `name`, checked to be a `kind`."""
    instance = runtime.services[name].instance
    assert isinstance(instance, kind)
    return instance


@contextlib.asynccontextmanager
async def running(*classes: type, config: Config) -> AsyncGenerator[Runtime]:
    """`farine.testing.running()`, yielding its runtime: for tests that reach the
    services' contexts (`runtime.services`); new tests use the app handle itself."""
    async with farine.testing.running(*classes, config=config) as app:
        yield app.runtime
