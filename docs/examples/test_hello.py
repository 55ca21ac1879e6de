"""The tutorial's test: run the `hello` service in-process and check what it did."""

from __future__ import annotations

import pytest
from hello.service import Hello

import farine.testing

pytestmark = pytest.mark.anyio


async def test_hello_greets_three_times() -> None:
    async with farine.testing.running(Hello) as app:
        await app.wait_for("hello.greet")
        hello: Hello = app.instance("hello")
        assert hello.greetings == 3
