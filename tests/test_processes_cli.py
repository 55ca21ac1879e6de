"""`farine start --reload` and `--log-format json`, in subprocesses, as users run them."""

from __future__ import annotations

import re
import signal
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tests._proc import FarineProcess, run_farine

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = """
import logging

import farine.amqp
import farine.execute

log = logging.getLogger("reloadapp")


class Reloadapp:
    @farine.execute.method(restart=False)
    def hello(self):
        log.info("running version %s", VERSION)

    @farine.amqp.consume(routing_key="keepalive")  # keeps the process running
    def keepalive(self, body, message):
        pass


VERSION = 1
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_reload_restarts_the_services_when_a_file_changes(backend: str, tmp_path: Path) -> None:
    package = tmp_path / "reloadapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    service = package / "service.py"
    service.write_text(SERVICE)
    proc = FarineProcess("start", "reloadapp", "--reload", "--backend", backend, cwd=tmp_path)
    try:
        proc.wait_for(r"reload: watching Python and INI files under .*reloadapp")
        proc.wait_for(r"runtime: ready: reloadapp")
        proc.expect(r"running version 1")  # logged from a worker thread: maybe before
        service.write_text(SERVICE.replace("VERSION = 1", "VERSION = 2"))
        proc.wait_for(r"reload: .*service\.py changed; restarting the worker\(s\)")
        proc.wait_for(r"farine\.runtime: stopped")  # drained first
        proc.wait_for(r"running version 2")
        (package / "notes.txt").write_text("not watched")
        (package / "local.ini").write_text("[DEFAULT]\n")
        proc.wait_for(r"reload: .*local\.ini changed")
        proc.wait_for(r"running version 2")
        proc.signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "notes.txt" not in proc.output


def test_reload_of_a_missing_module_is_a_usage_error(tmp_path: Path) -> None:
    code, output = run_farine("start", "no_such_module", "--reload", cwd=tmp_path)
    assert code == 2, output
    assert "no module named 'no_such_module'" in output


def test_json_logs_are_one_object_per_line_secrets_masked_and_calls_labelled(
    tmp_path: Path,
) -> None:
    ini = tmp_path / "farine.ini"
    ini.write_text(
        "[DEFAULT]\namqp_uri = amqp://app:Sup3rS3cret@127.0.0.1:5672/vh\n"
        "db_password = An0therS3cret\nlog_format = json\n"
    )
    code, out = run_farine("start", "secretlog", "--config", str(ini))
    assert code == 0, out
    assert "Sup3rS3cret" not in out
    assert "An0therS3cret" not in out
    records: list[dict[str, Any]] = [msgspec.json.decode(line) for line in out.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    [uri] = [r for r in records if r["message"].startswith("uri is")]
    assert uri["message"] == "uri is amqp://app:***@127.0.0.1:5672/vh"
    assert (uri["service"], uri["entrypoint"], uri["message_id"]) == (
        "secretlog",
        "secretlog.show",
        None,
    )
    [failure] = [r for r in records if "exception" in r]
    assert failure["entrypoint"] == "secretlog.show"
    assert "RuntimeError: failed connecting to amqp://app:***@127.0.0.1" in failure["exception"]
    assert all("service" not in r for r in records if r["logger"] == "farine.cli")


def test_log_format_option_overrides_the_setting(tmp_path: Path) -> None:
    ini = tmp_path / "farine.ini"
    ini.write_text("[DEFAULT]\nlog_format = json\n")
    code, out = run_farine("start", "once", "--config", str(ini), "--log-format", "text")
    assert code == 0, out
    assert "once ran" in out
    assert not any(line.startswith("{") for line in out.splitlines())


def test_workers_stop_gracefully_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    package = tmp_path / "reloadapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "service.py").write_text(SERVICE)
    proc = FarineProcess("start", "reloadapp", "--workers", "2", cwd=tmp_path)
    try:
        proc.wait_for(r"runtime: ready: reloadapp")
        proc.wait_for(r"runtime: ready: reloadapp")
        proc.proc.kill()  # the supervisor only: its workers outlive it, for a moment
        proc.wait_for(r"the supervisor is gone: stopping")
        proc.wait_for(r"the supervisor is gone: stopping")
        code = proc.wait(30)  # returns once both workers closed their output too
    finally:
        proc.kill()
    assert code == -9
    assert proc.output.count("farine.runtime: stopped") == 2, proc.output


def test_each_worker_serves_the_operations_endpoint_of_its_own(tmp_path: Path) -> None:
    package = tmp_path / "reloadapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "service.py").write_text(SERVICE)
    # Port 0: each worker picks a free port (with a fixed one, worker N takes port + N - 1).
    proc = FarineProcess(
        "start", "reloadapp", "--workers", "2", "--http", "127.0.0.1:0", cwd=tmp_path
    )
    try:
        # Each worker logs its endpoint, then that it is ready; the workers' lines
        # interleave in any order, so read them all with one pattern.
        lines = [
            proc.wait_for(r"operations endpoint: http://|runtime: ready: reloadapp")
            for _ in range(4)
        ]
        urls = {_endpoint(line) for line in lines if "operations endpoint" in line}
        answers = [_status(url + "/readyz") for url in sorted(urls)]
        proc.signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert len(urls) == 2, proc.output
    assert answers == [200, 200]
    assert code == 0, proc.output


def _endpoint(line: str) -> str:
    found = re.search(r"(http://[^\s(]+)", line)
    assert found is not None, line
    return found.group(1).rstrip("/")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
