"""The shop's models (`farine migrate shop` creates their tables)."""

from __future__ import annotations

from farine.connectors.sql import CharField, IntegerField, Model


class Item(Model):
    name = CharField(unique=True)
    quantity = IntegerField(default=0)
