"""The real `farine` command in a subprocess, as users run it, on both backends."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

import farine
from tests._proc import ROOT, FarineProcess, run_farine

if TYPE_CHECKING:
    from pathlib import Path

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_waits_for_in_flight_sync_and_async_calls_then_exits_0(backend: str) -> None:
    proc = FarineProcess("start", "inflight", "--backend", backend)
    try:
        proc.wait_for(r"ready: inflight")
        proc.expect(r"sync started")
        proc.expect(r"async started")
        proc.signal(signal.SIGTERM)
        code = proc.wait(20)
    finally:
        proc.kill()
    out = proc.output
    assert code == 0, out
    assert "received SIGTERM: stopping" in out
    # The calls in flight at the signal finished after it: nothing was cut short...
    stop_at = out.index("received SIGTERM")
    assert "sync finished" in out[stop_at:]
    assert "async finished" in out[stop_at:]
    # ...and every run that started (one may start just before the stop) finished.
    for kind in ("sync", "async"):
        assert out.count(f": {kind} started") == out.count(f": {kind} finished") >= 1
    assert "service stopped: inflight" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigint_is_graceful_and_shows_no_traceback(backend: str) -> None:
    proc = FarineProcess("start", "inflight", "--backend", backend)
    try:
        proc.wait_for(r"sync started")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "received SIGINT: stopping" in proc.output
    assert "Traceback" not in proc.output
    assert "ExceptionGroup" not in proc.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_signal_exits_at_once(backend: str) -> None:
    proc = FarineProcess("start", "stubborn", "--backend", backend)
    try:
        proc.wait_for(r"blocking started")
        proc.signal(signal.SIGTERM)
        proc.wait_for(r"stopping service stubborn")
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(10)
        elapsed = time.monotonic() - began
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, proc.output
    assert "received SIGTERM again: exiting now" in proc.output
    assert elapsed < 10
    assert "blocking finished" not in proc.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_timeout_abandons_a_stuck_thread_and_exits_0(backend: str, tmp_path: Path) -> None:
    ini = tmp_path / "farine.ini"
    ini.write_text("[stubborn]\nshutdown_timeout = 0.5\n")
    proc = FarineProcess("start", "stubborn", "--backend", backend, "--config", str(ini))
    try:
        proc.wait_for(r"blocking started")
        proc.signal(signal.SIGTERM)
        code = proc.wait(15)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "shutdown_timeout (0.5s) reached" in proc.output
    assert "blocking finished" not in proc.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_once_service_exits_by_itself(backend: str) -> None:
    code, out = run_farine("start", "once", "--backend", backend)
    assert code == 0, out
    assert "once ran" in out
    assert "service stopped: once" in out


def test_failing_method_is_restarted_while_its_sibling_keeps_working() -> None:
    proc = FarineProcess("start", "crashy", "--backend", "trio")
    try:
        proc.wait_for(r"crashy.fail raised \(run 3\)")
        proc.wait_for(r"still working 3")
        proc.signal(signal.SIGTERM)
        code = proc.wait(15)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "RuntimeError: boom" in proc.output


def test_missing_module_exits_2_with_one_clear_line() -> None:
    code, out = run_farine("start", "no_such_module")
    assert code == 2
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert errors == [
        "farine: error: no module named 'no_such_module.service' "
        "(is 'no_such_module' importable from here?)"
    ]
    assert "Traceback" not in out


def test_import_error_inside_the_module_shows_its_traceback_and_exits_1() -> None:
    code, out = run_farine("start", "broken")
    assert code == 1
    assert "Traceback" in out
    assert "this_dependency_does_not_exist" in out


def test_legacy_start_flag_runs_the_module() -> None:
    code, out = run_farine("--start=once")
    assert code == 0, out
    assert "once ran" in out
    code, out = run_farine("-s", "once", "--backend", "trio")
    assert code == 0, out
    assert "on trio" in out


def test_several_modules_in_one_process() -> None:
    code, out = run_farine("start", "once", "multi")
    assert code == 0, out
    assert "starting 3 service(s) from once, multi" in out
    assert out.index("service ready: once") < out.index("service ready: zeta")
    assert out.index("service ready: zeta") < out.index("service ready: alpha")


def test_version() -> None:
    code, out = run_farine("--version")
    assert code == 0
    assert out.strip() == f"farine {farine.__version__}"


def test_unknown_backend_is_a_usage_error_not_a_traceback() -> None:
    code, out = run_farine("start", "once", "--backend", "curio")
    assert code == 2
    assert "invalid choice: 'curio'" in out
    assert "Traceback" not in out


def test_no_command_is_a_usage_error() -> None:
    code, out = run_farine()
    assert code == 2
    assert "nothing to do" in out


def test_bad_config_value_is_one_clear_line(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[once]\nmax_workers = lots\n")
    code, out = run_farine("start", "once", "--config", str(ini))
    assert code == 2
    assert f"farine: error: {ini} [once] max_workers = 'lots': expected an integer" in out
    assert "Traceback" not in out


def test_missing_named_config_is_an_error(tmp_path: Path) -> None:
    code, out = run_farine("start", "once", "--config", str(tmp_path / "absent.ini"))
    assert code == 2
    assert "configuration file not found" in out


def test_passwords_never_appear_in_logs_or_errors(tmp_path: Path) -> None:
    ini = tmp_path / "farine.ini"
    ini.write_text(
        "[DEFAULT]\namqp_uri = amqp://app:Sup3rS3cret@127.0.0.1:5672/vh\n"
        "db_password = An0therS3cret\n"
    )
    code, out = run_farine("start", "secretlog", "--config", str(ini))
    assert code == 0, out
    assert "uri is amqp://app:***@127.0.0.1:5672/vh" in out
    assert "password is ***" in out
    assert "RuntimeError: failed connecting to amqp://app:***@127.0.0.1" in out
    assert "Sup3rS3cret" not in out
    assert "An0therS3cret" not in out


def test_log_level_option_hides_info_lines() -> None:
    code, out = run_farine("start", "once", "--log-level", "warning")
    assert code == 0, out
    assert "service ready" not in out
    assert "once ran" not in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_ticker_example_restarts_its_methods_and_stops_within_shutdown_timeout(
    backend: str,
) -> None:
    examples = ROOT / "examples"
    proc = FarineProcess("start", "ticker", "--backend", backend, cwd=examples)
    try:
        proc.wait_for(r"tick 2 from a worker thread")  # the `def` method ran again
        proc.expect(r"tick from the event loop")
        proc.signal(signal.SIGTERM)
        began = time.monotonic()
        code = proc.wait(40)
        elapsed = time.monotonic() - began
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert elapsed < 30  # the default shutdown_timeout
    assert "service stopped: ticker" in proc.output
