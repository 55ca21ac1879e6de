"""Refused logins fail at once; a broker given as several nodes survives losing one."""

from __future__ import annotations

import subprocess
import uuid
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from yarl import URL

import farine.amqp
from farine._broker import ConnectionOptions, Outgoing, open_connection
from farine._broker.interface import ExchangeSpec, Topology
from farine._broker.message import Properties
from farine._cluster import split_nodes
from farine.amqp import (
    AccessRefused,
    AsyncPublisher,
    LoginRefused,
    Message,
    PublishError,
    ResourceRefused,
)
from farine.exceptions import ConfigurationError, SettingsError
from farine.settings import Config
from tests.amqp import _rabbit
from tests.amqp._proxy import TcpProxy
from tests.amqp.conftest import Broker, LogWatcher, Recorder, running

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from anyio.abc import TaskGroup, TaskStatus

pytestmark = pytest.mark.anyio


def test_split_nodes_keeps_the_order_and_checks_each_part() -> None:
    assert split_nodes("amqp://a/v, amqps://b:5671/v") == ("amqp://a/v", "amqps://b:5671/v")
    assert split_nodes("memory://x") == ("memory://x",)
    with pytest.raises(ValueError, match="memory:// URI cannot be listed"):
        split_nodes("amqp://a/, memory://")
    with pytest.raises(ValueError, match="got 'http://b/'"):
        split_nodes("amqp://a/, http://b/")
    with pytest.raises(ValueError, match="same virtual host, not '/', 'v'"):
        split_nodes("amqp://a/, amqp://b/v")


def test_amqp_uri_setting_accepts_the_nodes_of_a_cluster() -> None:
    config = Config.from_string("[DEFAULT]\namqp_uri = amqp://a/ ,  amqp://b/\n")
    assert config.service("s").amqp_uri == "amqp://a/,amqp://b/"
    with pytest.raises(SettingsError, match="same virtual host"):
        Config.from_string("[DEFAULT]\namqp_uri = amqp://a/x, amqp://b/y\n").service("s")


async def _serve_in_group(proxy: TcpProxy, *, task_status: TaskStatus[TaskGroup]) -> None:
    """Serve `proxy` in a task group of its own, handed to the caller to cancel."""
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        task_status.started(group)


async def _raised(action: Callable[[], Awaitable[None]]) -> BaseException:
    """The one error `action` raised within 20 s (unwrapped from its task groups)."""
    try:
        with anyio.fail_after(20):
            await action()
    except BaseException as exc:
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup):
            inner = cast("tuple[BaseException, ...]", error.exceptions)  # pyright: ignore[reportUnknownMemberType]
            if len(inner) != 1:
                break
            error = inner[0]
        return error  # pyright: ignore[reportUnknownVariableType]
    raise AssertionError("nothing was raised")


def _with(uri: str, *, password: str | None = None, vhost: str | None = None) -> str:
    url = URL(uri)
    if password is not None:
        url = url.with_password(password)
    if vhost is not None:
        url = url.with_path("/" + vhost)
    return str(url)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("fast_path", ["on", "off"])
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"password": "not-the-password"}, "refused the login: wrong user name or password"),
        ({"vhost": "farine-no-such-vhost"}, "refused to open the virtual host"),
    ],
    ids=["password", "vhost"],
)
async def test_a_refused_login_fails_at_once_after_one_attempt(
    rabbitmq: Broker, fast_path: str, change: dict[str, str], reason: str
) -> None:
    proxy = TcpProxy(5672)
    uri = _with(_rabbit.uri_on_port(proxy.port), **change)
    options = ConnectionOptions(connect_retry_timeout=60, fast_path=fast_path)

    async def connect() -> None:
        async with open_connection(uri, options):
            raise AssertionError("connected")

    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        error = await _raised(connect)
        tg.cancel_scope.cancel()
    assert proxy.accepted == 1  # no retry loop
    assert isinstance(error, LoginRefused)
    assert isinstance(error, AccessRefused)
    assert isinstance(error, ConfigurationError)
    assert reason in str(error)
    assert "not-the-password" not in str(error)


