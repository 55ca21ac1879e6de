"""`farine start` in a subprocess, as users run it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def _read_until(stream: TextReceiveStream, text: str, seen: list[str]) -> None:
    async for chunk in stream:
        seen.append(chunk)
        if text in "".join(seen):
            return
    raise AssertionError(f"{text!r} never logged:\n{''.join(seen)}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_pingpong_example_runs_on_the_memory_broker(backend: str, tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text("[DEFAULT]\nshutdown_timeout = 5\n")  # no amqp_uri: memory:// is the default
    command = [sys.executable, "-m", "farine", "start", "pingpong", "--backend", backend]
    seen: list[str] = []
    async with await anyio.open_process(
        command, cwd=EXAMPLES, env={"FARINE_INI": str(config), "PYTHONPATH": str(EXAMPLES)}
    ) as process:
        assert process.stderr is not None
        stream = TextReceiveStream(process.stderr)
        with anyio.fail_after(30):
            await _read_until(stream, "pong: received ball 2 from ping", seen)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await _read_until(stream, "farine.runtime: stopped", seen)
            code = await process.wait()
    output = "".join(seen)
    assert code == 0, output
    assert "AMQP broker: memory:// (in-process memory broker)" in output
    assert "ready: pong, ping" in output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_rpcdemo_example_runs_on_the_memory_broker(backend: str, tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text("[DEFAULT]\nshutdown_timeout = 5\n")  # memory://: both in this process
    command = [sys.executable, "-m", "farine", "start", "rpcdemo", "--backend", backend]
    seen: list[str] = []
    async with await anyio.open_process(
        command, cwd=EXAMPLES, env={"FARINE_INI": str(config), "PYTHONPATH": str(EXAMPLES)}
    ) as process:
        assert process.stderr is not None
        stream = TextReceiveStream(process.stderr)
        with anyio.fail_after(30):
            await _read_until(stream, "client: done", seen)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await _read_until(stream, "farine.runtime: stopped", seen)
            code = await process.wait()
    output = "".join(seen)
    assert code == 0, output
    assert "client: server.dummy() returned True" in output
    assert "streamed 'a'" in output
    assert output.index("streamed 'a'") < output.index("streamed 'b'")


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
