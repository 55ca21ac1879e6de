"""`farine.testing.running`: services in-process, ready on entry, stopped on exit."""

from __future__ import annotations

import anyio
import pytest

import farine.execute
import farine.testing
from farine.exceptions import ConfigurationError

pytestmark = pytest.mark.anyio


async def test_running_yields_a_ready_runtime_and_stops_gracefully() -> None:
    started = anyio.Event()
    finished: list[str] = []

    class Worker:
        @farine.execute.method()
        async def work(self) -> None:
            started.set()
            await anyio.sleep(0.05)
            finished.append("run")

    async with farine.testing.running(Worker, config="[worker]\nshutdown_timeout = 5\n") as rt:
        assert rt.services["worker"].settings.shutdown_timeout == 5
        with anyio.fail_after(5):
            await started.wait()
    assert finished  # the in-flight run finished before the block was left


async def test_class_without_entrypoint_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="Plain has no entrypoint"):
        async with farine.testing.running(Plain):
            pass
