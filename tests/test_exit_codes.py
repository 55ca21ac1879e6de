"""Each row of the exit-code table of docs/running.md, through the real `farine` command.

Every failure is one line, `farine: error: ...`, with no traceback and no line from a
library repeating it.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests._proc import ROOT, FarineProcess, run_farine
from tests.amqp._proxy import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

EXAMPLES = ROOT / "examples"


def _errors(out: str) -> list[str]:
    """farine's error lines, and any line logged at ERROR."""
    return [
        line
        for line in out.splitlines()
        if line.startswith("farine: error") or " ERROR " in line or "CRITICAL" in line
    ]


def _assert_one_line(out: str, expected: str) -> None:
    assert _errors(out) == [f"farine: error: {expected}"], out
    assert "Traceback" not in out


# -- 0: the command did its work --------------------------------------------------------


def test_0_start_stopped_by_itself(tmp_path: Path) -> None:
    code, out = run_farine("start", "once")
    assert code == 0, out
    assert "service stopped: once" in out


def test_0_migrate_then_again_says_nothing_changed(tmp_path: Path) -> None:
    ini = tmp_path / "farine.ini"
    ini.write_text(f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {tmp_path / 'users.sqlite'}\n")
    code, out = run_farine("migrate", "users", "--config", str(ini), cwd=EXAMPLES)
    assert code == 0, out
    assert "tables user created" in out
    code, out = run_farine("migrate", "users", "--config", str(ini), cwd=EXAMPLES)
    assert code == 0, out
    assert "nothing changed: tables user already exist" in out


# -- 1: a runtime failure ---------------------------------------------------------------


def _refusing_config(tmp_path: Path, extra: str = "") -> Path:
    """A configuration whose broker port refuses connections, with the default limits."""
    ini = tmp_path / "farine.ini"
    ini.write_text(f"[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:{free_port()}/\n{extra}")
    return ini


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_1_start_with_a_refused_port_fails_within_15s(backend: str, tmp_path: Path) -> None:
    ini = _refusing_config(tmp_path)
    began = time.monotonic()
    code, out = run_farine(
        "start", "pingpong", "--config", str(ini), "--backend", backend, cwd=EXAMPLES
    )
    elapsed = time.monotonic() - began
    assert code == 1, out
    assert elapsed < 15, out  # connect_retry_timeout's default: 10 s
    [error] = _errors(out)
    assert error.startswith("farine: error: cannot connect to the AMQP broker at amqp://guest:***@")
    assert "connection refused (nothing listens there" in error
    assert error.endswith("connect_retry_timeout = 10s)")
    # farine's WARNING per attempt, and no ERROR line of aiormq's repeating it.
    assert " aiormq." not in out  # no line of aiormq's own loggers
    assert "retrying in" in out
    assert "Traceback" not in out


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["on", "off"])
def fast_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_rpcapp(
    backend: str, fast_path: str, tmp_path: Path
) -> Iterator[Callable[[int], FarineProcess]]:
    """Start `farine start rpcapp` (an RPC service: two connections) on a refused port,
    with `connect_retry_timeout` as given; the process is killed at the end."""
    started: list[FarineProcess] = []

    def start(retry_timeout: int) -> FarineProcess:
        ini = _refusing_config(tmp_path, f"connect_retry_timeout = {retry_timeout}\n")
        env = {"FARINE_AMQP_FAST_PATH": fast_path}
        args = ("start", "rpcapp", "--config", str(ini), "--backend", backend)
        started.append(FarineProcess(*args, env=env))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()


def test_1_rpc_service_with_a_refused_port_fails_within_its_retry_timeout(
    start_rpcapp: Callable[[int], FarineProcess],
) -> None:
    # An RPC service opens a second connection while the first one's failure cancels
    # start-up: on trio, that connection's loop driver used to keep the process alive.
    proc = start_rpcapp(2)
    code = proc.wait(12)  # 2 s of retries, and start-up
    assert code == 1, proc.output
    [error] = _errors(proc.output)
    assert error.startswith("farine: error: cannot connect to the AMQP broker at amqp://"), error
    assert error.endswith("connect_retry_timeout = 2s)"), error
    assert "Traceback" not in proc.output


def test_0_rpc_service_stopped_by_sigterm_while_connecting(
    start_rpcapp: Callable[[int], FarineProcess],
) -> None:
    proc = start_rpcapp(60)
    proc.wait_for(r"cannot connect to .*; retrying in")
    proc.signal(signal.SIGTERM)
    code = proc.wait(5)  # far less than the 60 s of retries left
    assert code == 0, proc.output
    assert _errors(proc.output) == [], proc.output
    assert "farine.runtime: stopped" in proc.output


