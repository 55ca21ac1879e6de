"""Run services from your own program: `farine.run()` (blocking) and `farine.serve()`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal

import anyio

from farine import settings
from farine.discovery import ServiceDefinition, discover, find_entrypoints
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Sequence

    from farine.entrypoints import ServiceContext
    from farine.settings import Config

__all__ = ("definitions_of", "run", "serve", "serving")


def definitions_of(targets: Sequence[type | str]) -> list[ServiceDefinition]:
    """The services of `targets`: service classes, or modules whose `service` submodule
    is searched as `farine start` does.

    Raises:
        ConfigurationError: A class has no entrypoint, or nothing was found.
        ServiceNotFound: A module does not exist.
    """
    found: list[ServiceDefinition] = []
    for target in targets:
        if isinstance(target, str):
            found.extend(discover(target))
            continue
        entrypoints = find_entrypoints(target)
        if not entrypoints:
            raise ConfigurationError(f"{target.__qualname__} has no entrypoint")
        module = target.__module__.rpartition(".")[0] or target.__module__
        found.append(ServiceDefinition(target, module, entrypoints))
    if not found:
        raise ConfigurationError(
            "nothing to run: no service found in " + ", ".join(map(str, targets))
        )
    return found


@contextlib.asynccontextmanager
async def serving(
    definitions: list[ServiceDefinition],
    config: Config,
    *,
    handle_signals: bool = False,
    prepare_service: Callable[[ServiceContext], None] | None = None,
) -> AsyncGenerator[Runtime]:
    """Run `definitions` with `config` current until the block ends (see `serve()`)."""
    runtime = Runtime(
        definitions, config=config, handle_signals=handle_signals, prepare_service=prepare_service
    )
    with settings.using(config):
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            try:
                yield runtime
            finally:
                runtime.stop()


@contextlib.asynccontextmanager
async def serve(*services: type | str, config: Config | None = None) -> AsyncGenerator[Runtime]:
    """Run services on the current event loop while the block runs, then stop them.

    For embedding farine in an application that has its own event loop (asyncio or
    trio): the block is entered once every service is ready, and left after a graceful
    stop (in-flight handler calls finish, for up to `shutdown_timeout`). `config` is the
    current configuration during the block, so publishers and RPC clients built there
    use it. Signals are left to the application.

    Args:
        *services: Service classes, or module names (`"mymodule"` runs the services of
            `mymodule.service`, as `farine start mymodule` does).
        config: The configuration (`farine.settings.load(path)`,
            `Config.from_string(text)`); None for the current one (`FARINE_INI`, else
            `/etc/farine.ini`).

    Yields:
        The running `farine.runtime.Runtime`.

    Raises:
        ConfigurationError: Nothing to run, a class without entrypoint, or a service
            that fails to start.
        ServiceNotFound: A module does not exist.

    Example:
        ```python
        async def main():
            async with farine.serve("orders"):
                await web_app.serve()  # the application's own work
        ```
    """
    definitions = definitions_of(services)
    async with serving(definitions, config or settings.current()) as runtime:
        yield runtime


def run(
    *services: type | str,
    backend: Literal["asyncio", "trio"] = "asyncio",
    config: Config | None = None,
) -> None:
    """Run services until SIGINT or SIGTERM, as `farine start` does; blocks until then.

    A first signal stops the services gracefully (in-flight handler calls finish, for
    up to `shutdown_timeout`) and `run()` returns; a second one exits the process at once.
    Logging is left as the program set it up.

    Args:
        *services: Module names (`"mymodule"` runs the services of `mymodule.service`),
            or service classes.
        backend: The event loop: `"asyncio"` or `"trio"`.
        config: The configuration; None for the current one (`FARINE_INI`, else
            `/etc/farine.ini`).

    Raises:
        ConfigurationError: Nothing to run, a class without entrypoint, or a service
            that fails to start.
        ServiceNotFound: A module does not exist.

    Example:
        ```python
        if __name__ == "__main__":
            farine.run("orders", backend="trio")
        ```
    """
    definitions = definitions_of(services)
    chosen = config or settings.current()

    async def main() -> None:
        with settings.using(chosen):
            await Runtime(definitions, config=chosen, handle_signals=True).run()

    anyio.run(main, backend=backend)
