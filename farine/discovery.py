"""Find the services of a module: `<module>.service`, its classes that carry entrypoints."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import cast

from farine.entrypoints import EntrypointSpec, entrypoint_specs
from farine.exceptions import ServiceNotFound

__all__ = (
    "ServiceDefinition",
    "discover",
    "find_entrypoints",
    "import_package",
    "import_service_module",
)


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """A service class found in a user's module, with its entrypoints in definition order."""

    cls: type
    module: str
    entrypoints: tuple[tuple[str, EntrypointSpec], ...]

    @property
    def name(self) -> str:
        """The service name: the lowercase class name (also its INI section)."""
        return self.cls.__name__.lower()


def import_package(module: str) -> object:
    """Import the user's package `module` (`farine migrate`, before its models).

    Raises:
        ServiceNotFound: `module` does not exist.
        ImportError: Raised by the user's code while importing (kept as is).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise ServiceNotFound(
                f"no module named {module!r} (is {module!r} importable from here?)"
            ) from None
        raise


def import_service_module(module: str) -> object:
    """Import `<module>.service`.

    Raises:
        ServiceNotFound: Neither `module` nor `module.service` exists.
        ImportError: Raised by the user's code while importing (kept as is).
    """
    target = f"{module}.service"
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        # Only a missing *target* is "not found"; a missing import inside the user's code
        # is their bug and keeps its traceback.
        missing = exc.name or ""
        if missing == target:
            raise ServiceNotFound(
                f"no module named {target!r}: {module!r} has no service module "
                f"(put the services in {module.replace('.', '/')}/service.py)"
            ) from None
        if missing and target.startswith(missing + "."):
            raise ServiceNotFound(
                f"no module named {target!r} (is {module!r} importable from here?)"
            ) from None
        raise


def find_entrypoints(cls: type) -> tuple[tuple[str, EntrypointSpec], ...]:
    """Return `(attribute name, spec)` for every entrypoint of `cls`, base classes first."""
    found: dict[str, tuple[EntrypointSpec, ...]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            func: object = value
            if isinstance(value, staticmethod | classmethod):
                func = cast(object, value.__func__)  # pyright: ignore[reportUnknownMemberType]
            specs = entrypoint_specs(func)
            if specs:
                found[attr] = specs
            elif attr in found:  # overridden without a decorator: no longer an entrypoint
                del found[attr]
    return tuple((attr, spec) for attr, specs in found.items() for spec in specs)


def discover(module: str) -> list[ServiceDefinition]:
    """Import `<module>.service` and return its services in definition order.

    A class is a service when it has at least one entrypoint. Classes imported into the
    module from elsewhere count too (a service may be split across files), each once.
    A module that defines none gives an empty list: the caller says what that means
    for it (`farine start`: nothing to run).
    """
    mod = import_service_module(module)
    services: list[ServiceDefinition] = []
    seen: set[type] = set()
    for value in vars(mod).values():
        if not isinstance(value, type) or value in seen:
            continue
        entrypoints = find_entrypoints(value)
        if entrypoints:
            seen.add(value)
            services.append(ServiceDefinition(value, module, entrypoints))
    return services
