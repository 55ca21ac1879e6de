"""The runtime in-process: readiness, supervision, graceful stop, resources, discovery."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.execute
from farine._workers import WorkerPool
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.entrypoints import (
    Entrypoint,
    EntrypointSpec,
    ServiceContext,
    current_service,
    record_spec,
)
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime, current_runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator

    from anyio.abc import TaskStatus

pytestmark = pytest.mark.anyio


@dataclass(eq=False)
class Probe:
    """What the test entrypoints report back to the test."""

    ready_gate: anyio.Event = field(default_factory=anyio.Event)
    serve_calls: int = 0
    restarted: anyio.Event = field(default_factory=anyio.Event)
    events: list[str] = field(default_factory=list[str])


@dataclass(frozen=True, eq=False)
class GatedSpec(EntrypointSpec):
    """Becomes ready only when the probe's gate opens; fails its loop `failures` times."""

    probe: Probe
    failures: int = 0
    fail_before_ready: bool = False

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        return _Gated(service, handler, name, self)


class _Gated(Entrypoint):
    def __init__(
        self, service: ServiceContext, handler: Callable[..., Any], name: str, spec: GatedSpec
    ) -> None:
        super().__init__(service, handler, name)
        self.spec = spec

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        probe = self.spec.probe
        probe.serve_calls += 1
        if self.spec.fail_before_ready:
            raise RuntimeError("cannot start")
        await probe.ready_gate.wait()
        task_status.started()
        if probe.serve_calls <= self.spec.failures:
            raise RuntimeError(f"loop failure {probe.serve_calls}")
        if probe.serve_calls > 1:
            probe.restarted.set()
        await self.service.stopping.wait()
        probe.events.append(f"{self.name} stopped")


def gated(probe: Probe, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return record_spec(func, GatedSpec(probe, **kwargs))

    return decorate


def definition(cls: type) -> ServiceDefinition:
    return ServiceDefinition(cls, "tests", find_entrypoints(cls))


CONFIG = Config.from_string("[DEFAULT]\nshutdown_timeout = 5\n")


async def test_ready_only_once_every_entrypoint_is_ready() -> None:
    first, second = Probe(), Probe()

    class Svc:
        @gated(first)
        def a(self) -> None: ...

        @gated(second)
        def b(self) -> None: ...

    runtime = Runtime([definition(Svc)], config=CONFIG)
    ready = anyio.Event()

    async def run() -> None:
        await runtime.run(task_status=_Signal(ready))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        first.ready_gate.set()
        await anyio.wait_all_tasks_blocked()
        assert not ready.is_set()  # b is not ready yet
        second.ready_gate.set()
        with anyio.fail_after(5):
            await ready.wait()
        runtime.stop()
    assert first.events == ["a stopped"]
    assert second.events == ["b stopped"]


class _Signal:
    """A task status that sets an event (to observe readiness from outside `start`)."""

    def __init__(self, event: anyio.Event) -> None:
        self.event = event

    def started(self, value: None = None) -> None:
        self.event.set()


async def test_failing_entrypoint_loop_is_restarted_and_siblings_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky_probe, steady_probe = Probe(), Probe()
    flaky_probe.ready_gate.set()
    steady_probe.ready_gate.set()

    class Svc:
        @gated(flaky_probe, failures=2)
        def flaky(self) -> None: ...

        @gated(steady_probe)
        def steady(self) -> None: ...

    runtime = Runtime([definition(Svc)], config=CONFIG)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with anyio.fail_after(10):
            await flaky_probe.restarted.wait()
        assert flaky_probe.serve_calls == 3
        assert steady_probe.serve_calls == 1  # never restarted, never disturbed
        runtime.stop()
    assert steady_probe.events == ["steady stopped"]
    assert "entrypoint svc.flaky failed; restarting" in caplog.text


async def test_entrypoint_failing_before_ready_fails_startup() -> None:
    probe = Probe()

    class Svc:
        @gated(probe, fail_before_ready=True)
        def broken(self) -> None: ...

    runtime = Runtime([definition(Svc)], config=CONFIG)
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="cannot start"), flatten_subgroups=True
    ):
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
    assert current_runtime() is None


@dataclass(eq=False)
class Rendezvous:
    """Where entrypoints starting at the same time meet."""

    expected: int
    arrived: int = 0
    everyone_here: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True, eq=False)
