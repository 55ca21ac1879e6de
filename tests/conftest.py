"""Shared fixtures: every async test runs on both anyio backends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from farine import settings
from farine._broker.aiormq.fastpath import ENV_VAR as FAST_PATH_ENV_VAR
from farine.rpc._blocking_client import ScriptLoop
from tests._db import db_settings as db_settings
from tests._db import pg_database as pg_database

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`FARINE_SLOW_TESTS=0` skips the tests marked `slow` (.ci/run runs them in the
    Python 3.11 jobs only, on both AMQP paths; a plain `pytest` runs them)."""
    if os.environ.get("FARINE_SLOW_TESTS") != "0":
        return
    skip = pytest.mark.skip(reason="slow: run in .ci/run's Python 3.11 jobs (FARINE_SLOW_TESTS)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Declared here: anyio's default would silently drop trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no configuration file and no cached settings."""
    monkeypatch.delenv(settings.ENV_VAR, raising=False)
    monkeypatch.setattr(settings, "DEFAULT_PATH", Path("/nonexistent/farine.ini"))
    settings.configure(None)
    yield
    settings.configure(None)


@pytest.fixture(autouse=True)
def _fast_path_for_its_own_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests marked `fastpath` test the fast path itself: it is on for them, whatever
    `FARINE_AMQP_FAST_PATH` says for the rest of the run."""
    if request.node.get_closest_marker("fastpath") is not None:
        monkeypatch.setenv(FAST_PATH_ENV_VAR, "on")


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write an INI file, point FARINE_INI at it and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "farine.ini"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv(settings.ENV_VAR, str(path))
        settings.configure(None)
        return path

    return write


@pytest.fixture
def close_script_loop() -> Iterator[None]:
    """Stop the loop behind blocking RPC clients called outside a runtime, after the test."""
    yield
    ScriptLoop.close()
