"""The database connector against real PostgreSQL and SQLite, on both anyio backends.

Handlers are called through `ServiceContext.call()` (what every entrypoint uses) and
through a real execute entrypoint; the RPC layer is not needed for these behaviours.
The user's package is `tests.sqlapp` (its `models.py` and `service.py`).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import peewee
import pytest

import farine.connectors.sql as sql
import farine.testing
from farine.discovery import discover
from farine.exceptions import ConfigurationError, SettingsError
from farine.settings import Config
from tests._db import postgres, rows
from tests.sqlapp.models import Payment, Person
from tests.sqlapp.service import Boom, Recorder, Store

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Iterator

    from farine.entrypoints import ServiceContext

pytestmark = pytest.mark.anyio

APP = "tests.sqlapp"
REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Sup3r-Secret-pa55"


@contextlib.asynccontextmanager
async def running(
    write_config: Callable[[str], Path], text: str, *services: str
) -> AsyncGenerator[dict[str, ServiceContext]]:
    """Run the app's `services` with the INI `text` until the block ends."""
    write_config(text)
    classes = [d.cls for d in discover(APP) if d.name in services]
    async with farine.testing.running(*classes) as app:
        yield app.runtime.services


def ini(db_lines: str, **extra: object) -> str:
    more = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return "[DEFAULT]\nshutdown_timeout = 5\n" + db_lines + more


def store(services: dict[str, ServiceContext]) -> tuple[ServiceContext, Store]:
    ctx = services["store"]
    return ctx, cast(Store, ctx.instance)


# -- handler calls ------------------------------------------------------------------


async def test_save_then_count_through_handlers(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    # The seed's flow (`save` then `count`) at the handler level; the same flow through a
    # real RPC client is in tests/test_sql_entrypoints.py.
    async with running(write_config, ini(db_settings), "store") as services:
        ctx, service = store(services)
        assert await ctx.call(service.save, "david") is True
        assert await ctx.call(service.count) == 1


async def test_async_handler_does_database_work_through_db_run(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings), "store") as services:
        ctx, service = store(services)
        assert await ctx.call(service.save_async, "ada") is True
        assert await ctx.call(service.count) == 1


async def test_self_db_on_the_event_loop_is_a_clear_error(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings), "store") as services:
        ctx, service = store(services)
        with pytest.raises(sql.DatabaseUnavailable, match="db_run"):
            await ctx.call(service.db_on_loop)


async def test_execute_entrypoint_runs_with_a_connection_in_its_own_thread(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings), "recorder", "store") as services:
        recorder = cast(Recorder, services["recorder"].instance)
        with anyio.fail_after(10):
            await recorder.done.wait()
        assert recorder.connection_open is True
        assert recorder.thread is not None
        ctx, service = store(services)
        assert await ctx.call(service.count) == 1


async def test_200_concurrent_calls_on_a_pool_of_5_all_succeed(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    # More worker threads than connections: the limit is lowered to the pool size.
    text = ini(db_settings, db_max_conn=5, max_workers=40)
    async with running(write_config, text, "store") as services:
        ctx, service = store(services)
        assert ctx.workers.max_workers == 5
        results: list[object] = []

        async def save(i: int) -> None:
            results.append(await ctx.call(service.save, f"person {i}"))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(save, i)
        assert results == [True] * 200
        assert await ctx.call(service.count) == 200
        assert service.most_running <= 5


async def test_transaction_setting_rolls_back_when_the_handler_raises(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings, transaction="true"), "store") as services:
        ctx, service = store(services)
        with pytest.raises(Boom):
            await ctx.call(service.save_then_fail, "lost")
        assert await ctx.call(service.count) == 0
        assert await ctx.call(service.in_transaction) is True
        await ctx.call(service.save, "kept")
        assert await ctx.call(service.count) == 1


async def test_without_transaction_each_query_commits_on_its_own(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings), "store") as services:
        ctx, service = store(services)
        assert await ctx.call(service.in_transaction) is False
        with pytest.raises(Boom):
            await ctx.call(service.save_then_fail, "kept")
        assert await ctx.call(service.count) == 1