class RendezvousSpec(EntrypointSpec):
    """Ready only once every entrypoint of its rendezvous has begun starting."""

    rendezvous: Rendezvous

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        return _Meeting(service, handler, name, self.rendezvous)


class _Meeting(Entrypoint):
    def __init__(
        self,
        service: ServiceContext,
        handler: Callable[..., Any],
        name: str,
        rendezvous: Rendezvous,
    ) -> None:
        super().__init__(service, handler, name)
        self.rendezvous = rendezvous

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        rendezvous = self.rendezvous
        rendezvous.arrived += 1
        if rendezvous.arrived == rendezvous.expected:
            rendezvous.everyone_here.set()
        # Started one after another, the first would wait here for the others forever.
        with anyio.fail_after(5):
            await rendezvous.everyone_here.wait()
        task_status.started()
        await self.service.stopping.wait()


async def test_entrypoints_of_a_service_start_concurrently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="farine.runtime")
    rendezvous = Rendezvous(expected=3)

    class Svc:
        def a(self) -> None: ...
        def b(self) -> None: ...
        def c(self) -> None: ...

    for method in (Svc.a, Svc.b, Svc.c):
        record_spec(method, RendezvousSpec(rendezvous))
    runtime = Runtime([definition(Svc)], config=CONFIG)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            assert rendezvous.arrived == 3
            runtime.stop()
    messages = [record.getMessage() for record in caplog.records]
    ready = [m for m in messages if m.startswith("entrypoint ready: ")]
    # In the order they became ready, each before the service is.
    assert sorted(ready) == [f"entrypoint ready: svc.{name}" for name in "abc"]
    assert messages.index("service ready: svc") > max(messages.index(m) for m in ready)


async def test_first_entrypoint_failing_to_start_fails_startup_and_cancels_the_others() -> None:
    broken_a, broken_b, never = Probe(), Probe(), Probe()  # never: its gate never opens

    class Svc:
        @gated(broken_a, fail_before_ready=True)
        def a(self) -> None: ...

        @gated(broken_b, fail_before_ready=True)
        def b(self) -> None: ...

        @gated(never)
        def slow(self) -> None: ...

    runtime = Runtime([definition(Svc)], config=CONFIG)
    # One error, as when entrypoints started one after another: the first failure.
    with (
        anyio.fail_after(5),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="^cannot start$"), flatten_subgroups=True
        ),
    ):
        await runtime.run()
    assert never.serve_calls == 1  # it was starting too, and was cancelled
    assert (broken_a.serve_calls, broken_b.serve_calls) == (1, 1)


async def test_disabled_service_is_skipped() -> None:
    ran: list[str] = []

    class Off:
        @farine.execute.method(restart=False)
        async def work(self) -> None:
            ran.append("off")

    class On:
        @farine.execute.method(restart=False)
        async def work(self) -> None:
            ran.append("on")

    config = Config.from_string("[off]\nenabled = false\n")
    runtime = Runtime([definition(Off), definition(On)], config=config)
    with anyio.fail_after(5):
        await runtime.run()
    assert ran == ["on"]
    assert list(runtime.services) == ["on"]


async def test_graceful_stop_waits_for_in_flight_sync_and_async_calls() -> None:
    sync_started = threading.Event()
    async_started = anyio.Event()
    release = threading.Event()
    finished: list[str] = []

    class Svc:
        @farine.execute.method()
        def sync_work(self) -> None:
            sync_started.set()
            release.wait(10)
            finished.append("sync")

        @farine.execute.method()
        async def async_work(self) -> None:
            async_started.set()
            await anyio.to_thread.run_sync(release.wait, 10)
            finished.append("async")

    runtime = Runtime([definition(Svc)], config=CONFIG)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with anyio.fail_after(5):
            await async_started.wait()
            assert await anyio.to_thread.run_sync(lambda: sync_started.wait(5))
        runtime.stop()
        await anyio.wait_all_tasks_blocked()
        assert finished == []  # stopping, but the calls are still in flight
        release.set()
    assert sorted(finished) == ["async", "sync"]  # each finished once, not restarted


async def test_shutdown_timeout_cancels_what_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    entered = anyio.Event()
    cancelled: list[bool] = []

    class Svc:
        @farine.execute.method()
        async def forever(self) -> None:
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise

    config = Config.from_string("[svc]\nshutdown_timeout = 0.1\n")
    runtime = Runtime([definition(Svc)], config=config)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            await entered.wait()
            runtime.stop()
    assert cancelled == [True]
    assert "shutdown_timeout (0.1s) reached" in caplog.text


