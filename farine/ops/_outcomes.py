"""How a consumed message ended, as `farine_messages_total` counts it (no dependency)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from farine._broker.message import Message

__all__ = ("MessageOutcome", "outcome_of")

#: How a consumed message ended (the `outcome` label of `farine_messages_total`).
MessageOutcome = Literal["acked", "rejected", "requeued", "retried", "dead_lettered"]


def outcome_of(message: Message) -> MessageOutcome | None:
    """How `message` was settled, as a `farine_messages_total` outcome (None: not yet)."""
    outcome = message.outcome
    if outcome is None:
        return None
    if outcome == "ack":
        return "acked"
    return "requeued" if message.requeued else "rejected"