async def test_per_handler_transaction_flag_overrides_the_setting(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    async with running(write_config, ini(db_settings), "store") as services:
        ctx, service = store(services)
        with sql.handler_transaction(True):
            assert await ctx.call(service.in_transaction) is True
            with pytest.raises(Boom):
                await ctx.call(service.save_then_fail, "lost")
            # async handlers: each db_run() call gets the flag too
            with pytest.raises(Boom):
                await ctx.call(service.db_run, service.save_then_fail, "lost too")
        assert await ctx.call(service.count) == 0
        assert await ctx.call(service.in_transaction) is False


async def test_connection_is_returned_to_the_pool_after_a_handler_raises(
    db_settings: str, write_config: Callable[[str], Path]
) -> None:
    # One connection, a short wait for it: a connection kept by a failed call would make
    # the next call fail with MaxConnectionsExceeded after db_timeout.
    text = ini(db_settings, db_max_conn=1, db_timeout=2)
    async with running(write_config, text, "store") as services:
        ctx, service = store(services)
        for i in range(5):
            with pytest.raises(Boom):
                await ctx.call(service.save_then_fail, f"p{i}")
        assert await ctx.call(service.count) == 5


# -- start-up errors ----------------------------------------------------------------


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        group = cast(BaseExceptionGroup[BaseException], exc)
        return [inner for sub in group.exceptions for inner in _flatten(sub)]
    return [exc]


async def _start_failure(
    write_config: Callable[[str], Path], text: str, *services: str
) -> BaseException:
    with pytest.raises(BaseException) as caught:  # noqa: PT011  # unwrapped below
        async with running(write_config, text, *(services or ("store",))):
            pass
    (error,) = _flatten(caught.value)
    return error


async def test_bad_credentials_fail_at_start_without_showing_the_password(
    pg_database: str, write_config: Callable[[str], Path]
) -> None:
    user = f"farine_nobody_{uuid.uuid4().hex[:6]}"
    text = (
        "[DEFAULT]\ndb_connector = postgres\n"
        f"db_name = {pg_database}\ndb_user = {user}\ndb_host = 127.0.0.1\n"
        f"db_password = {PASSWORD}\n"
    )
    error = await _start_failure(write_config, text)
    assert isinstance(error, ConfigurationError)
    message = str(error)
    assert f"service store: cannot connect to PostgreSQL {user}@127.0.0.1/" in message
    assert user in message.split(":", 2)[2]  # the server's reason names the role
    assert PASSWORD not in message


async def test_missing_required_key_is_named(
    pg_database: str, write_config: Callable[[str], Path]
) -> None:
    text = f"[DEFAULT]\ndb_connector = postgres\ndb_name = {pg_database}\ndb_user = postgres\n"
    error = await _start_failure(write_config, text)
    assert isinstance(error, SettingsError)
    assert str(error).endswith(
        "service store: db_connector = postgres requires db_host (set it in [DEFAULT] or [store])"
    )


async def test_services_of_one_module_must_share_their_database(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    text = (
        f"[store]\ndb_connector = sqlite\ndb_name = {tmp_path / 'a.sqlite'}\n"
        f"[recorder]\ndb_connector = sqlite\ndb_name = {tmp_path / 'b.sqlite'}\n"
    )
    error = await _start_failure(write_config, text, "store", "recorder")
    assert isinstance(error, ConfigurationError)
    assert "configure different databases" in str(error)


def test_unknown_connector_is_a_settings_error() -> None:
    settings = Config.from_string("[svc]\ndb_connector = mysql\n").service("svc")
    expected = r"service svc: db_connector = 'mysql': expected one of postgres, sqlite"
    with pytest.raises(SettingsError, match=expected):
        sql.setup(settings)


def test_no_connector_means_no_database() -> None:
    assert sql.setup(Config.from_string("[svc]\n").service("svc")) is None


async def test_unopenable_sqlite_file_fails_at_start(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    path = tmp_path / "missing-dir" / "app.sqlite"
    error = await _start_failure(write_config, ini(f"db_connector = sqlite\ndb_name = {path}\n"))
    assert isinstance(error, ConfigurationError)
    assert f"cannot connect to SQLite {path}" in str(error)


# -- migrate (the real CLI) ---------------------------------------------------------


def _farine(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "farine", *args, "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _legacy_migrate(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from farine.cli import run_legacy_migrate; run_legacy_migrate()"
    return subprocess.run(
        [sys.executable, "-c", code, "--service", module, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[str], list[tuple[Any, ...]]]]]:
    """INI `db_*` lines of a database without the app's tables, and a way to query it."""
    if request.param == "sqlite":
        path = tmp_path / "migrated.sqlite"

        def query_sqlite(statement: str) -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                rows = conn.execute(statement).fetchall()
                conn.commit()
                return rows

        yield f"db_connector = sqlite\ndb_name = {path}\n", query_sqlite
        return
    name = cast(str, request.getfixturevalue("pg_database"))
    conn = postgres(name)
    conn.connect()
    try:
        yield (
            (
                f"db_connector = postgres\ndb_name = {name}\ndb_user = postgres\n"
                "db_host = 127.0.0.1\n"
            ),
            functools.partial(rows, conn),
        )
    finally:
        rows(conn, "DROP TABLE IF EXISTS person, payment")
        conn.close()


def test_migrate_creates_the_tables_and_is_idempotent(
    empty_database: tuple[str, Callable[[str], list[tuple[Any, ...]]]], tmp_path: Path
) -> None:
    lines, query = empty_database
    config = tmp_path / "farine.ini"
    config.write_text("[DEFAULT]\n" + lines, encoding="utf-8")

    first = _farine("migrate", APP, config=config)
    assert first.returncode == 0, first.stderr
    assert "tables person, payment" in first.stderr
    query("INSERT INTO person (name) VALUES ('survivor')")

    second = _legacy_migrate(APP, config)  # the seed's `farine-migrate --service`
    assert second.returncode == 0, second.stderr
    assert query("SELECT name FROM person") == [("survivor",)]
    assert query("SELECT count(*) FROM payment") == [(0,)]


def test_migrate_with_bad_credentials_exits_with_a_clear_error(
    pg_database: str, tmp_path: Path
) -> None:
    config = tmp_path / "farine.ini"
    config.write_text(
        "[DEFAULT]\ndb_connector = postgres\n"
        f"db_name = {pg_database}\ndb_user = farine_nobody\ndb_host = 127.0.0.1\n"
        f"db_password = {PASSWORD}\n",
        encoding="utf-8",
    )
    result = _farine("migrate", APP, config=config)
    assert result.returncode == 2  # a refused connection is a setting to check
    assert "farine: error: cannot connect to PostgreSQL farine_nobody@127.0.0.1/" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_migrate_without_models_module_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text(f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {tmp_path / 'x.db'}\n")
    result = _farine("migrate", "tests", config=config)
    assert result.returncode == 2  # module not found
    assert "no module named 'tests.models'" in result.stderr


# -- models -------------------------------------------------------------------------


def test_to_json_encodes_datetime_decimal_and_uuid() -> None:
    ref = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    payment = Payment(id=3, when=when, amount=decimal.Decimal("12.50"), ref=ref)
    extras = {"id": 99, "source": "test"}
    data = json.loads(payment.to_json(extras=extras))
    assert data == {
        "id": 3,  # the row's own fields win over extras, as in baguette-messaging
        "when": "2024-05-01T12:30:00Z",
        "amount": "12.50",
        "ref": str(ref),
        "source": "test",
    }
    assert extras == {"id": 99, "source": "test"}


def test_init_binds_the_models_of_the_module_in_definition_order(tmp_path: Path) -> None:
    db = peewee.SqliteDatabase(str(tmp_path / "bind.sqlite"))
    previous = [Person._meta.database, Payment._meta.database]  # pyright: ignore[reportPrivateUsage]
    try:
        assert sql.init(APP, db) == [Person, Payment]
        assert Person._meta.database is db  # pyright: ignore[reportPrivateUsage]
    finally:
        Person._meta.database, Payment._meta.database = previous  # pyright: ignore[reportPrivateUsage]


def test_public_api_is_peewee_plus_farine() -> None:
    ours = {
        "DatabaseUnavailable", "Model", "WithDatabase", "handler_transaction", "init",
        "migrate", "setup",
    }  # fmt: skip
    assert set(sql.__all__) == set(peewee.__all__) | ours
    namespace: dict[str, object] = {}
    exec("from farine.connectors.sql import *", namespace)  # the seed's models.py line
    assert namespace["Model"] is sql.Model
    assert namespace["CharField"] is peewee.CharField


# -- the example --------------------------------------------------------------------


async def test_users_example_migrates_and_serves(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    examples = REPO / "examples"
    shipped = (examples / "users" / "farine.ini").read_text(encoding="utf-8")
    text = shipped.replace("users.sqlite", str(tmp_path / "users.sqlite"))
    text += "shutdown_timeout = 0\n"  # cancel the sleeping `register` at once on stop
    text += f"amqp_uri = memory://users-{uuid.uuid4().hex[:10]}\n"
    config = write_config(text)
    with anyio.fail_after(60):
        migrated = await anyio.run_process(
            [sys.executable, "-m", "farine", "migrate", "users", "--config", str(config)],
            cwd=examples,
            check=False,
        )
    assert migrated.returncode == 0, migrated.stderr.decode()

    monkeypatch.setattr(sys, "path", [str(examples), *sys.path])
    caplog.set_level(logging.INFO, logger="users.service")
    async with farine.testing.running("users") as app:
        ctx = app.runtime.services["client"]
        client: Any = app.instance("client")
        user_id = (await ctx.call(client.create_user, "ada")).id
        # The seed's consumer: a message on `exchange` makes it select the user.
        await app.publish("exchange", "routing_key", {"id": user_id})
        [call] = await app.wait_for("client.select", timeout=30)
    assert call.exception is None
    assert (call.result.id, call.result.name) == (user_id, "ada")
    [found] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("selected ")]
    assert json.loads(found.removeprefix("selected ")) == {"id": user_id, "name": "ada"}
