"""Connectors attach to services through `farine.extensions`, as the SQL connector does."""

from __future__ import annotations

import contextlib
import importlib.metadata
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import pytest

import farine.execute
from farine import extensions
from farine.entrypoints import current_service
from farine.exceptions import ConfigurationError
from farine.extensions import (
    ENTRY_POINT_GROUP,
    ServiceExtension,
    extensions_for,
    register_extension,
    unregister_extension,
)
from farine.settings import Config
from farine.testing import running

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from farine.entrypoints import ServiceContext
    from farine.settings import ServiceSettings

pytestmark = pytest.mark.anyio

CONFIG = Config.from_string("[DEFAULT]\namqp_uri = memory://extensions\nshutdown_timeout = 5\n")


class Cache:
    """The resource of a made-up connector: one per service, closed when it stops."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.closed = False
        self.call_threads: list[int] = []

    @contextlib.contextmanager
    def per_call(self) -> Generator[None]:
        self.call_threads.append(threading.get_ident())
        yield


class WithCache:
    cache: Cache

    def __init__(self) -> None:
        self.ran = anyio.Event()
        self.seen: list[tuple[str, int]] = []

    @farine.execute.method(restart=False)
    def work(self) -> None:
        self.seen.append((self.cache.service, threading.get_ident()))
        anyio.from_thread.run_sync(self.ran.set)

    @farine.execute.method(restart=False)
    async def keep_running(self) -> None:
        service = current_service()
        assert service is not None
        await service.stopping.wait()


class Plain:
    @farine.execute.method(restart=False)
    async def work(self) -> None:
        pass


@pytest.fixture
def cache_extension() -> Iterator[list[Cache]]:
    """Register the made-up connector for services named "withcache"; yield its caches."""
    caches: list[Cache] = []

    async def attach(service: ServiceContext) -> None:
        cache = Cache(service.name)
        caches.append(cache)
        service.instance.cache = cache  # pyright: ignore[reportAttributeAccessIssue]
        service.call_hooks.append(cache.per_call)
        service.exit_stack.callback(setattr, cache, "closed", True)

    def wanted(settings: ServiceSettings) -> bool:
        return settings.name == "withcache"

    register_extension(ServiceExtension("cache", wanted, attach))
    try:
        yield caches
    finally:
        unregister_extension("cache")


async def test_a_custom_connector_attaches_to_the_services_that_want_it(
    cache_extension: list[Cache],
) -> None:
    async with running(WithCache, Plain, config=CONFIG) as app:
        service: WithCache = app.instance("withcache")
        with anyio.fail_after(5):
            await service.ran.wait()
        [cache] = cache_extension
        assert cache.service == "withcache"
        # The per-call hook ran in the handler's own worker thread, around its call.
        assert service.seen == [("withcache", cache.call_threads[0])]
        assert cache.call_threads[0] != threading.get_ident()
        assert not hasattr(app.instance("plain"), "cache")
        assert not cache.closed
    assert cache.closed  # undone through the service's exit stack when it stopped


async def test_a_connector_failing_to_attach_fails_the_startup() -> None:
    async def attach(service: ServiceContext) -> None:
        raise ConfigurationError(f"service {service.name}: cache_uri is not set")

    register_extension(ServiceExtension("broken", lambda settings: True, attach))
    try:
        with pytest.RaisesGroup(
            pytest.RaisesExc(ConfigurationError, match="service plain: cache_uri is not set"),
            flatten_subgroups=True,
        ):
            async with running(Plain, config=CONFIG):
                pass
    finally:
        unregister_extension("broken")


def test_the_sql_connector_is_an_installed_extension() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "sql" in names
    with_db = Config.from_string("[DEFAULT]\ndb_connector = sqlite\n").service("svc")
    without_db = Config.from_string("").service("svc")
    assert [ext.name for ext in extensions_for(with_db)] == ["sql"]
    assert extensions_for(without_db) == []


def test_loading_the_extensions_imports_no_peewee() -> None:
    code = (
        "import sys\n"
        "from farine.extensions import extensions_for\n"
        "from farine.settings import Config\n"
        "assert extensions_for(Config.from_string('').service('svc')) == []\n"
        "assert 'peewee' not in sys.modules, 'peewee imported'\n"
        "assert 'farine.connectors.sql' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _EntryPoint:
    """Stands for an `importlib.metadata.EntryPoint` of a broken distribution."""

    def __init__(self, name: str, value: str, loaded: object) -> None:
        self.name = name
        self.value = value
        self._loaded = loaded

    def load(self) -> object:
        if isinstance(self._loaded, Exception):
            raise self._loaded
        return self._loaded


@pytest.mark.parametrize(
    ("loaded", "message"),
    [
        (ImportError("No module named 'farine_cache'"), r"cannot be loaded: ImportError: No mod"),
        (object(), r"is not a farine\.extensions\.ServiceExtension"),
    ],
)
def test_a_bad_entry_point_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, loaded: object, message: str
) -> None:
    def entry_points(*, group: str) -> list[Any]:
        assert group == ENTRY_POINT_GROUP
        return [_EntryPoint("cache", "farine_cache:extension", loaded)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    # Loaded once per process: forget what was loaded, now and after the test.
    monkeypatch.setattr(extensions, "_installed", None)
    with pytest.raises(ConfigurationError, match=r"extension 'cache' \(farine_cache:extension\) "):
        extensions_for(Config.from_string("").service("svc"))
    with pytest.raises(ConfigurationError, match=message):
        extensions_for(Config.from_string("").service("svc"))