async def test_stop_during_startup_does_not_wait_for_the_slow_entrypoint() -> None:
    never = Probe()  # its gate never opens

    class Svc:
        @gated(never)
        def slow(self) -> None: ...

    runtime = Runtime([definition(Svc)], config=CONFIG)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run)
            await anyio.wait_all_tasks_blocked()
            runtime.stop()
    assert never.serve_calls == 1


async def test_def_handlers_are_bounded_by_max_workers() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    calls = 0
    done = anyio.Event()

    class Svc:
        @farine.execute.method()
        def work(self) -> None:
            nonlocal running, peak, calls
            with lock:
                running += 1
                peak = max(peak, running)
            threading.Event().wait(0.01)
            with lock:
                running -= 1
                calls += 1

    config = Config.from_string("[svc]\nmax_workers = 2\n")
    runtime = Runtime([definition(Svc)], config=config)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        ctx = runtime.services["svc"]

        async def many() -> None:
            async with anyio.create_task_group() as inner:
                for _ in range(8):
                    inner.start_soon(ctx.call, Svc.work, ctx.instance)
            done.set()

        tg.start_soon(many)
        with anyio.fail_after(10):
            await done.wait()
        runtime.stop()
    assert calls >= 8
    assert peak <= 2


async def test_def_handler_sees_its_service_in_its_worker_thread() -> None:
    seen: list[tuple[str | None, bool]] = []

    class Svc:
        @farine.execute.method(restart=False)
        def work(self) -> None:
            ctx = current_service()
            in_main = threading.current_thread() is threading.main_thread()
            seen.append((ctx.name if ctx else None, in_main))

    with anyio.fail_after(5):
        await Runtime([definition(Svc)], config=CONFIG).run()
    assert seen == [("svc", False)]


async def test_call_hooks_run_in_the_handlers_worker_thread() -> None:
    hook_threads: list[int] = []

    @contextlib.contextmanager
    def hook() -> Generator[None]:
        hook_threads.append(threading.get_ident())
        yield

    ctx = ServiceContext(
        name="x",
        instance=object(),
        module="m",
        settings=CONFIG.service("x"),
        workers=WorkerPool(1),
        stopping=anyio.Event(),
    )
    ctx.call_hooks.append(hook)
    thread_id = await ctx.call(threading.get_ident)
    assert thread_id != threading.get_ident()
    assert hook_threads == [thread_id]


async def test_resource_is_opened_once_and_closed_after_services() -> None:
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def open_thing() -> AsyncGenerator[str]:
        log.append("open")
        yield "thing"
        log.append("close")

    class Svc:
        @farine.execute.method(restart=False)
        async def work(self) -> None:
            runtime = current_runtime()
            assert runtime is not None
            values = [await runtime.resource("k", open_thing) for _ in range(3)]
            log.append(f"got {values}")

    await Runtime([definition(Svc)], config=CONFIG).run()
    assert log == ["open", "got ['thing', 'thing', 'thing']", "close"]


async def test_two_runtimes_at_once_are_refused() -> None:
    class Svc:
        @farine.execute.method()
        async def work(self) -> None:
            await anyio.sleep_forever()

    quick = Config.from_string("[DEFAULT]\nshutdown_timeout = 0\n")
    runtime = Runtime([definition(Svc)], config=quick)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with pytest.raises(ConfigurationError, match="already running"):
            await Runtime([], config=CONFIG).run()
        runtime.stop()


async def test_bind_error_names_service_and_method() -> None:
    @dataclass(frozen=True)
    class BadSpec(EntrypointSpec):
        def bind(
            self, service: ServiceContext, handler: Callable[..., Any], name: str
        ) -> Entrypoint:
            raise ConfigurationError("annotation int | Foo is not decodable")

    class Svc:
        def work(self) -> None: ...

    record_spec(Svc.work, BadSpec())
    with pytest.RaisesGroup(
        pytest.RaisesExc(ConfigurationError, match=r"^svc\.work: annotation"),
        flatten_subgroups=True,
    ):
        await Runtime([definition(Svc)], config=CONFIG).run()


def test_logging_is_configured_for_caplog(caplog: pytest.LogCaptureFixture) -> None:
    # Sanity check that the runtime's logger propagates (the tests above rely on it).
    caplog.set_level(logging.INFO)
    logging.getLogger("farine.runtime").info("hello")
    assert "hello" in caplog.text
