"""The app's own table, beside farine's inbox."""

from __future__ import annotations

from farine.connectors.sql import CharField, Model


class Order(Model):
    ref = CharField()
