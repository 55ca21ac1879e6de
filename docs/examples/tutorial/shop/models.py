"""The shop's tables (`farine migrate shop` creates them)."""

from __future__ import annotations

from farine.connectors.sql import AutoField, CharField, IntegerField, Model


class OrderRow(Model):
    id = AutoField()
    item = CharField()
    quantity = IntegerField()
    status = CharField(default="placed")
