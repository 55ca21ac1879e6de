"""Run service classes in-process for a test."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

from farine.discovery import ServiceDefinition, find_entrypoints
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime
from farine.settings import Config, current

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

__all__ = ("running",)


@contextlib.asynccontextmanager
async def running(*services: type, config: str | Config | None = None) -> AsyncGenerator[Runtime]:
    """Run `services` on the current event loop; stop them gracefully on exit.

    The block is entered once every entrypoint is ready (consumers consuming, ...), and
    left after a graceful stop: in-flight handler calls finish first.

    Args:
        *services: Service classes (classes with decorated methods).
        config: INI text, a loaded `Config`, or None for the current configuration.

    Yields:
        The running `Runtime` (its `services` maps names to their contexts).

    Raises:
        ConfigurationError: A class has no entrypoint.
    """
    definitions: list[ServiceDefinition] = []
    for cls in services:
        entrypoints = find_entrypoints(cls)
        if not entrypoints:
            raise ConfigurationError(f"{cls.__qualname__} has no entrypoint")
        module = cls.__module__.rpartition(".")[0] or cls.__module__
        definitions.append(ServiceDefinition(cls, module, entrypoints))
    if isinstance(config, str):
        config = Config.from_string(config, source="<test config>")
    runtime = Runtime(definitions, config=config or current())
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        try:
            yield runtime
        finally:
            runtime.stop()
