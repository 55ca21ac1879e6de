"""`farine start` in a subprocess, as users run it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest

from tests._proc import FarineProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run_example(module: str, backend: str, tmp_path: Path, until: str) -> str:
    """`farine start MODULE` from examples/ until `until` is logged, then SIGTERM; its log."""
    config = tmp_path / "farine.ini"
    config.write_text("[DEFAULT]\nshutdown_timeout = 5\n")  # no amqp_uri: memory://
    proc = FarineProcess(
        "start", module, "--backend", backend, cwd=EXAMPLES, env={"FARINE_INI": str(config)}
    )
    try:
        proc.wait_for(until, timeout=30)
        proc.signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "farine.runtime: stopped" in proc.output
    return proc.output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pingpong_example_runs_on_the_memory_broker(backend: str, tmp_path: Path) -> None:
    output = _run_example("pingpong", backend, tmp_path, "pong: received ball 2 from ping")
    assert "AMQP broker: memory:// (in-process memory broker)" in output
    assert "ready: pong, ping" in output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpcdemo_example_runs_on_the_memory_broker(backend: str, tmp_path: Path) -> None:
    output = _run_example("rpcdemo", backend, tmp_path, "client: done")
    assert "client: server.dummy() returned True" in output
    assert "streamed 'a'" in output
    assert output.index("streamed 'a'") < output.index("streamed 'b'")


@pytest.mark.anyio
async def test_start_exits_non_zero_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    from tests.amqp._proxy import free_port

    config = tmp_path / "farine.ini"
    config.write_text(
        f"[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:{free_port()}/\n"
        "connect_retry_timeout = 0.5\n"
    )
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, "-m", "farine", "start", "pingpong"],
            cwd=EXAMPLES,
            env={"FARINE_INI": str(config), "PYTHONPATH": str(EXAMPLES)},
            check=False,
        )
    errors = done.stderr.decode()
    assert done.returncode == 1, errors
    assert (
        "farine: error: cannot connect to the AMQP broker at amqp://guest:***@127.0.0.1" in errors
    )
