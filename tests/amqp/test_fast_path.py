"""The fast-path switch: `amqp_fast_path`, `FARINE_AMQP_FAST_PATH` and the version gate."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from farine._broker import AmqpConnection, ConnectionOptions, open_connection
from farine._broker.aiormq import fastpath
from farine._broker.aiormq.fastpath import ENV_VAR, decide
from farine._broker.aiormq.hosts import ServiceLoopHost
from farine._broker.aiormq.stepped import SteppedDriver
from tests.amqp import _rabbit

VERIFIED = {"python": ("3.11",), "aiormq": ("7.2.4",), "pamqp": ("4.0.1",)}
ON_VERIFIED = {"python": "3.11", "aiormq": "7.2.4", "pamqp": "4.0.1"}
NEW_AIORMQ = {"python": "3.11", "aiormq": "7.3.0", "pamqp": "4.0.1"}

#: The private names the fast path relies on (the before-stop hook's list).
PRIVATE_NAMES = re.compile(
    r"_run_once|_Channel__|FrameReceiver|_confirm_delivery|_set_running_loop"
    r"|_get_running_loop|PARENT_TASK_DATA|_core\._eventloop|threadlocals|_thread_id"
    r"|_asyncgen_firstiter|_on_deliver_frame|_read_content|_split_body|DOMAIN_REGEX"
    r"|transport\.max_size"
)
FARINE = Path(__file__).resolve().parents[2] / "farine"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_auto_runs_the_fast_path_on_verified_versions() -> None:
    decision = decide("auto", installed=ON_VERIFIED, verified=VERIFIED)
    assert decision.enabled
    assert decision.reason == "verified versions"


def test_auto_takes_the_stock_path_on_an_unverified_aiormq_and_says_which() -> None:
    decision = decide("auto", installed=NEW_AIORMQ, verified=VERIFIED)
    assert not decision.enabled
    assert decision.reason == "versions not verified for it: aiormq 7.3.0"


def test_an_unverified_python_is_named_too() -> None:
    installed = dict(ON_VERIFIED, python="3.14")
    decision = decide("auto", installed=installed, verified=VERIFIED)
    assert not decision.enabled
    assert "python 3.14" in decision.reason


def test_on_tries_unverified_versions_and_off_never_runs_it() -> None:
    assert decide("on", installed=NEW_AIORMQ, verified=VERIFIED).enabled
    assert not decide("off", installed=ON_VERIFIED, verified=VERIFIED).enabled


def test_the_environment_variable_overrides_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "OFF")
    assert not decide("on", installed=ON_VERIFIED, verified=VERIFIED).enabled
    monkeypatch.setenv(ENV_VAR, "on")
    assert decide("off", installed=NEW_AIORMQ, verified=VERIFIED).enabled


def test_a_bad_value_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ValueError, match=r"^amqp_fast_path = 'fast': expected one of auto, on, off$"
    ):
        decide("fast")
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(ValueError, match=rf"^{ENV_VAR} = 'yes': expected one of auto, on, off$"):
        decide("auto")


def test_the_verified_versions_are_data_beside_the_fast_path() -> None:
    verified = fastpath.verified_versions()
    assert set(verified) == {"python", "aiormq", "pamqp"}
    assert all(verified.values()), verified
    assert "3.11" in verified["python"]


def test_no_private_name_of_a_dependency_is_used_outside_the_fast_path() -> None:
    found = [
        f"{path.relative_to(FARINE)}:{number}: {line.strip()}"
        for path in FARINE.rglob("*.py")
        if "fastpath" not in path.parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_NAMES.search(line)
    ]
    assert found == []


def test_with_the_fast_path_off_no_fast_module_is_imported() -> None:
    script = (
        "import sys, anyio\n"
        "from farine._broker import ConnectionOptions, open_connection\n"
        "async def main():\n"
        f"    async with open_connection({_rabbit.RABBITMQ_URI!r}, ConnectionOptions()) as c:\n"
        "        assert c.path == 'stock', c.path\n"
        "for backend in ('asyncio', 'trio'):\n"
        "    anyio.run(main, backend=backend)\n"
        "fast = sorted(m for m in sys.modules if m.startswith('farine._broker.aiormq.fastpath.'))\n"
        "print(fast)\n"
    )
    env = dict(os.environ, **{ENV_VAR: "off"})
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.anyio
@pytest.mark.rabbitmq
async def test_an_unverified_aiormq_opens_a_stock_connection_and_logs_why_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    monkeypatch.setattr(fastpath, "installed_versions", lambda: NEW_AIORMQ)
    monkeypatch.setattr(fastpath, "verified_versions", lambda: VERIFIED)
    monkeypatch.setattr(fastpath, "_logged", set[fastpath.Decision]())
    caplog.set_level(logging.INFO, logger="farine.amqp")
    for _ in range(2):
        async with open_connection(_rabbit.RABBITMQ_URI, ConnectionOptions()) as connection:
            assert isinstance(connection, AmqpConnection)
            assert connection.path == "stock"
            expected = ServiceLoopHost if anyio_backend == "asyncio" else SteppedDriver
            assert isinstance(connection.host, expected)
    lines = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert lines == [
        "AMQP fast path off: versions not verified for it: aiormq 7.3.0; "
        "using aiormq's documented API"
    ]


@pytest.mark.anyio
@pytest.mark.rabbitmq
async def test_on_over_an_unverified_aiormq_warns_and_tries_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "installed_versions", lambda: NEW_AIORMQ)
    monkeypatch.setattr(fastpath, "verified_versions", lambda: VERIFIED)
    monkeypatch.setattr(fastpath, "_logged", set[fastpath.Decision]())
    options = ConnectionOptions(fast_path="on")
    async with open_connection(_rabbit.RABBITMQ_URI, options) as connection:
        assert isinstance(connection, AmqpConnection)
        assert connection.path == "fast"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "AMQP fast path: amqp_fast_path = on, on versions not verified: aiormq 7.3.0; it may fail"
    ]
