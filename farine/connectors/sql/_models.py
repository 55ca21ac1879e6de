"""Find the models of `<module>.models`, bind them to a database, create their tables."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

import peewee

from farine import settings as farine_settings
from farine.exceptions import ConfigurationError, ServiceNotFound, SettingsError

from ._database import check_connection, close, database_key, describe, setup
from ._inbox import Inbox
from ._model import Model

if TYPE_CHECKING:
    from farine.settings import ServiceSettings

__all__ = ("find_models", "init", "migrate")

logger = logging.getLogger("farine.connectors.sql")


def find_models(module: str, *, required: bool = False) -> list[type[peewee.Model]]:
    """Import `<module>.models` and return the models it defines, in definition order.

    Models imported into it from elsewhere (and farine's `Model` base) are left out.

    Args:
        module: The user's package (`mymodule`).
        required: Raise when `<module>.models` does not exist, instead of returning [].

    Raises:
        ConfigurationError: `required` and there is no `<module>.models`.
    """
    target = f"{module}.models"
    try:
        mod = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        # Only a missing target means "no models"; an import failing inside the user's
        # models.py is their bug and keeps its traceback.
        missing = exc.name or ""
        if not (missing and (target == missing or target.startswith(missing + "."))):
            raise
        if required:
            raise ConfigurationError(
                f"no module named {target!r} (is {module!r} importable from here?)"
            ) from None
        return []
    return [
        value
        for value in vars(mod).values()
        if isinstance(value, type)
        and issubclass(value, peewee.Model)
        and value.__module__ == mod.__name__
        and value is not Model
    ]


def init(module: str, db: peewee.Database) -> list[type[peewee.Model]]:
    """Bind the models of `<module>.models` to `db` and return them.

    Binding is process-wide (it sets each model's database). Tables are not created:
    that is `migrate()`'s job.

    Args:
        module: The user's package (`mymodule`).
        db: The database, as built by `setup()`.

    Returns:
        The models, in definition order (empty when there is no `<module>.models`).
    """
    models = find_models(module)
    # Only these models: binding the models they refer to would re-bind other modules'.
    db.bind(models, bind_refs=False, bind_backrefs=False)
    return models


def migrate(module: str) -> list[type[peewee.Model]]:
    """Create the tables of `<module>.models` that do not exist yet (`farine migrate`).

    The database settings are those of the section named `module` when the file has
    one (as in baguette-messaging), else those of the module's services when they
    configure a database, else `[DEFAULT]`. When a service of the module has an
    idempotent consumer (`consume(idempotent=True)`), the inbox table `farine_inbox` is
    created too. Running it again changes nothing.

    Args:
        module: The user's package (`mymodule`); it must be importable.

    Returns:
        The models whose tables now exist.

    Raises:
        SettingsError: No database is configured, or a `db_*` value is wrong.
        ConfigurationError: No `<module>.models`, or the database refused to connect.
    """
    service_settings = _settings_for(module)
    db = setup(service_settings)
    if db is None:
        raise SettingsError(
            f"{service_settings.source}: no db_connector for {module!r} "
            f"(looked in [{module}], the module's services and [DEFAULT])"
        )
    inbox = _has_idempotent_consumer(module)
    models = find_models(module, required=not inbox)
    try:
        check_connection(db, service_settings)
        db.bind(models, bind_refs=False, bind_backrefs=False)
        with db.connection_context():
            existed = set(db.get_tables())  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            # safe=True is CREATE TABLE IF NOT EXISTS: a second run changes nothing.
            db.create_tables(models, safe=True)  # pyright: ignore[reportUnknownMemberType]
            if inbox:
                # Bound for this call only: services bind nothing to the inbox model.
                with db.bind_ctx([Inbox]):
                    db.create_tables([Inbox], safe=True)  # pyright: ignore[reportUnknownMemberType]
                models.append(Inbox)
    finally:
        close(db)
    names: list[str] = [model._meta.table_name for model in models]  # pyright: ignore[reportPrivateUsage]
    created = [name for name in names if name not in existed]
    kept = [name for name in names if name in existed]
    if not created:
        outcome = (
            f"nothing changed: tables {', '.join(kept)} already exist" if kept else "no models"
        )
    else:
        outcome = f"tables {', '.join(created)} created"
        if kept:
            outcome += f"; {', '.join(kept)} already existed"
    logger.info("migrated %s on %s: %s", module, describe(service_settings), outcome)
    return models


def _has_idempotent_consumer(module: str) -> bool:
    from farine.discovery import discover

    try:
        services = discover(module)
    except ServiceNotFound:
        return False
    return any(
        getattr(spec, "idempotent", False) is True
        for service in services
        for _, spec in service.entrypoints
    )


def _settings_for(module: str) -> ServiceSettings:
    config = farine_settings.current()
    if module in config.sections():
        return config.service(module)
    from farine.discovery import discover

    try:
        services = discover(module)
    except ServiceNotFound:
        services = []
    configured = [
        config.service(service.name)
        for service in services
        if config.service(service.name).db_connector
    ]
    if len({database_key(item) for item in configured}) > 1:
        names = ", ".join(item.name for item in configured)
        raise SettingsError(
            f"{config.source}: the services of {module!r} ({names}) configure different "
            f"databases; add a [{module}] section with the db_* keys to migrate"
        )
    return configured[0] if configured else config.service("DEFAULT")
