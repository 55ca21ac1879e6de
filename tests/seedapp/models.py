"""The seed README's `models.py`, verbatim."""

from __future__ import annotations

from farine.connectors.sql import *  # noqa: F403  # the seed's form: peewee's API + Model
from farine.connectors.sql import CharField, Model


class User(Model):
    name = CharField()
