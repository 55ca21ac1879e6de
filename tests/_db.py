"""Database fixtures shared by the tests (registered in `tests/conftest.py`).

`pg_database` is one throwaway PostgreSQL database per test session (others share the
server); `db_settings` parametrises a test over SQLite and PostgreSQL and gives the
`db_*` lines of an INI file for a fresh database holding the tables of `tests.sqlapp`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

import peewee
import pytest

import farine.connectors.sql as sql
from farine.connectors.sql._database import close as sql_close
from farine.settings import Config
from tests.sqlapp.models import Payment, Person

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def postgres(dbname: str) -> peewee.PostgresqlDatabase:
    """A plain connection for the tests' own statements (autocommit, as peewee runs)."""
    return peewee.PostgresqlDatabase(
        dbname, host="127.0.0.1", port=5432, user="postgres", connect_timeout=3
    )


def rows(db: peewee.Database, statement: str) -> list[tuple[Any, ...]]:
    """Run `statement` and return its rows (none for a statement without results)."""
    # peewee's stubs leave the DB-API cursor untyped.
    cursor = cast(Any, db.execute_sql(statement))  # pyright: ignore[reportUnknownMemberType]
    found = cast(list[tuple[Any, ...]], cursor.fetchall()) if cursor.description else []
    return list(found)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session (others share the server)."""
    admin = postgres("test")
    try:
        admin.connect()
    except peewee.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at 127.0.0.1:5432: {' '.join(str(exc).split())}")
    name = f"farine_sql_{uuid.uuid4().hex[:12]}"
    rows(admin, f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        rows(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The `db_*` lines of an INI file, for a fresh database with the app's tables."""
    if request.param == "sqlite":
        lines = f"db_connector = sqlite\ndb_name = {tmp_path / 'app.sqlite'}\n"
    else:
        request.applymarker(pytest.mark.postgres)
        name = cast(str, request.getfixturevalue("pg_database"))
        lines = (
            "db_connector = postgres\n"
            f"db_name = {name}\ndb_user = postgres\ndb_host = 127.0.0.1\ndb_port = 5432\n"
        )
    db = sql.setup(Config.from_string("[DEFAULT]\n" + lines).service("DEFAULT"))
    assert db is not None
    models = [Person, Payment]
    with db.bind_ctx(models), db.connection_context():
        db.create_tables(models)  # pyright: ignore[reportUnknownMemberType]
    try:
        yield lines
    finally:
        with db.bind_ctx(models), db.connection_context():
            db.drop_tables(models)  # pyright: ignore[reportUnknownMemberType]
        sql_close(db)