def test_1_call_with_a_refused_port_blames_connect_retry_timeout(tmp_path: Path) -> None:
    ini = _refusing_config(tmp_path)
    began = time.monotonic()
    code, out = run_farine("call", "rpcapp.add", "[1, 2]", "--config", str(ini))
    assert time.monotonic() - began < 15
    assert code == 1, out
    [error] = _errors(out)
    assert error.startswith(
        "farine: error: timeout: cannot reach the broker: cannot connect to the AMQP broker"
    )
    assert "connection refused" in error
    assert error.endswith("connect_retry_timeout = 10s)")
    assert " aiormq." not in out  # no line of aiormq's own loggers


def test_1_call_with_a_refused_port_blames_the_calls_timeout(tmp_path: Path) -> None:
    ini = _refusing_config(tmp_path)
    code, out = run_farine("call", "rpcapp.add", "[1, 2]", "--config", str(ini), "--timeout", "1")
    assert code == 1, out
    [error] = _errors(out)
    assert error.endswith("; the call's timeout = 1s)"), error
    assert "connect_retry_timeout" not in error


def test_1_call_blames_rpc_timeout_when_it_is_shorter(tmp_path: Path) -> None:
    ini = _refusing_config(tmp_path, "rpc_timeout = 1\n")
    code, out = run_farine("call", "rpcapp.add", "[1, 2]", "--config", str(ini))
    assert code == 1, out
    [error] = _errors(out)
    assert error.endswith("; rpc_timeout = 1s)"), error


def test_1_the_modules_own_import_error() -> None:
    code, out = run_farine("start", "broken")
    assert code == 1, out
    assert "this_dependency_does_not_exist" in out


# -- 2: usage, configuration, module not found ------------------------------------------


def _ini(tmp_path: Path, text: str) -> str:
    ini = tmp_path / "farine.ini"
    ini.write_text(text)
    return str(ini)


def test_2_bad_command_line() -> None:
    code, out = run_farine("call", "not-a-target")
    assert code == 2, out
    assert "expected SERVICE.METHOD" in out


def test_2_module_not_found() -> None:
    code, out = run_farine("start", "no_such_module")
    assert code == 2
    _assert_one_line(
        out, "no module named 'no_such_module.service' (is 'no_such_module' importable from here?)"
    )


def test_2_package_without_a_service_module() -> None:
    code, out = run_farine("start", "noservice")
    assert code == 2
    _assert_one_line(
        out,
        "no module named 'noservice.service': 'noservice' has no service module "
        "(put the services in noservice/service.py)",
    )


def test_2_module_without_services_is_one_line() -> None:
    # At WARNING, nothing else is logged: the error is the whole output, no warning of
    # discovery's repeating it.
    code, out = run_farine("start", "nothing", "--log-level", "WARNING")
    assert code == 2, out
    assert out.splitlines() == [
        "farine: error: nothing to run: no service in nothing "
        "(a service is a class with a decorated method, in MODULE/service.py)"
    ]


def test_2_migrate_of_a_missing_module_names_the_module() -> None:
    code, out = run_farine("migrate", "no_such_module")
    assert code == 2
    _assert_one_line(
        out, "no module named 'no_such_module' (is 'no_such_module' importable from here?)"
    )


def test_2_missing_db_user(tmp_path: Path) -> None:
    ini = _ini(tmp_path, "[DEFAULT]\ndb_connector = postgres\ndb_name = shop\n")
    code, out = run_farine("start", "once", "--config", ini)
    assert code == 2
    _assert_one_line(
        out,
        f"{ini}: service once: db_connector = postgres requires db_user "
        "(set it in [DEFAULT] or [once])",
    )


def test_2_unknown_db_connector(tmp_path: Path) -> None:
    ini = _ini(tmp_path, "[DEFAULT]\ndb_connector = oracle\ndb_name = shop\n")
    code, out = run_farine("start", "once", "--config", ini)
    assert code == 2
    _assert_one_line(
        out, f"{ini}: service once: db_connector = 'oracle': expected one of postgres, sqlite"
    )


def test_2_sse_listener_without_an_endpoint() -> None:
    code, out = run_farine("start", "nosseendpoint")
    assert code == 2
    _assert_one_line(
        out,
        "listener.on_event: no SSE endpoint: pass farine.stream.http(endpoint=...) or set "
        "`endpoint` in the [listener] section of <defaults>",
    )


def test_2_bad_setting_value(tmp_path: Path) -> None:
    ini = _ini(tmp_path, "[once]\nconnect_retry_timeout = soon\n")
    code, out = run_farine("start", "once", "--config", ini)
    assert code == 2
    assert f"farine: error: {ini} [once] connect_retry_timeout = 'soon'" in out


# -- 130: a second signal while stopping ------------------------------------------------


def test_130_second_sigint_exits_at_once() -> None:
    proc = FarineProcess("start", "stubborn")
    try:
        proc.wait_for(r"blocking started")
        proc.signal(signal.SIGINT)
        proc.wait_for(r"stopping service stubborn")
        proc.signal(signal.SIGINT)
        code = proc.wait(10)
    finally:
        proc.kill()
    assert code == 130, proc.output
    assert "received SIGINT again: exiting now" in proc.output
