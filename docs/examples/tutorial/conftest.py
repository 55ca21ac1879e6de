"""Run each test on asyncio and on trio, with the tutorial's test configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from farine.settings import Config

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def farine_config(tmp_path: Path) -> Config:
    """memory:// and a fresh SQLite file per test."""
    return Config.from_string(
        f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {tmp_path / 'test.sqlite'}\n"
    )
