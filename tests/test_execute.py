"""`farine.execute.method`: restart on return, backoff on failure, run-once."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest

import farine.execute
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime
from farine.settings import Config

pytestmark = pytest.mark.anyio

CONFIG = Config.from_string("[DEFAULT]\nshutdown_timeout = 5\n")


def definition(cls: type) -> ServiceDefinition:
    return ServiceDefinition(cls, "tests", find_entrypoints(cls))


async def test_sync_and_async_methods_are_restarted_when_they_return() -> None:
    enough = anyio.Event()
    runs = {"sync": 0, "async": 0}

    def count(kind: str) -> None:
        runs[kind] += 1
        if min(runs.values()) >= 3:
            enough.set()

    class Svc:
        @farine.execute.method()
        def sync_method(self) -> None:
            anyio.from_thread.run_sync(count, "sync")

        @farine.execute.method()
        async def async_method(self) -> None:
            count("async")
            await anyio.lowlevel.checkpoint()

    runtime = Runtime([definition(Svc)], config=CONFIG)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with anyio.fail_after(5):
            await enough.wait()
        runtime.stop()
    assert runs["sync"] >= 3
    assert runs["async"] >= 3


async def test_restart_false_runs_once_and_the_runtime_returns() -> None:
    runs: list[str] = []

    class Svc:
        @farine.execute.method(restart=False)
        def once(self) -> None:
            runs.append("sync")

        @farine.execute.method(restart=False)
        async def once_async(self) -> None:
            runs.append("async")

    with anyio.fail_after(5):
        await Runtime([definition(Svc)], config=CONFIG).run()
    assert sorted(runs) == ["async", "sync"]


async def test_failing_method_restarts_with_growing_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    times: list[float] = []
    enough = anyio.Event()

    class Svc:
        @farine.execute.method(backoff_initial=0.02, backoff_max=0.08)
        async def crash(self) -> None:
            times.append(anyio.current_time())
            if len(times) == 6:
                enough.set()
            raise ValueError("broken on purpose")

    runtime = Runtime([definition(Svc)], config=CONFIG)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with anyio.fail_after(5):
            await enough.wait()
        runtime.stop()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Waits double from 0.02 s and are capped at 0.08 s: 0.02, 0.04, 0.08, 0.08, 0.08.
    for gap, expected in zip(gaps, [0.02, 0.04, 0.08, 0.08, 0.08], strict=True):
        assert gap >= expected * 0.9
    assert gaps[-1] < 1.0  # capped, not still doubling
    assert caplog.text.count("ValueError: broken on purpose") >= 5
    assert "svc.crash raised (run 1); restarting in 0.0s" in caplog.text


async def test_failing_run_once_method_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    class Svc:
        @farine.execute.method(restart=False)
        def crash(self) -> None:
            runs.append(1)
            raise ValueError("once")

    with anyio.fail_after(5):
        await Runtime([definition(Svc)], config=CONFIG).run()
    assert runs == [1]
    assert "not restarting (restart=False)" in caplog.text


async def test_a_stop_interrupts_the_backoff_wait() -> None:
    failed = anyio.Event()

    class Svc:
        @farine.execute.method(backoff_initial=60, backoff_max=60)
        async def crash(self) -> None:
            failed.set()
            raise ValueError("x")

    runtime = Runtime([definition(Svc)], config=CONFIG)
    with anyio.fail_after(5):  # far below the 60 s backoff
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            await failed.wait()
            runtime.stop()


def test_decorated_method_stays_a_normal_method() -> None:
    class Svc:
        @farine.execute.method()
        def add(self, a: int = 1) -> int:
            return a + 1

    assert Svc().add(2) == 3
    assert [name for name, _ in find_entrypoints(Svc)] == ["add"]


def test_bad_backoff_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="backoff"):
        farine.execute.method(backoff_initial=5, backoff_max=1)
