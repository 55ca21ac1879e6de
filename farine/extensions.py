"""Service extensions: how a connector attaches to the services that use it.

A connector (farine's SQL connector, or a third-party one) describes itself with a
`ServiceExtension`: a name, a predicate on a service's settings, and an `attach`
coroutine that the runtime awaits as each service for which the predicate holds
starts, before its entrypoints start. `attach` receives the service's
`ServiceContext`, where it can add per-call hooks (`call_hooks`, `async_call_hooks`),
lower `workers.max_workers`, set attributes on the instance, and register what undoes
all that on `exit_stack` (closed when the service stops).

Extensions come from two places:

- the entry point group `farine.extensions` of every installed distribution: each
  entry point names a `ServiceExtension` object, loaded at the first service start
  (keep its module light: the predicate decides before anything heavy is imported);
- `register_extension()`, for an extension defined by the application itself.

The runtime knows no connector by name: farine's SQL connector declares its entry
point in farine's own `pyproject.toml`, exactly as another package would.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from farine.entrypoints import ServiceContext
    from farine.settings import ServiceSettings

__all__ = (
    "ENTRY_POINT_GROUP",
    "ServiceExtension",
    "extensions_for",
    "register_extension",
    "unregister_extension",
)

logger = logging.getLogger("farine.extensions")

#: The entry point group where installed distributions declare their extensions.
ENTRY_POINT_GROUP = "farine.extensions"


@dataclass(frozen=True, slots=True)
class ServiceExtension:
    """What a connector adds to each service that uses it, attached as the service starts.

    Attributes:
        name: A unique name ("sql"), shown in errors.
        wanted: Whether a service with these settings uses the extension. Called for
            every starting service: keep it cheap and free of imports.
        attach: Set the extension up for a starting service. Raise `ConfigurationError`
            (or `SettingsError`) for a wrong setting: the start-up fails with it.

    Example:
        ```python
        async def attach_cache(service: ServiceContext) -> None:
            cache = await open_cache(service.settings)
            service.exit_stack.push_async_callback(cache.aclose)
            service.instance.cache = cache

        cache = ServiceExtension("cache", lambda settings: True, attach_cache)
        ```
    """

    name: str
    wanted: Callable[[ServiceSettings], bool]
    attach: Callable[[ServiceContext], Awaitable[None]]


_lock = threading.Lock()
_registered: dict[str, ServiceExtension] = {}
_installed: dict[str, ServiceExtension] | None = None


def register_extension(extension: ServiceExtension) -> None:
    """Attach `extension` to the services that want it, from their next start on.

    Args:
        extension: The extension; one registered under the same name is replaced.
    """
    with _lock:
        _registered[extension.name] = extension


def unregister_extension(name: str) -> None:
    """Forget the extension registered as `name` (no error when there is none)."""
    with _lock:
        _registered.pop(name, None)


def extensions_for(settings: ServiceSettings) -> list[ServiceExtension]:
    """Return the extensions a service with `settings` uses, in a stable order.

    Installed extensions (entry points) come first, sorted by name, then registered
    ones in registration order; a registered extension replaces an installed one of
    the same name.

    Raises:
        ConfigurationError: An entry point of the `farine.extensions` group cannot be
            loaded, or does not name a `ServiceExtension`.
    """
    with _lock:
        available = {**_load_installed(), **_registered}
    return [extension for extension in available.values() if extension.wanted(settings)]


def _load_installed() -> dict[str, ServiceExtension]:
    """Load the entry points of the group once per process (the caller holds `_lock`)."""
    global _installed
    if _installed is None:
        found: dict[str, ServiceExtension] = {}
        for entry_point in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
        ):
            try:
                extension: object = entry_point.load()
            except Exception as exc:
                raise ConfigurationError(
                    f"extension {entry_point.name!r} ({entry_point.value}) cannot be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(extension, ServiceExtension):
                raise ConfigurationError(
                    f"extension {entry_point.name!r} ({entry_point.value}) is not a "
                    "farine.extensions.ServiceExtension"
                )
            # setdefault: the same distribution may be seen twice on sys.path.
            found.setdefault(extension.name, extension)
        _installed = found
    return _installed
