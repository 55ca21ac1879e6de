"""The SQL connector as a service extension (the `sql` entry point of `farine.extensions`).

Kept apart from `farine.connectors.sql` so that loading it imports no peewee: a service
whose settings name no database never loads the connector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from farine.extensions import ServiceExtension

if TYPE_CHECKING:
    from farine.entrypoints import ServiceContext
    from farine.settings import ServiceSettings

__all__ = ("sql",)


def _wants_database(settings: ServiceSettings) -> bool:
    return bool(settings.db_connector)


async def _attach_database(service: ServiceContext) -> None:
    from farine.connectors.sql._service import attach_database

    await attach_database(service)


sql = ServiceExtension("sql", _wants_database, _attach_database)
