"""Models as a user writes them (the seed README's form)."""

from __future__ import annotations

from farine.connectors.sql import *  # noqa: F403  # the documented way to write models.py
from farine.connectors.sql import CharField, DateTimeField, DecimalField, Model, UUIDField


class Person(Model):
    """The seed's `User`: a name."""

    name = CharField()


class Payment(Model):
    """A row with values JSON has no type for (datetime, Decimal, UUID)."""

    when = DateTimeField()
    amount = DecimalField(max_digits=10, decimal_places=2)
    ref = UUIDField()
