"""Run services defined in a test as services of `tests.sqlapp`, whose models are bound
to its database."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import anyio

from farine import settings
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from farine.settings import Config

APP: Final = "tests.sqlapp"


def in_sqlapp(*classes: type) -> list[ServiceDefinition]:
    """`classes` as services of the `tests.sqlapp` module."""
    return [ServiceDefinition(cls, APP, find_entrypoints(cls)) for cls in classes]


@contextlib.asynccontextmanager
async def running(*classes: type, config: Config) -> AsyncGenerator[Runtime]:
    """Run `classes` as services of `tests.sqlapp` until the block ends; `config` is also
    the current configuration, so that the test's own clients reach the same broker."""
    settings.use(config)
    runtime = Runtime(in_sqlapp(*classes), config=config)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            await tg.start(runtime.run)
        try:
            yield runtime
        finally:
            runtime.stop()
