"""The aiormq broker: `amqp://` and `amqps://` through aiormq."""

from __future__ import annotations
