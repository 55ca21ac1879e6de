"""The seed's Overview: an SSE listener forwarding each event by RPC, on both backends.

A local SSE server (`tests/_sse_server.py`) emits the events; the services talk through
the in-process `memory://` broker. The seed's own `def` form is in
`tests/test_seed_readme.py`; here are the `async def` form and `examples/overview`
started by the real `farine start`.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.text import TextReceiveStream

import farine.rpc
import farine.stream
import farine.testing
from farine.settings import Config
from tests._sse_server import Reply, serve_sse

if TYPE_CHECKING:
    from types import ModuleType


pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def events(*data: str) -> str:
    return "".join(f"id: {n}\ndata: {text}\n\n" for n, text in enumerate(data, 1))


def overview_config(endpoint: str) -> Config:
    return Config.from_string(
        f"[DEFAULT]\namqp_uri = memory://overview-{uuid.uuid4().hex[:10]}\n"
        f"shutdown_timeout = 5\n[client]\nendpoint = {endpoint}\n"
    )


class Client:
    """The Overview in `async def` form: `await` the injected client."""

    @farine.stream.http()
    async def get(self, data: Any) -> Any:
        return await self.send(data)

    @farine.rpc.client("myotherservice")
    async def send(self, rpc: farine.rpc.AsyncClient, data: Any) -> Any:
        return await rpc.process(data)


class MyOtherService:
    @farine.rpc.method()
    async def process(self, data: Any) -> dict[str, Any]:
        return {"processed": data}


async def test_async_overview_forwards_each_event_by_rpc() -> None:
    body = events('{"n": 1}', "not json", "[1, 2]")
    async with (
        serve_sse([Reply(body)]) as server,
        farine.testing.running(Client, MyOtherService, config=overview_config(server.url())) as app,
    ):
        processed = await app.wait_for("myotherservice.process", count=3)
        replies = await app.wait_for("client.get", count=3)
    data = [call.args[0] for call in processed]
    assert data == [{"n": 1}, "not json", [1, 2]]
    assert [call.result for call in replies] == [{"processed": item} for item in data]


async def _read_until(stream: TextReceiveStream, text: str, seen: list[str]) -> None:
    async for chunk in stream:
        seen.append(chunk)
        if text in "".join(seen):
            return
    raise AssertionError(f"{text!r} never logged:\n{''.join(seen)}")


async def test_overview_example_runs_with_farine_start(tmp_path: Path, anyio_backend: str) -> None:
    shipped = (EXAMPLES / "overview" / "farine.ini").read_text(encoding="utf-8")
    async with serve_sse([Reply(events('{"n": 1}', '{"n": 2}'))]) as server:
        config = tmp_path / "farine.ini"
        config.write_text(
            shipped.replace("http://127.0.0.1:8000/events", server.url())
            + "shutdown_timeout = 5\n",
            encoding="utf-8",
        )
        command = [
            *(sys.executable, "-m", "farine", "start", "overview"),
            *("--config", str(config), "--backend", anyio_backend),
        ]
        seen: list[str] = []
        async with await anyio.open_process(
            command, cwd=EXAMPLES, env={"PYTHONPATH": str(EXAMPLES)}
        ) as process:
            assert process.stderr is not None
            stream = TextReceiveStream(process.stderr)
            with anyio.fail_after(30):
                await _read_until(stream, "processed {'n': 2}", seen)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await _read_until(stream, "farine.runtime: stopped", seen)
                code = await process.wait()
    output = "".join(seen)
    assert code == 0, output
    assert "processed {'n': 1}" in output
    assert "ready: client, myotherservice" in output


def load_feed() -> ModuleType:
    """Import examples/overview/feed.py as a script's module (nothing left in sys.modules)."""
    spec = importlib.util.spec_from_file_location(
        "overview_feed", EXAMPLES / "overview" / "feed.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_feed_serves_events_and_resumes() -> None:
    feed = load_feed()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    received = b""
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, feed.serve_client)
        # A raw connection, as a client resuming after event 5 sends it.
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n")
                while b"\n\n" not in received.partition(b"\r\n\r\n")[2]:
                    received += await stream.receive()
        tg.cancel_scope.cancel()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Type: text/event-stream" in head
    assert body.split(b"\n\n")[0] == b'id: 6\ndata: {"n": 6}'


def test_the_docs_say_how_to_feed_the_example() -> None:
    page = (EXAMPLES.parent / "docs" / "stream.md").read_text(encoding="utf-8")
    assert "python overview/feed.py" in page
    assert "farine start overview --config overview/farine.ini" in page
    assert (EXAMPLES / "overview" / "feed.py").exists()
