"""The fast path's channel calls: farine's own frames, written and read without aiormq's
per-call machinery (see `channel`, `reader`, `transport` and `driven`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from farine._broker.aiormq.calls import ChannelCalls
from farine._broker.aiormq.fastpath import channel as internals
from farine._broker.aiormq.fastpath.driven import TrioDriver
from farine._broker.aiormq.fastpath.transport import TcpTransportFactory

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    import aiormq.abc

    from farine._broker.aiormq.hosts import TrioHost
    from farine._broker.aiormq.settler import SettleFrame
    from farine._broker.interface import Outgoing

__all__ = ("FastChannelCalls",)


class FastChannelCalls(ChannelCalls):
    """`ChannelCalls` through aiormq's internals; each call falls back to the stock way
    when the channel lacks what it uses."""

    name: Literal["stock", "fast"] = "fast"

    def connect_arguments(
        self, tls: bool
    ) -> tuple[dict[str, Any], Callable[[aiormq.abc.AbstractConnection], None]]:
        if tls:  # aiormq opens TLS connections itself
            return super().connect_arguments(tls)
        factory = TcpTransportFactory()

        def opened(connection: aiormq.abc.AbstractConnection) -> None:
            if factory.writer is not None:
                internals.register_writer(connection, factory.writer)

        return {"transport_factory": factory}, opened

    def publish(self, channel: aiormq.abc.AbstractChannel, message: Outgoing) -> Awaitable[Any]:
        return internals.publish(
            channel, message.body, message.exchange, message.routing_key,
            message.properties, message.mandatory,
        )  # fmt: skip

    def start_publish(
        self, channel: aiormq.abc.AbstractChannel, message: Outgoing
    ) -> asyncio.Future[Any] | None:
        return internals.start_publish(
            channel, message.body, message.exchange, message.routing_key,
            message.properties, message.mandatory,
        )  # fmt: skip

    def settle(self, channel: aiormq.abc.AbstractChannel, frames: list[SettleFrame]) -> bool:
        return internals.settle(channel, frames)

    def deliver(
        self,
        channel: aiormq.abc.AbstractChannel,
        on_message: Callable[[aiormq.abc.DeliveredMessage], None],
    ) -> aiormq.abc.ConsumerCallback:
        return internals.deliver(channel, on_message)

    def take_confirms(self, channel: aiormq.abc.AbstractChannel) -> None:
        internals.take_channel_frames(channel)

    def trio_driver(self) -> TrioHost:
        return TrioDriver()
