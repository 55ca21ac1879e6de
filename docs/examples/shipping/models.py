"""The shipping service's table (`farine migrate shipping` creates it, and the inbox)."""

from __future__ import annotations

from farine.connectors.sql import CharField, Model


class Shipment(Model):
    order = CharField(unique=True)
