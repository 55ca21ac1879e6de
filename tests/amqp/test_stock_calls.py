"""The stock path's calls (`ChannelCalls`): aiormq's documented API, used as it says."""

from __future__ import annotations

from typing import Any, cast

from farine._broker.aiormq.calls import ChannelCalls
from farine._broker.interface import Outgoing
from farine._broker.message import Properties


class RecordingChannel:
    """Records the arguments of `basic_publish()`."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, dict[str, Any]]] = []

    def basic_publish(self, body: bytes, **kwargs: Any) -> str:
        self.calls.append((body, kwargs))
        return "confirm"


def test_a_publish_waits_for_its_confirm_only_not_for_the_writer_to_drain() -> None:
    """The confirm comes after the frames were written: `wait=False` saves the
    publishing task the wake-up that the drain would cost."""
    channel = RecordingChannel()
    message = Outgoing("orders", "placed", b"{}", Properties(message_id="m1"), mandatory=False)
    assert ChannelCalls().publish(cast("Any", channel), message) == "confirm"
    [(body, kwargs)] = channel.calls
    assert body == b"{}"
    assert kwargs["wait"] is False
    assert (kwargs["exchange"], kwargs["routing_key"], kwargs["mandatory"]) == (
        "orders",
        "placed",
        False,
    )
    assert kwargs["properties"].message_id == "m1"
