# pyright: basic
# (basic, not strict: the seed README's examples are untyped on purpose, and that they
# work untyped — bodies as dicts, data as dict or raw string — is what is tested here.)
"""Every example of baguette-messaging's README, as written (in Python 3), on both backends.

The classes are the README's, in its order: AMQP publisher and consumer, RPC server and
client, RPC stream, HTTP stream, execute method, Database, Overview, Configuration.
Changes are only those Python 3 or a test needs (consumers' calls are observed with
`farine.testing`'s `wait_for()`, not by changing them): `print` replaced by collecting,
`return` added where the README assigns a result and drops it, and the RPC server named
as its client calls it (the README calls `myotherservice` a class named `Server`). They
run on the in-process `memory://` broker, the SSE test server and SQLite. Methods decorated only
with `publish` or `rpc.client` are not entrypoints: as in the seed's own tests, a plain
script calls them (here a worker thread, blocking).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.amqp
import farine.execute
import farine.rpc
import farine.stream
import farine.testing
from farine import settings
from farine._broker import get_broker
from farine.connectors.sql import migrate
from farine.discovery import discover
from farine.rpc._blocking_client import ScriptLoop
from farine.runtime import Runtime
from farine.settings import Config
from tests._sse_server import Reply, serve_sse
from tests.amqp.conftest import Recorder, running
from tests.seedapp.models import User

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture
def uri() -> str:
    return f"memory://seed-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def config(uri: str) -> Iterator[Config]:
    """A memory broker of the test's own; plain-script helpers use the same settings."""
    found = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\nshutdown_timeout = 5\n")
    settings.use(found)
    yield found
    ScriptLoop.close()  # the loop behind blocking helpers called from plain threads


# -- AMQP ----------------------------------------------------------------------------


async def test_amqp_publisher(config: Config) -> None:
    class Publish(object):  # noqa: UP004  # as the README writes it
        @farine.amqp.publish(exchange="consume", routing_key="routing_key")
        def publish_dummy(self, publish):
            """
            :param publish: Send the data through AMQP.
            :type publish: farine.amqp.publisher.Publisher
            """
            publish({"result": 0})

    class Listener:  # the test's ear on the exchange `consume`
        @farine.amqp.consume(exchange="consume", routing_key="routing_key")
        async def heard(self, body, message):
            pass

    async with farine.testing.running(Listener, config=config) as app:
        with anyio.fail_after(15):
            await anyio.to_thread.run_sync(Publish().publish_dummy)
        [call] = await app.wait_for("listener.heard")
    assert call.body == {"result": 0}


async def test_amqp_consumer(config: Config, uri: str) -> None:
    class Consume(object):  # noqa: UP004
        @farine.amqp.consume(exchange="publish", routing_key="routing_key")
        def consume_dummy(self, body, message):
            """
            :param body: The message's data.
            :type body: dict
            :param message: Message class.
            :type message: kombu.message.Message
            """
            message.ack()

    async with farine.testing.running(Consume, config=config) as app:
        await farine.amqp.AsyncPublisher("publish", "routing_key")({"result": 0})
        [call] = await app.wait_for("consume.consume_dummy")
    assert call.body == {"result": 0}
    assert call.message is not None
    assert call.message.outcome == "ack"
    broker = get_broker(uri)
    # The queue is named after the routing key, as baguette-messaging 0.19 named it.
    assert broker.has_queue("routing_key")
    assert not broker.has_queue("consume")
    assert broker.message_count("routing_key") == 0


