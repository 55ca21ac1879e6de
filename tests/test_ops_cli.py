"""`farine start MODULE --http HOST:PORT`, as users run it: readiness around SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request

import pytest

from tests._proc import FarineProcess, run_farine

BACKENDS = ["asyncio", "trio"]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_readyz_says_503_from_the_moment_sigterm_arrives(backend: str) -> None:
    proc = FarineProcess("start", "inflight", "--backend", backend, "--http", "127.0.0.1:0")
    try:
        line = proc.wait_for(r"operations endpoint: http://")
        found = re.search(r"(http://\S+)", line)
        assert found is not None
        base = found.group(1)
        proc.wait_for(r"ready: inflight")
        assert _get(base + "/readyz") == (200, '{"ready": true}\n')
        assert _get(base + "/livez") == (200, "ok\n")
        proc.expect(r"sync started")
        proc.expect(r"async started")
        proc.signal(signal.SIGTERM)
        proc.wait_for(r"received SIGTERM: stopping")
        # The calls in flight take over a second to drain: the endpoint still answers.
        status, body = _get(base + "/readyz")
        code = proc.wait(20)
    finally:
        proc.kill()
    assert (status, json.loads(body)) == (
        503,
        {"ready": False, "not_ready": {"runtime": "stopping"}},
    )
    assert code == 0, proc.output
    assert "Traceback" not in proc.output


def test_a_bad_http_address_is_a_usage_error() -> None:
    code, out = run_farine("start", "inflight", "--http", "localhost")
    assert code == 2
    assert "--http: the operations endpoint address must be HOST:PORT, not 'localhost'" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_port_in_use_fails_the_start_with_one_line(backend: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out = run_farine(
            "start", "inflight", "--backend", backend, "--http", f"127.0.0.1:{port}"
        )
    assert code != 0
    assert f"cannot serve the operations endpoint on 127.0.0.1:{port}" in out
    assert "Traceback" not in out
