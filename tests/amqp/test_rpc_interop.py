"""Wire compatibility with baguette-messaging, both ways, on RabbitMQ.

The seed's side is played with raw aiormq (tests/amqp/_rabbit.py): its requests carry
no farine header, and its servers reply without the folded end marker or typed errors.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.rpc
from farine import settings
from farine.discovery import find_entrypoints
from farine.exceptions import RPCError
from tests.amqp import _rabbit
from tests.amqp.conftest import running

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.amqp.conftest import Broker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("close_script_loop"),
]


def unique_name(broker: Broker, methods: list[str]) -> str:
    """A service name of this test; its exchange and queues are cleaned up after."""
    name = f"seed{uuid.uuid4().hex[:10]}"
    broker.exchanges.append(name)
    broker.queues.extend(f"{name}__{method}" for method in methods)
    return name


# -- a seed client calls a farine server ---------------------------------------------------


class Server:
    """The seed README's RPC and RPC-stream servers, and a failing method."""

    @farine.rpc.method()
    def dummy(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @farine.rpc.method()
    def echo(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": args, "kwargs": kwargs}

    @farine.rpc.method()
    def letters(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        yield "a"
        yield "b"

    @farine.rpc.method()
    def broken(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("x")


def request(*args: Any, **kwargs: Any) -> bytes:
    return json.dumps({"args": args, "kwargs": kwargs}).encode()


@pytest.mark.parametrize("send_traceback", [False, True])
async def test_seed_request_is_answered_in_seed_format(
    rabbitmq: Broker, *, send_traceback: bool
) -> None:
    methods = [attr for attr, _ in find_entrypoints(Server)]
    service = type(unique_name(rabbitmq, methods), (Server,), {})
    name = service.__name__
    config = rabbitmq.config(rpc_send_traceback=str(send_traceback).lower())
    async with running(service, config=config):
        with anyio.fail_after(30):
            assert await _rabbit.seed_call(name, "dummy", request()) == [
                {"body": True, "__end__": False},
                {"__end__": True},
            ]
            assert await _rabbit.seed_call(name, "echo", request(1, "a", k=[1])) == [
                {"body": {"args": [1, "a"], "kwargs": {"k": [1]}}, "__end__": False},
                {"__end__": True},
            ]
            assert await _rabbit.seed_call(name, "letters", request()) == [
                {"body": "a", "__end__": False},
                {"body": "b", "__end__": False},
                {"__end__": True},
            ]
            [error] = await _rabbit.seed_call(name, "broken", request())
    assert set(error) <= {"__except__", "error"}
    text = error["__except__"]
    if send_traceback:
        assert text.startswith("Traceback (most recent call last):\n")
        assert 'raise ValueError("x")' in text
        assert text.rstrip().endswith("ValueError: x")
    else:  # the seed's field, with a summary a seed client shows as it is
        assert text == "ValueError: x"
    assert error.get("error", {"type": "ValueError", "message": "x"}) == {
        "type": "ValueError",
        "message": "x",
    }


# -- a farine client calls a seed server ---------------------------------------------------

SEED_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/legacy/service.py", line 12, in broken\n'
    "    raise ValueError('x')\n"
    "ValueError: x\n"
)


def seed_methods() -> dict[str, Any]:
    def echo(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"body": request, "__end__": False}, {"__end__": True}]

    def letters(_: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"body": "a", "__end__": False},
            {"body": "b", "__end__": False},
            {"__end__": True},
        ]

    def broken(_: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"__except__": SEED_TRACEBACK}]

    def broken_midstream(_: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"body": "a", "__end__": False}, {"__except__": SEED_TRACEBACK}]

    return {
        "echo": echo,
        "letters": letters,
        "broken": broken,
        "broken_midstream": broken_midstream,
    }


async def test_farine_client_reads_a_seed_servers_replies(rabbitmq: Broker) -> None:
    methods = seed_methods()
    name = unique_name(rabbitmq, list(methods))
    settings.use(rabbitmq.config())
    async with _rabbit.seed_server(name, methods) as requests:
        with anyio.fail_after(30):
            async with farine.rpc.Client(name, timeout=10) as rpc:
                assert await rpc.echo(1, "a", k=2) == {"args": [1, "a"], "kwargs": {"k": 2}}
                assert [item async for item in rpc.letters(__stream__=True)] == ["a", "b"]
                with pytest.raises(RPCError) as info:
                    await rpc.broken()
                stream = rpc.broken_midstream(__stream__=True)
                assert await stream.__anext__() == "a"
                with pytest.raises(RPCError, match="ValueError: x"):
                    await stream.__anext__()
            # The blocking client, as the seed README's RPC-stream client uses it.
            blocking = farine.rpc.Client(name, timeout=10)
            assert await anyio.to_thread.run_sync(
                lambda: list(blocking.letters(__stream__=True))
            ) == ["a", "b"]
    # The seed's request format; the client's own flags are not sent.
    assert requests[0] == {"args": [1, "a"], "kwargs": {"k": 2}}
    assert all(request == {"args": [], "kwargs": {}} for request in requests[1:])
    error = info.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "x"
    assert error.remote_traceback == SEED_TRACEBACK
    assert str(error) == f"{name}.broken failed: ValueError: x"


async def test_a_seed_server_replying_through_its_exchange_is_called_as_a_legacy_server(
    rabbitmq: Broker,
) -> None:
    methods = seed_methods()
    name = unique_name(rabbitmq, list(methods))
    # baguette-messaging 0.19's server publishes its replies to its own exchange.
    async with _rabbit.seed_server(name, methods, reply_exchange=name) as requests:
        with anyio.fail_after(30):
            settings.use(rabbitmq.config())
            async with farine.rpc.Client(name, timeout=1) as rpc:
                # Direct reply-to cannot receive them: the call runs, its reply is lost.
                with pytest.raises(RPCError, match="timeout"):
                    await rpc.echo(0)
            settings.use(rabbitmq.config(rpc_legacy_servers=f"other, {name}"))
            async with farine.rpc.Client(name, timeout=10) as rpc:
                assert await rpc.echo(1, k=2) == {"args": [1], "kwargs": {"k": 2}}
                assert [item async for item in rpc.letters(__stream__=True)] == ["a", "b"]
                with pytest.raises(RPCError, match="ValueError: x"):
                    await rpc.broken()
            blocking = farine.rpc.Client(name, timeout=10)
            assert await anyio.to_thread.run_sync(
                lambda: list(blocking.letters(__stream__=True))
            ) == ["a", "b"]
    assert requests[:2] == [{"args": [0], "kwargs": {}}, {"args": [1], "kwargs": {"k": 2}}]
