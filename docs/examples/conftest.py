"""pytest fixtures of the docs' example tests (a project's `conftest.py`)."""

from __future__ import annotations

import pytest

from farine.settings import Config


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio, then on trio."""
    return str(request.param)


@pytest.fixture
def farine_config() -> Config:
    """The configuration of every test (farine's pytest plugin makes it current)."""
    return Config.from_string("[DEFAULT]\nshutdown_timeout = 5\n\n[prices]\nmax_workers = 2\n")
