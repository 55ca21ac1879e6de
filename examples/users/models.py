"""The models of the `users` service, written as in the seed README."""

from __future__ import annotations

from farine.connectors.sql import *  # noqa: F403  # the seed's form: peewee's API + Model
from farine.connectors.sql import CharField, Model


class User(Model):
    """A user: just a name."""

    name = CharField()
