"""RPC failures by kind, declared errors re-raised as themselves, and safe error replies,
on memory:// and RabbitMQ, on both backends."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import farine.exceptions
import farine.rpc
from farine._broker import QueueSpec, Topology
from farine._broker.interface import Outgoing
from farine._broker.message import Properties
from farine._connections import get_connection
from farine.rpc._protocol import decode_reply, encode_error, error_from_reply
from tests.amqp import _rabbit
from tests.amqp._proxy import TcpProxy
from tests.amqp.conftest import Broker, Recorder, instance_of
from tests.amqp.test_rpc import serve, unique

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from tests.amqp.conftest import LogWatcher

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]


class Shortage(msgspec.Struct):
    item: str
    left: int


class ShelfEmpty(Exception):
    """A declared error whose fields travel as its args."""

    def __init__(self, item: str, left: int) -> None:
        super().__init__(item, left)
        self.item = item
        self.left = left


class ShelfShortage(Exception):
    """A declared error whose payload is a msgspec Struct."""

    def __init__(self, shortage: Shortage) -> None:
        super().__init__(shortage)
        self.shortage = shortage


@farine.rpc.register_error
class ShelfUndeclared(Exception):
    """Registered by the caller, but not declared by the method: not rebuilt."""


class Shelf:
    def __init__(self) -> None:
        self.ran = Recorder()

    @farine.rpc.method(errors=(ShelfEmpty, ShelfShortage))
    def take(self, item: str, how: str) -> int:
        self.ran.add("take")
        if how == "args":
            raise ShelfEmpty(item, 0)
        if how == "struct":
            raise ShelfShortage(Shortage(item, 0))
        if how == "undeclared":
            raise ShelfUndeclared(item)
        if how == "path":
            with open(f"/nonexistent/farine-secret/{item}.txt", encoding="utf-8"):
                pass
        if how == "lines":
            raise ValueError(f"cannot read /srv/app/{item}/config.ini\nsecond line")
        return 1

    @farine.rpc.method()
    async def stall(self) -> None:
        await anyio.sleep(60)

    def undecorated(self) -> None:
        self.ran.add("undecorated")

    def _private(self) -> None:
        self.ran.add("_private")


def test_every_kind_is_an_rpc_error_exported_twice() -> None:
    for name in (
        "RPCTimeout",
        "UnknownService",
        "MethodNotFound",
        "RemoteError",
        "ServiceUnavailable",
    ):
        kind = getattr(farine.rpc, name)
        assert kind is getattr(farine.exceptions, name)
        assert issubclass(kind, farine.rpc.RPCError)


async def test_each_failure_raises_its_kind(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    name = svc.__name__
    async with serve(svc, broker=broker), farine.rpc.Client(name, timeout=30) as rpc:
        with pytest.raises(farine.rpc.RPCTimeout, match=r"no reply within 0\.3s"):
            await rpc.stall(__timeout__=0.3)
        with pytest.raises(farine.rpc.RemoteError, match="ShelfUndeclared: pear") as info:
            await rpc.take("pear", "undeclared")
        assert info.value.remote_type == "ShelfUndeclared"
        # Both not-found errors come at once, not at the 30 s deadline.
        with anyio.fail_after(1), pytest.raises(farine.rpc.MethodNotFound, match="no such method"):
            await rpc.restock()
        nobody = broker.exchange("nobody")  # the caller declares it: cleaned up after
        async with farine.rpc.Client(nobody, timeout=30) as other:
            with anyio.fail_after(1), pytest.raises(farine.rpc.UnknownService, match=nobody):
                await other.anything()
    # The server stopped: its exchange and queues stay, but nothing serves it.
    async with farine.rpc.Client(name, timeout=30) as rpc:
        with anyio.fail_after(1), pytest.raises(farine.rpc.UnknownService):
            await rpc.restock()


async def test_method_names_resolve_only_to_decorated_methods(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    name = svc.__name__
    async with serve(svc, broker=broker) as runtime:
        instance = instance_of(runtime, name, Shelf)
        async with farine.rpc.Client(name, timeout=30) as rpc:
            for method in ("__init__", "_private", "undecorated", "x" * 1024):
                with anyio.fail_after(1), pytest.raises(farine.rpc.MethodNotFound):
                    await rpc.call(method)
            # Even a request published by hand with such a routing key reaches nothing.
            connection = await get_connection(broker.settings(runtime, name))
            for method in ("__init__", "_private", "undecorated"):
                with pytest.raises(farine.exceptions.FarineError, match=r"unroutable|no queue"):
                    await connection.publish(
                        Outgoing(name, f"{name}__{method}", b'{"args": []}', Properties())
                    )
            assert await rpc.take("plum", "ok") == 1  # the one thing that ran
    assert instance.ran.items == ["take"]


async def test_declared_errors_are_reraised_as_themselves(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    async with serve(svc, broker=broker), farine.rpc.Client(svc.__name__, timeout=30) as rpc:
        with pytest.raises(ShelfEmpty) as empty:
            await rpc.take("pear", "args")
        assert (empty.value.item, empty.value.left) == ("pear", 0)
        assert any("take" in note for note in empty.value.__notes__)
        with pytest.raises(ShelfShortage) as shortage:
            await rpc.take("plum", "struct")
        assert shortage.value.shortage == Shortage("plum", 0)

    def blocking() -> None:
        with pytest.raises(ShelfEmpty) as info:
            farine.rpc.Client(svc.__name__, timeout=30).take("fig", "args")
        assert info.value.item == "fig"

    async with serve(svc, broker=broker):
        await anyio.to_thread.run_sync(blocking)


def test_a_declared_error_whose_args_do_not_fit_is_a_remote_error() -> None:
    reply = encode_error(ShelfEmpty("pear", 0), send_traceback=False, declared=True)
    bad = json.loads(reply)
    bad["error"]["args"] = ["pear", "none"]
    error = error_from_reply(decode_reply(json.dumps(bad).encode()), "shelf.take")
    assert isinstance(error, farine.rpc.RemoteError)
    assert "argument 2: Expected `int`, got `str`" in str(error)
    assert error.remote_type == "ShelfEmpty"


def test_an_error_class_name_is_registered_once() -> None:
    first = type(f"Clash{uuid.uuid4().hex[:6]}", (Exception,), {})
    second = type(first.__name__, (Exception,), {"__module__": "elsewhere"})
    reloaded = type(first.__name__, (Exception,), {})  # its module imported again
    assert farine.rpc.register_error(first) is first
    assert farine.rpc.register_error(first) is first
    with pytest.raises(farine.exceptions.ConfigurationError, match="two RPC error classes"):
        farine.rpc.register_error(second)
    assert farine.rpc.register_error(reloaded) is reloaded


async def test_error_replies_carry_no_traceback_nor_path_by_default(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    async with serve(svc, broker=broker), farine.rpc.Client(svc.__name__, timeout=30) as rpc:
        with pytest.raises(farine.rpc.RemoteError) as missing:
            await rpc.take("pear", "path")
        with pytest.raises(farine.rpc.RemoteError) as lines:
            await rpc.take("pear", "lines")
    assert missing.value.remote_traceback is None
    assert missing.value.remote_type == "FileNotFoundError"
    assert missing.value.remote_message == "No such file or directory"
    assert "/nonexistent" not in str(missing.value)
    assert lines.value.remote_message == "cannot read <path>"
    assert "second line" not in str(lines.value)
    assert "/srv" not in str(lines.value)


async def test_error_replies_carry_the_traceback_when_the_setting_is_on(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    async with (
        serve(svc, broker=broker, rpc_send_traceback="true"),
        farine.rpc.Client(svc.__name__, timeout=30) as rpc,
    ):
        with pytest.raises(farine.rpc.RemoteError) as missing:
            await rpc.take("pear", "path")
    assert missing.value.remote_traceback is not None
    assert "test_rpc_errors.py" in missing.value.remote_traceback
    assert "/nonexistent/farine-secret/pear.txt" in (missing.value.remote_message or "")


async def test_raw_error_reply_is_one_line_without_paths(broker: Broker) -> None:
    svc = unique(Shelf, broker)
    name = svc.__name__
    replies = broker.queue("replies")
    async with serve(svc, broker=broker) as runtime:
        connection = await get_connection(broker.settings(runtime, name))
        consumer = await connection.consume(
            replies,
            prefetch=8,
            topology=Topology(queues=(QueueSpec(replies, durable=False),), bindings=()),
        )
        try:
            body = json.dumps({"args": ["pear", "path"], "kwargs": {}}).encode()
            properties = Properties(reply_to=replies, correlation_id="c1")
            await connection.publish(Outgoing(name, f"{name}__take", body, properties))
            with anyio.fail_after(15):
                message = await consumer.__anext__()
            message.ack()
        finally:
            await consumer.aclose()
    reply: dict[str, Any] = json.loads(message.body)
    assert reply["__except__"] == "FileNotFoundError: No such file or directory"
    assert "nonexistent" not in message.body.decode()
    assert "test_rpc_errors" not in message.body.decode()


@pytest.mark.rabbitmq
async def test_a_call_with_the_broker_gone_is_service_unavailable(
    rabbitmq: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    svc = unique(Shelf, rabbitmq)
    proxy = TcpProxy(5672)
    errors: list[BaseException] = []
    async with anyio.create_task_group() as outer:
        forwarding = anyio.CancelScope()

        async def forward(*, task_status: TaskStatus[None]) -> None:
            with forwarding:
                await proxy.serve(task_status=task_status)

        await outer.start(forward)
        async with serve(svc, broker=rabbitmq, amqp_uri=_rabbit.uri_on_port(proxy.port)):
            rpc = farine.rpc.AsyncClient(svc.__name__, timeout=30)
            assert await rpc.take("plum", "ok") == 1
            lost = watch_log("lost (")
            forwarding.cancel()  # the broker goes away
            await lost.wait()
            try:
                await rpc.take("plum", "ok", __timeout__=0.5)
            except farine.rpc.RPCError as exc:
                errors.append(exc)
    [error] = errors
    assert isinstance(error, farine.rpc.ServiceUnavailable), error
    assert "no connection to the broker within 0.5s" in str(error)