async def test_the_seed_queue_name_argument_is_ignored_as_the_seed_ignored_it(
    config: Config, uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Consume(object):  # noqa: UP004
        @farine.amqp.consume(
            exchange="publish", routing_key="routing_key", queue_name="dummy_queue"
        )
        def consume_dummy(self, body, message):
            pass

    async with farine.testing.running(Consume, config=config) as app:
        await farine.amqp.AsyncPublisher("publish", "routing_key")({"result": 0})
        [call] = await app.wait_for("consume.consume_dummy")
    assert call.body == {"result": 0}
    assert get_broker(uri).has_queue("routing_key")
    assert not get_broker(uri).has_queue("dummy_queue")
    assert "queue_name='dummy_queue' is ignored" in caplog.text


async def test_a_consumer_without_routing_key_binds_its_service_name(
    config: Config, uri: str
) -> None:
    class Defkey:
        @farine.amqp.consume()
        def handle(self, body, message):
            pass

    async with farine.testing.running(Defkey, config=config) as app:
        # What a seed publisher with no exchange nor routing key sends: both the service.
        await farine.amqp.AsyncPublisher("defkey", "defkey")({"n": 1})  # mandatory
        [call] = await app.wait_for("defkey.handle")
    assert call.message is not None
    assert (call.body, call.message.exchange, call.message.routing_key) == (
        {"n": 1},
        "defkey",
        "defkey",
    )
    assert get_broker(uri).has_queue("defkey")


# -- RPC -----------------------------------------------------------------------------


async def test_rpc_server_and_client(config: Config) -> None:
    class MyOtherService(object):  # noqa: UP004  # the README's `Server`
        @farine.rpc.method()
        def dummy(self, *args, **kwargs):
            return True

    class Client(object):  # noqa: UP004
        @farine.rpc.client("myotherservice")
        def dummy(self, rpc):
            """
            :param rpc: The RPC client.
            :type rpc: farine.rpc.client.Client
            """
            result = rpc.dummy()
            return result

    async with running(MyOtherService, config=config):
        with anyio.fail_after(15):
            assert await anyio.to_thread.run_sync(Client().dummy) is True


async def test_rpc_stream(config: Config) -> None:
    class MyOtherService(object):  # noqa: UP004
        @farine.rpc.method()
        def dummy(self, *args, **kwargs):
            yield "a"
            yield "b"

    class Client(object):  # noqa: UP004
        @farine.rpc.client("myotherservice")
        def dummy(self, rpc):
            """
            :param rpc: The RPC client.
            :type rpc: farine.rpc.client.Client
            """
            results = []
            for result in rpc.dummy(__stream__=True):
                results.append(result)  # noqa: PERF402  # the README's loop (it printed)
            return results

    async with running(MyOtherService, config=config):
        with anyio.fail_after(15):
            assert await anyio.to_thread.run_sync(Client().dummy) == ["a", "b"]


# -- HTTP stream ---------------------------------------------------------------------


def sse_events(*data: str) -> str:
    return "".join(f"data: {text}\n\n" for text in data)


@pytest.fixture
async def stream_config(uri: str) -> AsyncIterator[Config]:
    """The README's configuration of an HTTP stream: `endpoint` in the service's section."""
    body = sse_events('{"price": 1}', "plain text", '{"price": 2}')
    async with serve_sse([Reply(body)]) as server:
        text = f"[DEFAULT]\namqp_uri = {uri}\n[client]\nendpoint = {server.url()}\n"
        found = Config.from_string(text)
        settings.use(found)
        yield found
        ScriptLoop.close()


async def test_http_stream(stream_config: Config) -> None:
    seen = Recorder()

    class Client(object):  # noqa: UP004
        @farine.stream.http()
        def listen_event(self, data):
            """
            :param data: The event sent.
            :type data: dict
            """
            seen.add(data)
            return True

    async with running(Client, config=stream_config):
        # A JSON object arrives as a dict; data that is not JSON as the raw string.
        assert await seen.wait_for(3) == [{"price": 1}, "plain text", {"price": 2}]


# -- execute -------------------------------------------------------------------------


async def test_execute_method(config: Config) -> None:
    runs = Recorder()

    class Client(object):  # noqa: UP004
        @farine.execute.method()
        def my_own_stuff(self):
            """
            Your own code.
            """
            runs.add("ran")

    async with running(Client, config=config):
        ran = await runs.wait_for(3)  # restarted each time it ends
    assert len(ran) >= 3
    assert set(ran) == {"ran"}


# -- Database ------------------------------------------------------------------------


async def test_database(tmp_path: Path, uri: str) -> None:
    """`tests/seedapp`: the README's models.py and service.py, on SQLite."""
    text = (
        f"[DEFAULT]\namqp_uri = {uri}\nshutdown_timeout = 5\n"
        f"db_connector = sqlite\ndb_name = {tmp_path / 'seed.sqlite'}\n"
    )
    settings.use(Config.from_string(text))
    await anyio.to_thread.run_sync(migrate, "tests.seedapp")
    runtime = Runtime(discover("tests.seedapp"))
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(15):
            await tg.start(runtime.run)
        try:
            ctx = runtime.services["client"]
            await ctx.call(User.create, name="ada")
            await farine.amqp.AsyncPublisher("exchange", "routing_key")({})
            client: Any = ctx.instance
            assert await client.selected.wait_for(1) == [["ada"]]
        finally:
            runtime.stop()


# -- Overview ------------------------------------------------------------------------


async def test_overview(stream_config: Config) -> None:
    processed = Recorder()

    class Client(object):  # noqa: UP004
        @farine.stream.http()
        def get(self, data):
            return self.send(data)

        @farine.rpc.client("myotherservice")
        def send(self, rpc, data):
            return rpc.process(data)

    class MyOtherService:
        @farine.rpc.method()
        def process(self, data):
            processed.add(data)
            return True

    async with running(Client, MyOtherService, config=stream_config):
        assert await processed.wait_for(3) == [{"price": 1}, "plain text", {"price": 2}]


# -- Configuration -------------------------------------------------------------------


def test_configuration() -> None:
    text = """
        [DEFAULT]
        amqp_uri = amqp://baguette:baguette@127.0.0.1:5672/baguette

        [consume]
        enabled = true
    """
    config = Config.from_string("\n".join(line.strip() for line in text.splitlines()))
    consume = config.service("consume")
    assert consume.enabled is True
    assert consume.amqp_uri == "amqp://baguette:baguette@127.0.0.1:5672/baguette"
    assert config.service("other").amqp_uri == consume.amqp_uri  # from [DEFAULT]