@pytest.mark.rabbitmq
async def test_a_service_with_a_wrong_password_does_not_start(rabbitmq: Broker) -> None:
    class Worker:
        @farine.amqp.consume(exchange=rabbitmq.exchange(), routing_key="rk")
        async def handle(self, body: Any, message: Message) -> None:
            raise AssertionError("never called")

    uri = _with(_rabbit.RABBITMQ_URI, password="not-the-password")
    config = rabbitmq.config(amqp_uri=uri, connect_retry_timeout=60)

    async def start() -> None:
        async with running(Worker, config=config):
            raise AssertionError("started")

    error = await _raised(start)
    assert isinstance(error, LoginRefused)
    assert "wrong user name or password" in str(error)


@pytest.mark.rabbitmq
async def test_a_service_goes_on_through_the_next_node_when_one_goes_away(
    rabbitmq: Broker,
) -> None:
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    first, second = TcpProxy(5672), TcpProxy(5672)
    uri = f"{_rabbit.uri_on_port(first.port)}, {_rabbit.uri_on_port(second.port)}"
    seen = Recorder()

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body["n"])

    config = rabbitmq.config(amqp_uri=uri)
    publish = AsyncPublisher(exchange, "rk", settings=config.service("worker"))
    async with anyio.create_task_group() as tg:
        first_node: TaskGroup = await tg.start(_serve_in_group, first)
        await tg.start(second.serve)
        with anyio.fail_after(30):
            async with running(Worker, config=config):
                for n in range(50):
                    await publish({"n": n})
                await seen.wait_for_unique(50)
                assert (first.accepted, second.accepted) == (1, 0)  # the first node, in order
                first_node.cancel_scope.cancel()  # that node goes away
                for n in range(50, 100):
                    await publish({"n": n})
                await seen.wait_for_unique(100)
        tg.cancel_scope.cancel()
    assert set(seen.items) == set(range(100))  # at least once: nothing lost
    assert second.accepted == 1


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=True)


@pytest.fixture
def limited_uri() -> Iterator[str]:
    """The test broker's URI for a user who may use only resources named `allowed-*`."""
    user, password = f"farine-test-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    url = URL(_rabbit.RABBITMQ_URI)
    vhost = url.path[1:] or "/"
    _rabbitmqctl("add_user", user, password)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, "^allowed-", "^allowed-", "^allowed-")
        yield str(url.with_user(user).with_password(password))
    finally:
        _rabbitmqctl("delete_user", user)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("fast_path", ["on", "off"])
async def test_a_publish_refused_by_permissions_fails_at_once_naming_the_exchange(
    rabbitmq: Broker, limited_uri: str, fast_path: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    retried = watch_log("retrying")
    options = ConnectionOptions(fast_path=fast_path, publish_timeout=10)
    message = Outgoing("denied-exchange", "rk", b"{}", Properties())
    with anyio.fail_after(20):
        async with open_connection(limited_uri, options) as connection:
            with pytest.raises(ResourceRefused) as info:
                await connection.publish(message)
            # The connection is still usable for what the user may do.
            await connection.declare(
                Topology(exchanges=(ExchangeSpec("allowed-" + rabbitmq.prefix, "direct"),))
            )
            await _rabbit.delete(exchanges=["allowed-" + rabbitmq.prefix])
    assert isinstance(info.value, AccessRefused)
    assert isinstance(info.value, PublishError)
    assert "publish to exchange 'denied-exchange'" in str(info.value)
    assert "write permission" in str(info.value)
    assert not retried.event.is_set()


@pytest.mark.rabbitmq
async def test_a_consumer_whose_declaration_is_refused_does_not_start(
    rabbitmq: Broker, limited_uri: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    retried = watch_log("retrying")
    exchange = "allowed-" + rabbitmq.prefix  # the user may use it, not the queue

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue="denied-queue")
        async def handle(self, body: Any, message: Message) -> None:
            raise AssertionError("never called")

    async def start() -> None:
        async with running(Worker, config=rabbitmq.config(amqp_uri=limited_uri)):
            raise AssertionError("started")

    error = await _raised(start)
    await _rabbit.delete(exchanges=[exchange])
    assert isinstance(error, ResourceRefused)
    assert isinstance(error, ConfigurationError)
    assert "access to queue 'denied-queue'" in str(error)
    assert not retried.event.is_set()
