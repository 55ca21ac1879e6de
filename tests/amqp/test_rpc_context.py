"""`farine.rpc.context()`: headers and deadlines that follow nested calls, on memory://
and RabbitMQ, on both backends."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.rpc
from tests.amqp.conftest import Recorder
from tests.amqp.test_rpc import serve

if TYPE_CHECKING:
    from tests.amqp.conftest import Broker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]


def names(broker: Broker, *roles: str) -> list[str]:
    """Unique service names; their exchanges and queues are cleaned up after the test."""
    found: list[str] = []
    for role in roles:
        name = f"{role}{uuid.uuid4().hex[:8]}"
        broker.exchanges.append(name)
        found.append(name)
    return found


def test_context_outside_a_method_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="only available inside an RPC method"):
        farine.rpc.context()


def test_headers_must_map_strings_to_strings() -> None:
    with pytest.raises(TypeError, match="strings to strings"):
        farine.rpc.Client("anything", headers={"user": 7})  # pyright: ignore[reportArgumentType, reportCallIssue]


async def test_headers_are_passed_on_two_levels(broker: Broker) -> None:
    front, middle, back = names(broker, "front", "middle", "back")
    seen = Recorder()

    class Back:
        @farine.rpc.method()
        async def whoami(self) -> dict[str, Any]:
            ctx = farine.rpc.context()
            seen.add(("back", ctx.service, ctx.method, ctx.correlation_id))
            return dict(ctx.headers)

    class Middle:
        @farine.rpc.method()
        @farine.rpc.client(back)
        def whoami(self, rpc: farine.rpc.Client) -> dict[str, Any]:
            # A `def` method (a worker thread), with the blocking client.
            seen.add(("middle", dict(farine.rpc.context().headers)))
            return rpc.whoami()

    class Front:
        @farine.rpc.method()
        @farine.rpc.client(middle)
        async def whoami(self, rpc: farine.rpc.AsyncClient) -> dict[str, Any]:
            return await rpc.with_headers({"user": "7", "tenant": "ignored"}).whoami()

    services = [
        type(name, (cls,), {})
        for name, cls in zip((front, middle, back), (Front, Middle, Back), strict=True)
    ]
    broker.queues.extend(f"{name}__whoami" for name in (front, middle, back))
    async with serve(*services, broker=broker):
        rpc = farine.rpc.AsyncClient(front, timeout=30).with_headers({"tenant": "acme"})
        assert await rpc.whoami() == {"tenant": "ignored", "user": "7"}
        rpc = farine.rpc.AsyncClient(front, timeout=30, headers={"request": "r1"})
        assert await rpc.whoami() == {"request": "r1", "user": "7", "tenant": "ignored"}
    assert seen.items[0] == ("middle", {"tenant": "ignored", "user": "7"})
    _, service, method, correlation_id = seen.items[1]
    assert (service, method) == (back, "whoami")
    assert correlation_id


async def test_a_nested_call_times_out_at_its_callers_deadline(broker: Broker) -> None:
    front, middle, back = names(broker, "front", "middle", "back")
    seen = Recorder()

    class Back:
        @farine.rpc.method()
        async def stall(self) -> None:
            seen.add(("back deadline", farine.rpc.context().deadline))
            await anyio.sleep(60)

    class Middle:
        @farine.rpc.method()
        @farine.rpc.client(back, timeout=30)
        def stall(self, rpc: farine.rpc.Client) -> None:
            # A `def` method runs to its end: its own call ends at its caller's deadline.
            try:
                rpc.stall()
            except farine.rpc.RPCError as exc:
                seen.add(("middle", type(exc).__name__, str(exc)))

    class Front:
        @farine.rpc.method()
        @farine.rpc.client(middle, timeout=30)
        async def stall(self, rpc: farine.rpc.AsyncClient) -> None:
            seen.add(("front deadline", farine.rpc.context().deadline))
            await rpc.stall()

    services = [
        type(name, (cls,), {})
        for name, cls in zip((front, middle, back), (Front, Middle, Back), strict=True)
    ]
    broker.queues.extend(f"{name}__stall" for name in (front, middle, back))
    async with serve(*services, broker=broker):
        with pytest.raises(farine.rpc.RPCTimeout):
            await farine.rpc.AsyncClient(front, timeout=30).stall(__timeout__=1.5)
        # Not the 30 s of the nested clients.
        found = {item[0]: item[1:] for item in await seen.wait_for(3, seconds=10)}
    (front_deadline,) = found["front deadline"]
    (back_deadline,) = found["back deadline"]
    assert front_deadline is not None
    # The nested call's timeout is the time left when it is made; its deadline is then
    # set as it is sent, a little later on a loaded machine.
    assert back_deadline == pytest.approx(front_deadline, abs=0.5)
    kind, message = found["middle"]
    assert kind == "RPCTimeout"
    # Its deadline was what was left of its caller's 1.5 s, not its own 30 s.
    limit = re.search(r"no reply within ([0-9.]+)s", message)
    assert limit is not None, message
    assert float(limit.group(1)) < 1.5
