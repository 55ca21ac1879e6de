"""farine.stream: the HTTP Server-Sent-Events entrypoint, against a real local server."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import msgspec
import pytest

import farine
import farine.amqp
import farine.stream
from farine._workers import WorkerPool
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.entrypoints import ServiceContext
from farine.exceptions import ConfigurationError, HandlerTimeout
from farine.runtime import Runtime
from farine.settings import Config, ServiceSettings
from farine.stream import Event
from farine.stream._retry import (
    CLIENT_ERROR_BACKOFF,
    MAX_BACKOFF,
    MAX_CLIENT_ERROR_BACKOFF,
    reconnect_delay,
)
from tests._sse_server import Ending, Reply, SSEServer, serve_sse

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Iterator
    from types import ModuleType

    from anyio.abc import Process

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = EXAMPLES.parent / "docs"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Place:
    name: str
    tags: list[str]


class Inbox:
    """What handlers received, with a way to wait for it (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    def put(self, item: Any) -> None:
        """Record `item`; call it on the event loop (from a thread: `from_thread`)."""
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, count: int) -> list[Any]:
        while len(self.items) < count:
            await self._changed.wait()
        return self.items


class LogWatch(logging.Handler):
    """Records farine.stream log lines and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()
        self._changed = anyio.Event()

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, text: str) -> str:
        while True:
            for message in self.messages():
                if text in message:
                    return message
            await self._changed.wait()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("farine.stream")
    logger.addHandler(watch)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(old)


def ini(server: SSEServer, **extra: object) -> Config:
    lines = [f"endpoint = {server.url()}", *(f"{k} = {v}" for k, v in extra.items())]
    return Config.from_string("[DEFAULT]\n" + "\n".join(lines) + "\n")


def definitions(*classes: type) -> list[ServiceDefinition]:
    return [ServiceDefinition(cls, __name__, find_entrypoints(cls)) for cls in classes]


@contextlib.asynccontextmanager
async def running(config: Config, *classes: type) -> AsyncGenerator[Runtime]:
    """Run `classes` as services in this process until the block ends."""
    async with farine.serve(*classes, config=config) as runtime:
        yield runtime


def sse(data: str, *, id: str | None = None, event: str | None = None) -> str:
    """One event in wire format."""
    lines = [f"event: {event}"] if event else []
    lines += [f"id: {id}"] if id is not None else []
    lines += [f"data: {line}" for line in data.split("\n")]
    return "\n".join(lines) + "\n\n"


# -- decoding ----------------------------------------------------------------------------


async def test_data_is_decoded_into_the_struct_or_dataclass_annotation() -> None:
    inbox = Inbox()

    class Typed:
        @farine.stream.http()
        async def on_point(self, data: Point) -> None:
            inbox.put(data)

        @farine.stream.http()
        async def on_place(self, data: Place) -> None:
            inbox.put(data)

    body = sse('{"x": 1, "y": 2}') + sse('{"name": "Lyon", "tags": ["bread"]}')
    async with serve_sse([Reply(body)]) as server, running(ini(server), Typed):
        with anyio.fail_after(10):
            received = await inbox.wait(2)
    # Each handler skips the event that does not fit its annotation (logged).
    assert sorted(received, key=repr) == [Place("Lyon", ["bread"]), Point(x=1, y=2)]


async def test_unannotated_data_is_json_or_the_raw_string_in_a_def_handler() -> None:
    inbox = Inbox()

    class Client:  # the seed README's example, plus a way to see what it got
        @farine.stream.http()
        def listen_event(self, data):  # pyright: ignore[reportMissingParameterType, reportUnknownParameterType]
            anyio.from_thread.run_sync(inbox.put, data)  # pyright: ignore[reportUnknownArgumentType]
            return True

    body = sse('{"a": 1}') + sse("hello world") + sse("line 1\nline 2") + sse("[1, 2]")
    async with serve_sse([Reply(body)]) as server, running(ini(server), Client):
        with anyio.fail_after(10):
            received = await inbox.wait(4)
    assert received == [{"a": 1}, "hello world", "line 1\nline 2", [1, 2]]


async def test_str_annotation_gets_the_raw_text() -> None:
    inbox = Inbox()

    class Raw:
        @farine.stream.http()
        async def on_text(self, data: str) -> None:
            inbox.put(data)

    body = sse('{"a": 1}') + sse("plain")
    async with serve_sse([Reply(body)]) as server, running(ini(server), Raw):
        with anyio.fail_after(10):
            received = await inbox.wait(2)
    assert received == ['{"a": 1}', "plain"]


async def test_bad_json_and_mismatched_data_are_logged_and_skipped(logs: LogWatch) -> None:
    inbox = Inbox()

    class Typed:
        @farine.stream.http()
        async def on_point(self, data: Point) -> None:
            inbox.put(data)

    body = sse("{not json", id="1") + sse('{"x": "a", "y": 1}', id="2") + sse('{"x": 3, "y": 4}')
    async with serve_sse([Reply(body)]) as server, running(ini(server), Typed):
        with anyio.fail_after(10):
            received = await inbox.wait(1)
    assert received == [Point(x=3, y=4)]
    warnings = logs.messages(logging.WARNING)
    assert any("id '1'" in m and "invalid JSON" in m for m in warnings), warnings
    assert any("id '2'" in m and "does not match Point" in m for m in warnings), warnings


async def test_a_handler_error_is_logged_and_the_stream_goes_on(logs: LogWatch) -> None:
    inbox = Inbox()

    class Fragile:
        @farine.stream.http()
        async def on_number(self, data: int) -> None:
            if data == 1:
                raise ValueError("one is not welcome")
            inbox.put(data)

    async with serve_sse([Reply(sse("1") + sse("2"))]) as server, running(ini(server), Fragile):
        with anyio.fail_after(10):
            received = await inbox.wait(1)
    assert received == [2]
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


@pytest.mark.parametrize("kind", ["def", "async"])
async def test_a_handler_past_its_time_limit_fails_and_the_stream_goes_on(
    logs: LogWatch, kind: str
) -> None:
    inbox = Inbox()
    release = threading.Event()

    class AsyncSlow:
        @farine.stream.http(handler_timeout=0.2)
        async def on_number(self, data: int) -> None:
            if data == 1:
                await anyio.sleep_forever()
            inbox.put(data)

    class SyncSlow:
        @farine.stream.http(handler_timeout=0.2)
        def on_number(self, data: int) -> None:
            if data == 1:
                release.wait(30)  # abandoned in its thread at the limit
            else:
                anyio.from_thread.run_sync(inbox.put, data)

    service = AsyncSlow if kind == "async" else SyncSlow
    try:
        async with (
            serve_sse([Reply(sse("1") + sse("2"))]) as server,
            running(ini(server), service),
        ):
            with anyio.fail_after(10):
                received = await inbox.wait(1)
    finally:
        release.set()
    assert received == [2]
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], HandlerTimeout)


async def test_retry_calls_the_handler_again_with_the_same_event_in_place(
    logs: LogWatch,
) -> None:
    inbox = Inbox()
    calls: list[int] = []

    class Flaky:
        @farine.stream.http(retry=farine.amqp.Retry(attempts=3, backoff=[0.05, 0.1]))
        async def on_number(self, data: int) -> None:
            calls.append(data)
            if data == 1 and calls.count(1) < 3:
                raise ConnectionError("the database is restarting")
            if data == 2:
                raise ValueError("two is never welcome")
            inbox.put(data)

    body = sse("1", id="1") + sse("2", id="2") + sse("3", id="3")
    async with serve_sse([Reply(body)]) as server, running(ini(server), Flaky):
        with anyio.fail_after(10):
            received = await inbox.wait(2)
    # 1 succeeds on its third call, before the next event is read; 2 is given up after
    # three calls (logged), and 3 goes through.
    assert received == [1, 3]
    assert calls == [1, 1, 1, 2, 2, 2, 3]
    retries = [m for m in logs.messages(logging.WARNING) if "retrying in" in m]
    assert len(retries) == 4
    assert (
        "ConnectionError: the database is restarting on event (type 'message', id '1')"
        in (retries[0])
    )
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


# -- events ------------------------------------------------------------------------------


async def test_event_types_filter_and_the_whole_event_as_second_parameter() -> None:
    inbox = Inbox()

    class Prices:
        @farine.stream.http(event_types=["price"])
        async def on_price(
            self, data: Any, event: Event
        ) -> None:  # any data: only the type filters
            inbox.put((data, event))

    body = (
        sse("0")
        + sse('{"p": 1}', event="price", id="7")
        + "retry: 250\n"
        + sse("2", event="other")
        + sse('{"p": 2}', event="price")
    )
    async with serve_sse([Reply(body)]) as server, running(ini(server), Prices):
        with anyio.fail_after(10):
            received = await inbox.wait(2)
    assert received == [
        ({"p": 1}, Event(type="price", data='{"p": 1}', id="7", retry=None)),
        # The last event ID carries over to events without an `id:` (SSE spec).
        ({"p": 2}, Event(type="price", data='{"p": 2}', id="7", retry=None)),
    ]


async def test_settings_headers_are_sent_and_never_logged(logs: LogWatch) -> None:
    inbox = Inbox()

    class Secret:
        @farine.stream.http(headers={"X-Client": "farine-tests", "Authorization": "code"})
        async def on_data(self, data: Any) -> None:
            inbox.put(data)

    async with serve_sse([Reply(sse("1"))]) as server:
        config = ini(server, headers='{"authorization": "Bearer s3cr3t-token"}')
        async with running(config, Secret):
            with anyio.fail_after(10):
                await inbox.wait(1)
    headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer s3cr3t-token"  # settings win over the code
    assert [n for n, _ in server.requests[0].lines].count("authorization") == 1
    assert headers["x-client"] == "farine-tests"
    assert headers["accept"] == "text/event-stream"
    assert "last-event-id" not in headers
    assert logs.records
    assert not [m for m in logs.messages() if "s3cr3t" in m]


# -- reconnection ------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["reset", "eof", "close"])
async def test_reconnects_after_the_server_retry_with_last_event_id(ending: Ending) -> None:
    inbox = Inbox()

    class Resumer:
        @farine.stream.http()
        async def on_event(self, data: int) -> None:
            inbox.put(data)

    first = "retry: 300\n\n" + sse("1", id="a1") + sse("2", id="a2")
    replies = [Reply(first), Reply(sse("3", id="a3"))]
    # sse_retry (the default) is far longer than the server's retry: the reconnection
    # below would then miss the fail_after deadline.
    async with serve_sse(replies) as server, running(ini(server, sse_retry=30), Resumer):
        with anyio.fail_after(10):
            await inbox.wait(2)  # both events handled, then the stream is idle
            server.drop(ending)
            requests = await server.wait_requests(2)
            received = await inbox.wait(3)
    assert received == [1, 2, 3]
    assert "last-event-id" not in requests[0].headers
    assert requests[1].headers["last-event-id"] == "a2"
    waited = requests[1].at - server.closed_at[0]
    # The server's `retry: 300` (ms) was honoured; a small allowance for clock rounding.
    assert 0.29 <= waited < 10


async def test_204_stops_reconnecting(logs: LogWatch) -> None:
    class Listener:
        @farine.stream.http()
        async def on_event(self, data: Any) -> None:
            raise AssertionError("no event expected")

    async with serve_sse([Reply(status=204)]) as server:
        runtime = Runtime(definitions(Listener), config=ini(server, sse_retry=0))
        with anyio.fail_after(10):
            await runtime.run()  # returns: the only entrypoint finished
    assert len(server.requests) == 1
    assert any("204" in m and "not reconnecting" in m for m in logs.messages())


async def test_client_error_backs_off_long_and_stop_is_prompt(logs: LogWatch) -> None:
    class Listener:
        @farine.stream.http()
        async def on_event(self, data: Any) -> None:
            raise AssertionError("no event expected")

    async with serve_sse([Reply(status=401)]) as server:
        with anyio.fail_after(10):
            async with running(ini(server, sse_retry=0.01), Listener):
                line = await logs.wait_for("reconnecting")
            # leaving `running` stopped the service: the long wait did not delay it
    assert len(server.requests) == 1
    assert any("401" in m for m in logs.messages(logging.ERROR))
    delay = float(line.split(" in ")[1].split("s ")[0])
    assert delay >= CLIENT_ERROR_BACKOFF / 2


async def test_server_errors_back_off_and_honour_retry_after(logs: LogWatch) -> None:
    inbox = Inbox()

    class Listener:
        @farine.stream.http()
        async def on_event(self, data: int) -> None:
            inbox.put(data)

    replies = [Reply(status=503, headers=(("Retry-After", "0.4"),)), Reply(sse("1"))]
    async with serve_sse(replies) as server, running(ini(server, sse_retry=0.01), Listener):
        with anyio.fail_after(10):
            await inbox.wait(1)
    assert len(server.requests) == 2
    assert server.requests[1].at - server.closed_at[0] >= 0.39  # not sse_retry's 0.01 s
    assert any("503" in m for m in logs.messages(logging.WARNING))


def test_reconnect_delay_is_the_retry_then_capped_exponential_with_jitter() -> None:
    low, high = (lambda: 0.0), (lambda: 0.999999)
    assert reconnect_delay(3.0, 1) == 3.0
    assert reconnect_delay(3.0, 1, jitter=high) == 3.0  # no jitter on the first retry
    assert reconnect_delay(1.0, 2, jitter=low) == 1.0  # jitter never goes below the retry
    assert reconnect_delay(1.0, 2, jitter=high) == pytest.approx(2.0)
    assert reconnect_delay(1.0, 4, jitter=high) == pytest.approx(8.0)
    assert reconnect_delay(1.0, 4, jitter=low) == pytest.approx(4.0)
    assert reconnect_delay(1.0, 1000, jitter=high) == pytest.approx(MAX_BACKOFF)
    assert reconnect_delay(0.0, 5, jitter=high) > 0  # `retry: 0` cannot spin on failures
    assert reconnect_delay(3.0, 1, client_error=True, jitter=low) == CLIENT_ERROR_BACKOFF / 2
    assert reconnect_delay(3.0, 50, client_error=True, jitter=high) == pytest.approx(
        MAX_CLIENT_ERROR_BACKOFF
    )


# -- limit and timeout -------------------------------------------------------------------


async def test_limit_stops_after_n_events() -> None:
    inbox = Inbox()

    class Script:
        @farine.stream.http(limit=2)
        async def on_event(self, data: int) -> None:
            inbox.put(data)

    async with serve_sse([Reply(sse("1") + sse("2") + sse("3"))]) as server:
        with anyio.fail_after(10):
            await Runtime(definitions(Script), config=ini(server)).run()
    assert inbox.items == [1, 2]
    assert len(server.requests) == 1


async def test_timeout_stops_listening_to_an_idle_stream() -> None:
    class Script:
        @farine.stream.http(timeout=0.2)
        async def on_event(self, data: Any) -> None:
            raise AssertionError("no event expected")

    async with serve_sse([Reply()]) as server:
        with anyio.fail_after(10):
            await Runtime(definitions(Script), config=ini(server)).run()
    assert len(server.requests) == 1


async def test_stop_lets_the_in_flight_handler_finish() -> None:
    inbox = Inbox()
    release = anyio.Event()

    class Slow:
        @farine.stream.http()
        async def on_event(self, data: int) -> None:
            inbox.put(("started", data))
            await release.wait()
            inbox.put(("finished", data))

    async with serve_sse([Reply(sse("1") + sse("2"))]) as server:
        runtime = Runtime(definitions(Slow), config=ini(server))
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            with anyio.fail_after(10):
                await inbox.wait(1)
                runtime.stop()
                await anyio.wait_all_tasks_blocked()
                release.set()
    assert inbox.items == [("started", 1), ("finished", 1)]  # event 2 never started


# -- declaration errors ------------------------------------------------------------------


def bind(cls: type, settings: ServiceSettings) -> None:
    ctx = ServiceContext(
        name=settings.name,
        instance=cls(),
        module=__name__,
        settings=settings,
        workers=WorkerPool(1),
        stopping=anyio.Event(),
    )
    for attr, spec in find_entrypoints(cls):
        spec.bind(ctx, getattr(ctx.instance, attr), attr)


async def test_a_missing_endpoint_is_a_clear_startup_error() -> None:
    class NoEndpoint:
        @farine.stream.http()
        async def on_event(self, data: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"no SSE endpoint.*\[noendpoint\]"):
        bind(NoEndpoint, ServiceSettings(name="noendpoint"))


async def test_an_undecodable_annotation_is_a_startup_error() -> None:
    class Odd:
        @farine.stream.http(endpoint="http://127.0.0.1:1/")
        async def on_event(self, data: Point | dict[str, int]) -> None: ...  # two dict-likes

    with pytest.raises(ConfigurationError, match=r"odd\.on_event"):
        bind(Odd, ServiceSettings(name="odd"))


async def test_a_handler_without_data_parameter_is_a_startup_error() -> None:
    class NoData:
        @farine.stream.http(endpoint="http://127.0.0.1:1/")
        async def on_event(self) -> None: ...

    with pytest.raises(ConfigurationError, match="takes the event data"):
        bind(NoData, ServiceSettings(name="nodata"))


def test_invalid_decorator_arguments_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        farine.stream.http(endpoint="ftp://example.org/events")
    with pytest.raises(ConfigurationError, match="limit"):
        farine.stream.http(limit=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        farine.stream.http(timeout=0)


def test_public_names() -> None:
    assert farine.stream.__all__ == ("Event", "HttpStreamSpec", "http")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Event(type="message", data="x").id = "1"  # pyright: ignore[reportAttributeAccessIssue]


# -- the real CLI ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def farine_start(
    tmp_path: Path, endpoint: str, backend: str
) -> AsyncGenerator[tuple[Process, Callable[[], str]]]:
    """Run `farine start sse_listener` on `endpoint`; yield the process and its log."""
    config = tmp_path / "farine.ini"
    config.write_text(
        f"[listener]\nendpoint = {endpoint}\nsse_retry = 0.1\nshutdown_timeout = 30\n"
    )
    log_path = tmp_path / "farine.log"
    env = {**os.environ, "FARINE_INI": str(config), "PYTHONPATH": str(EXAMPLES)}
    command = [sys.executable, "-m", "farine", "start", "sse_listener", "--backend", backend]
    with log_path.open("wb") as log:
        process = await anyio.open_process(command, cwd=EXAMPLES, env=env, stdout=log, stderr=log)
        try:
            async with process:
                yield process, lambda: log_path.read_text()
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()


async def sigterm(process: Process) -> int:
    process.send_signal(signal.SIGTERM)
    # shutdown_timeout is 30 s: an idle stream holding up the stop would miss this.
    with anyio.fail_after(10):
        return await process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_stops_an_idle_stream_promptly(tmp_path: Path, anyio_backend: str) -> None:
    async with (
        serve_sse([Reply()]) as server,
        farine_start(tmp_path, server.url("/events?token=s3cr3t"), anyio_backend) as (
            process,
            log,
        ),
    ):
        with anyio.fail_after(30):
            requests = await server.wait_requests(1)
        assert await sigterm(process) == 0
        text = log()
    assert requests[0].target == "/events?token=s3cr3t"
    assert "stopped listening to http://127.0.0.1" in text
    assert "s3cr3t" not in text  # neither farine nor httpx logs the query string


async def test_farine_start_survives_the_server_restarting(
    tmp_path: Path, anyio_backend: str
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/events"
    async with farine_start(tmp_path, endpoint, anyio_backend) as (process, log):
        first = [Reply("retry: 100\n\n" + sse('{"n": 1}', id="1"), end="close"), Reply()]
        async with serve_sse(first, port=port) as server:
            with anyio.fail_after(30):
                before = await server.wait_requests(2)
        # The server is gone (its held connection cut); it comes back on the same port.
        assert before[1].headers["last-event-id"] == "1"
        second = [Reply(sse('{"n": 2}', id="2"), end="close"), Reply()]
        async with serve_sse(second, port=port) as restarted:
            with anyio.fail_after(30):
                after = await restarted.wait_requests(2)
            assert after[0].headers["last-event-id"] == "1"
            assert after[1].headers["last-event-id"] == "2"  # event 2 was read and handled
            assert await sigterm(process) == 0
        text = log()
    assert "received {'n': 1}" in text
    assert "received {'n': 2}" in text


# -- the docs ----------------------------------------------------------------------------


def load_docs_example() -> tuple[ModuleType, str, str]:
    """Import docs/examples/stream_typed.py; return it, its code and the docs page."""
    path = DOCS / "examples" / "stream_typed.py"
    module_spec = importlib.util.spec_from_file_location("stream_typed", path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["stream_typed"] = module  # get_type_hints resolves names through it
    module_spec.loader.exec_module(module)
    return module, path.read_text(), (DOCS / "stream.md").read_text()


async def test_the_docs_example_runs_and_is_the_one_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "stream_typed", None)  # restored after the test
    module, code, page = load_docs_example()
    assert code.split('"""\n', 1)[1].strip() in page  # the page shows the file, docstring aside
    watch = LogWatch()
    logging.getLogger("stream_typed").addHandler(watch)
    logging.getLogger("stream_typed").setLevel(logging.INFO)
    body = sse('{"symbol": "EUR", "amount": 1.5}', event="trade") + sse(
        '{"symbol": "EUR", "amount": 1.1}', event="price", id="9"
    )
    try:
        async with serve_sse([Reply(body)]) as server, running(ini(server), module.Prices) as rt:
            with anyio.fail_after(10):
                line = await watch.wait_for("EUR is now")
            last = cast(dict[str, float], vars(rt.services["prices"].instance)["last"])
    finally:
        logging.getLogger("stream_typed").removeHandler(watch)
    assert line == "EUR is now 1.1 (event 9)"  # the "trade" event was filtered out
    assert last == {"EUR": 1.1}
