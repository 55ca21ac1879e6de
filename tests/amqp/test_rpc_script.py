"""RPC from a plain script: the call's deadline also bounds connecting to the broker."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

import farine.rpc
from farine import settings
from farine.exceptions import ServiceUnavailable
from farine.rpc._blocking_client import ScriptLoop
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Iterator

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


@pytest.fixture(autouse=True)
def _dead_broker() -> Iterator[None]:
    settings.use(
        Config.from_string(f"[DEFAULT]\namqp_uri = {DEAD_BROKER}\nconnect_retry_timeout = 60\n")
    )
    yield
    ScriptLoop.close()


def test_blocking_call_to_an_unreachable_broker_fails_within_its_deadline() -> None:
    began = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="timeout: cannot reach the broker"):
        farine.rpc.Client("anything", timeout=1).add(1)
    assert time.monotonic() - began < 15  # not the 60 s connect_retry_timeout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_with_client_to_an_unreachable_broker_fails_within_its_deadline(
    backend: str,
) -> None:
    async def call() -> None:
        async with farine.rpc.Client("anything", timeout=1) as rpc:
            await rpc.add(1)

    began = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="timeout: cannot reach the broker"):
        anyio.run(call, backend=backend)
    assert time.monotonic() - began < 15
