"""RPC between real processes on RabbitMQ: `farine call`, and a server killed mid-call.

The server is `farine start rpcapp` (tests/apps/rpcapp) in a subprocess, the caller
`farine call` in another: memory:// is in-process only, so these need RabbitMQ.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import pytest

from farine import cli
from farine.discovery import find_entrypoints
from tests._proc import ROOT, FarineProcess
from tests.amqp import _rabbit
from tests.amqp._proxy import free_port
from tests.apps.rpcapp.methods import Calc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.rabbitmq

BACKENDS: Final = ("asyncio", "trio")


@dataclass
class App:
    """A running `farine start rpcapp` and what a caller needs to reach it."""

    name: str
    config: Path
    backend: str
    process: FarineProcess


def unique_name() -> str:
    return f"rpcapp{uuid.uuid4().hex[:10]}"


def write_config(directory: Path) -> Path:
    config = directory / "farine.ini"
    config.write_text(
        f"[DEFAULT]\namqp_uri = {_rabbit.RABBITMQ_URI}\n"
        "shutdown_timeout = 5\nconnect_retry_timeout = 10\n"
    )
    return config


def delete_service(name: str) -> None:
    queues = [f"{name}__{attr}" for attr, _ in find_entrypoints(Calc)]
    anyio.run(_rabbit.delete, queues, [name])


def start(name: str, config: Path, backend: str) -> FarineProcess:
    """`farine start rpcapp` as service `name`, once it is ready."""
    process = FarineProcess(
        "start", "rpcapp", "--backend", backend,
        env={"FARINE_INI": str(config), "RPCAPP_SERVICE": name},
    )  # fmt: skip
    try:
        process.wait_for(r"farine\.runtime: ready: ", timeout=30)
    except BaseException:
        process.kill()
        raise
    return process


def stop(process: FarineProcess) -> None:
    if process.proc.poll() is None:
        process.signal()
    try:
        process.wait(timeout=15)
    finally:
        process.kill()


def call_command(*args: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "farine", "call", *args, "--config", str(config)]


def call_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FARINE_INI": ""}


def farine_call(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `farine call ARGS...` against `app` to completion."""
    return subprocess.run(
        call_command(*args, "--backend", app.backend, config=app.config),
        env=call_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One server per backend for the module's `farine call` tests."""
    if not _rabbit.rabbitmq_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (start it: .ci/run does)")
    backend = str(request.param)
    name = unique_name()
    config = write_config(tmp_path_factory.mktemp(f"rpc-{backend}"))
    try:
        process = start(name, config, backend)
        try:
            yield App(name, config, backend, process)
        finally:
            stop(process)
    finally:
        delete_service(name)


def test_call_prints_the_result_as_json(app: App) -> None:
    done = farine_call(app, f"{app.name}.add", "[1, 2]")
    assert (done.returncode, done.stdout, done.stderr) == (0, "3\n", "")
    done = farine_call(app, f"{app.name}.add", "[1]", "--kwargs", '{"b": 41}')
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr


def test_call_stream_prints_one_json_document_per_item(app: App) -> None:
    done = farine_call(app, f"{app.name}.count", "[3]", "--stream")
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n1\n2\n", "")
    done = farine_call(app, f"{app.name}.count", "[0]", "--stream")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr


def test_call_remote_error_goes_to_stderr_with_exit_code_1(app: App) -> None:
    done = farine_call(app, f"{app.name}.fail", '["boom"]')
    assert done.returncode == 1
    assert done.stdout == ""
    # The server sends no traceback (`rpc_send_traceback` is off): one line.
    assert done.stderr == f"farine: error: {app.name}.fail failed: ValueError: boom\n"


def test_call_past_its_timeout_exits_1(app: App) -> None:
    began = time.monotonic()
    done = farine_call(app, f"{app.name}.slow", "[60]", "--timeout", "0.5")
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"farine: error: {app.name}.slow: timeout: no reply within 0.5s" in done.stderr
    assert time.monotonic() - began < 20
    app.process.wait_for(r"call \S+ cancelled: its deadline passed")


def test_call_with_no_server_fails_fast(app: App) -> None:
    nobody = f"nobody{uuid.uuid4().hex[:10]}"
    began = time.monotonic()
    try:
        done = farine_call(app, f"{nobody}.anything")  # rpc_timeout is 30 s
    finally:
        anyio.run(_rabbit.delete, (), [nobody])  # the caller declared the exchange
    assert done.returncode == 1
    assert f"{nobody}.anything: unknown service: nothing serves {nobody!r}" in done.stderr
    assert time.monotonic() - began < 15  # a process start, far below the 30 s deadline


def test_stream_reader_leaving_stops_the_servers_generator(app: App) -> None:
    # `farine call ... --stream | head -1`: the pipe closes, the call ends, the server
    # stops iterating.
    with subprocess.Popen(
        call_command(
            f"{app.name}.count", "[100000000]", "--stream", "--backend", app.backend,
            config=app.config,
        ),
        env=call_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as reader:  # fmt: skip
        assert reader.stdout is not None
        assert reader.stdout.readline() == "0\n"
        reader.stdout.close()
        assert reader.wait(timeout=30) == 1
    app.process.wait_for(r"caller stopped stream")
    app.process.wait_for(r"count: generator closed")


def test_bad_json_arguments_are_a_usage_error() -> None:
    # Checked before anything connects: no broker or server needed.
    done = subprocess.run(
        [sys.executable, "-m", "farine", "call", "svc.add", "[1,"],
        env=call_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert "usage: farine call" in done.stderr
    assert "argument ARGS_JSON: invalid JSON" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["svc.add", '{"a": 1}'], "argument ARGS_JSON: expected a JSON array"),
        (["svc.add", "--kwargs", "[1]"], "argument --kwargs: expected a JSON object"),
        (["svc.add", "--kwargs", "{a: 1}"], "argument --kwargs: invalid JSON"),
        (["svc.add", "--kwargs", '{"__stream__": true}'], "reserved keyword argument"),
        (["svc"], "expected SERVICE.METHOD, got 'svc'"),
        (["svc.add", "--timeout", "0"], "argument --timeout: must be > 0"),
    ],
)
def test_bad_call_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["call", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# -- a server killed mid-call -------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_call_in_flight_on_a_killed_server_is_answered_by_the_next_one(
    first: str, second: str, tmp_path: Path
) -> None:
    if not _rabbit.rabbitmq_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (start it: .ci/run does)")
    name = unique_name()
    config = write_config(tmp_path)
    release = tmp_path / "release"
    processes: list[FarineProcess] = []
    try:
        processes.append(server := start(name, config, first))
        with subprocess.Popen(
            call_command(f"{name}.block", f'["{release}"]', "--timeout", "40", config=config),
            env=call_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as caller:  # fmt: skip
            server.wait_for(r"block: waiting for")  # the request is delivered, unacked
            server.proc.kill()  # SIGKILL: no reply, no ack, no goodbye
            assert server.wait(timeout=15) == -9
            release.touch()  # the next instance answers at once
            processes.append(server := start(name, config, second))
            server.expect(r"block: waiting for")
            out, err = caller.communicate(timeout=30)
        assert caller.returncode == 0, err
        assert out == f'{{"pid":{server.proc.pid}}}\n'
    finally:
        for process in processes:
            with contextlib.suppress(AssertionError):
                stop(process)
        delete_service(name)


def test_call_refuses_the_in_process_memory_broker() -> None:
    # No configuration: amqp_uri is memory://, which no other process can reach.
    done = subprocess.run(
        [sys.executable, "-m", "farine", "call", "svc.add", "[1]"],
        env=call_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "`farine call` needs a broker other processes share (RabbitMQ)" in done.stderr
    assert "amqp_uri of [svc] is memory://" in done.stderr


def test_call_to_an_unreachable_broker_gives_up_within_its_timeout(tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text(f"[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:{free_port()}/\n")
    began = time.monotonic()
    done = subprocess.run(
        call_command("svc.add", "[1]", "--timeout", "1", config=config),
        env=call_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        "farine: error: timeout: cannot reach the broker: cannot connect to the AMQP broker"
        in done.stderr
    )
    assert time.monotonic() - began < 15  # not connect_retry_timeout's 60 s


SCRIPT = """
import farine.rpc, farine.settings
farine.settings.use(farine.settings.Config.from_string(
    "[DEFAULT]\\namqp_uri = amqp://guest:guest@127.0.0.1:{port}/\\nconnect_retry_timeout = 0.2\\n"
))
farine.rpc.Client("svc").method()
"""


def test_script_whose_call_failed_to_connect_still_exits() -> None:
    # The blocking client's event loop thread must not keep the interpreter from exiting.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(port=free_port())],
        env=call_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        "ServiceUnavailable: timeout: cannot reach the broker: cannot connect to the AMQP broker"
        in done.stderr
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_prints_the_remote_traceback_only_with_the_option(
    backend: str, tmp_path: Path
) -> None:
    name = unique_name()
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "rpc_send_traceback = true\n")
    try:
        process = start(name, config, backend)
        try:
            app = App(name, config, backend, process)
            done = farine_call(app, f"{name}.fail", '["boom"]')
            assert done.returncode == 1
            # The server sent its traceback; by default only the type and message show.
            assert done.stderr == f"farine: error: {name}.fail failed: ValueError: boom\n"
            done = farine_call(app, f"{name}.fail", '["boom"]', "--traceback")
            assert done.returncode == 1
            assert done.stderr.startswith("Traceback (most recent call last):\n")
            assert 'methods.py", line' in done.stderr  # the user's frame, not farine's
            assert f"{os.sep}farine{os.sep}" not in done.stderr
            assert done.stderr.endswith(f"farine: error: {name}.fail failed: ValueError: boom\n")
        finally:
            stop(process)
    finally:
        delete_service(name)
