"""Run service classes in-process for a test, and the app handle a test drives them with."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import TYPE_CHECKING, Any

from farine import settings as farine_settings
from farine._broker import is_memory
from farine._broker.interface import Outgoing
from farine._broker.memory import drop_broker, get_broker
from farine._broker.message import Properties
from farine._connections import get_connection
from farine._serve import definitions_of, serving
from farine.codec import encode_body
from farine.exceptions import ConfigurationError
from farine.rpc import AsyncClient
from farine.settings import Config

from ._broker import BrokerView
from ._calls import CallLog, CallRecord

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    import httpx

    from farine.entrypoints import ServiceContext
    from farine.runtime import Runtime

__all__ = ("App", "running")


class App:
    """A running set of services, as a test drives and observes them.

    Yielded by `running()`; every method is called from the test's task (the event
    loop the services run on).

    Attributes:
        runtime: The `farine.runtime.Runtime` running the services.
        config: The configuration in use (current for the block).
        broker: A view of the `memory://` broker the services use, or None on RabbitMQ.
    """

    def __init__(
        self, runtime: Runtime, config: Config, calls: CallLog, broker: BrokerView | None
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.broker = broker
        self._calls = calls

    def instance(self, service: str) -> Any:
        """The running instance of `service` (its lowercase class name).

        Raises:
            ConfigurationError: No such service is running.
        """
        context = self.runtime.services.get(service)
        if context is None:
            running = ", ".join(self.runtime.services) or "none"
            raise ConfigurationError(f"no service {service!r} is running (running: {running})")
        return context.instance

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: object,
        *,
        headers: Mapping[str, Any] | None = None,
        **properties: Any,
    ) -> None:
        """Publish `body` to `exchange` with `routing_key`, and wait for the broker's
        confirm.

        The exchange is not declared (the consumer under test declares it), and the
        message is mandatory: one that no queue receives raises `UnroutableError`.

        Args:
            exchange: The exchange (`""`: the default exchange, `routing_key` names a
                queue).
            routing_key: The routing key.
            body: The body, as a publisher sends it: `bytes` as they are, labelled
                `application/data` (pass `content_type` for already-encoded data),
                anything else encoded as the services' `serializer` says (JSON).
            headers: Application headers.
            **properties: AMQP properties (`content_type`, `correlation_id`,
                `reply_to`, `message_id`, `expiration` in seconds, `delivery_mode`,
                `priority`, ...). By default the content type is the serializer's
                (`application/data` for bytes), the delivery mode the `delivery_mode`
                setting's, and `message_id` random.

        Raises:
            UnroutableError: No queue is bound to receive the message.
            PublishError: The exchange does not exist, or the broker refused it.
        """
        settings = self.config.service("DEFAULT")
        data, content_type, content_encoding = encode_body(body, settings.serializer)
        expiration = properties.pop("expiration", None)
        if isinstance(expiration, int | float):
            expiration = str(max(0, int(expiration * 1000)))
        values: dict[str, Any] = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": settings.delivery_mode,
            "message_id": uuid.uuid4().hex,
            "timestamp": datetime.datetime.now(datetime.UTC).replace(microsecond=0),
            "headers": dict(headers) if headers else None,
            "expiration": expiration,
            **properties,
        }
        connection = await get_connection(settings)
        await connection.publish(
            Outgoing(
                exchange,
                routing_key,
                data,
                Properties(**values),
                mandatory=True,
                timeout=settings.publish_timeout,
            )
        )

    def rpc(self, service: str, timeout: float | None = None) -> AsyncClient:
        """An RPC client of `service` on this configuration: `await app.rpc("calc").add(1, 2)`.

        Args:
            service: The service to call.
            timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
        """
        return AsyncClient(service, timeout, settings=self.config.service(service))

    def calls(self, entrypoint: str) -> list[CallRecord]:
        """The calls of `entrypoint` (`"service.method"`) that finished so far.

        Raises:
            ConfigurationError: No running service has that entrypoint.
        """
        return self._calls.calls(entrypoint)

    async def wait_for(
        self,
        entrypoint: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109  # raises CallsNotSeen, which says what was seen
    ) -> list[CallRecord]:
        """Wait until `entrypoint` has finished `count` calls since the block started.

        A call that raised counts as finished (its record holds the exception); a
        streaming RPC method's call finishes when its stream ends (its `result` is
        None: the items are its caller's to check), and is not recorded when its caller
        stopped it early.

        Args:
            entrypoint: `"service.method"`.
            count: How many calls to wait for.
            timeout: Seconds to wait at most.

        Returns:
            The first `count` calls, in the order they finished.

        Raises:
            CallsNotSeen: Fewer calls finished in time (the message says how many did).
            ConfigurationError: No running service has that entrypoint.

        Example:
            ```python
            await app.publish("orders", "created", {"id": 1})
            [call] = await app.wait_for("orders.created")
            assert call.body == {"id": 1} and call.exception is None
            ```
        """
        return await self._calls.wait_for(entrypoint, count, timeout)


@contextlib.asynccontextmanager
async def running(
    *services: type | str,
    config: str | Config | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[App]:
    """Run `services` on the current event loop; stop them gracefully on exit.

    The block is entered once every entrypoint is ready (consumers consuming, ...), and
    left after a graceful stop: in-flight handler calls finish first. For the block,
    `config` is the current configuration: publishers and RPC clients built inside use
    it. Unless the configuration names a broker (`amqp_uri`), the services get a
    `memory://` broker of their own, so that tests never see each other's messages.

    Args:
        *services: Service classes (classes with decorated methods), or module names
            (`"mymodule"`: the services of `mymodule.service`, as `farine start` finds
            them).
        config: INI text, a loaded `Config`, or None for the current configuration.
        http_transport: The httpx transport SSE listeners connect through (see
            `sse_transport()`); None for the network.

    Yields:
        The running `App`: publish, call, wait for calls, inspect the broker.

    Raises:
        ConfigurationError: A class has no entrypoint, or a module has no service.
        ServiceNotFound: A module does not exist.

    Example:
        ```python
        async with farine.testing.running(Calc, config="[calc]\\nmax_workers = 2\\n") as app:
            assert await app.rpc("calc").add(1, 2) == 3
        ```
    """
    definitions = definitions_of(services)
    if isinstance(config, str):
        config = Config.from_string(config, source="<test config>")
    config = config or farine_settings.current()
    own_broker = not config.sets("amqp_uri")
    if own_broker:
        config = config.with_defaults(amqp_uri=f"memory://farine-testing-{uuid.uuid4().hex}")
    log = CallLog({f"{d.name}.{attr}" for d in definitions for attr, _ in d.entrypoints})

    def prepare(service: ServiceContext) -> None:
        service.observer = log
        service.http_transport = http_transport

    uri = config.service("DEFAULT").amqp_uri
    memory = get_broker(uri) if is_memory(uri) else None
    view = BrokerView(memory) if memory is not None else None
    # A broker the configuration names may be shared with other code: what it
    # dead-letters is kept during the block only.
    kept = memory.dead_letters if memory is not None else None
    if memory is not None and kept is None:
        memory.dead_letters = []
    try:
        async with serving(definitions, config, prepare_service=prepare) as runtime:
            yield App(runtime, config, log, view)
    finally:
        if own_broker:
            drop_broker(uri)  # the view still shows it, after the block too
        elif memory is not None and kept is None:
            memory.dead_letters = None
