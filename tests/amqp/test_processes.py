"""`farine start --workers N` against RabbitMQ, in subprocesses, as users run it."""

from __future__ import annotations

import os
import re
import signal
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from farine.amqp import Publisher
from farine.settings import Config
from tests._proc import FarineProcess
from tests.amqp import _rabbit

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.rabbitmq

JOBS = 30


def _publish_jobs(exchange: str, first: int, count: int) -> None:
    settings = Config.from_string(f"[DEFAULT]\namqp_uri = {_rabbit.RABBITMQ_URI}\n").service("t")
    publisher = Publisher(exchange, "job", settings=settings)
    for n in range(first, first + count):
        publisher.send({"n": n})


def _done_by(proc: FarineProcess, count: int) -> dict[int, str]:
    """Wait for `count` more jobs done; return job number -> worker number."""
    done: dict[int, str] = {}
    while len(done) < count:
        line = proc.wait_for(r"job \d+ done by worker \d", timeout=30)
        match = re.search(r"job (\d+) done by worker (\d)", line)
        assert match is not None
        done[int(match[1])] = match[2]
    return done


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_workers_share_a_queue_are_restarted_and_drain_on_sigterm(
    backend: str, tmp_path: Path
) -> None:
    exchange = f"farine-test-workers-{uuid.uuid4().hex[:10]}"
    config = tmp_path / "farine.ini"
    config.write_text(f"[DEFAULT]\namqp_uri = {_rabbit.RABBITMQ_URI}\nshutdown_timeout = 10\n")
    proc = FarineProcess(
        "start", "workerapp", "--workers", "2", "--backend", backend, "--config", str(config),
        env={"WORKERAPP_EXCHANGE": exchange},
    )  # fmt: skip
    try:
        pids: dict[str, int] = {}
        for _ in range(2):
            line = proc.wait_for(r"worker \d started \(pid \d+\)")
            match = re.search(r"worker (\d) started \(pid (\d+)\)", line)
            assert match is not None
            pids[match[1]] = int(match[2])
        assert sorted(pids) == ["1", "2"]
        proc.wait_for(r"runtime: ready: workerapp")
        proc.wait_for(r"runtime: ready: workerapp")

        _publish_jobs(exchange, 0, JOBS)
        done = _done_by(proc, JOBS)
        assert sorted(done) == list(range(JOBS))
        assert set(done.values()) == {"1", "2"}, done  # both took a share

        os.kill(pids["1"], signal.SIGKILL)
        proc.wait_for(r"worker 1 exited with code -9; restarting it in 0\.5s")
        restarted = proc.wait_for(r"worker 1 started \(pid \d+\)")
        assert f"(pid {pids['1']})" not in restarted
        proc.wait_for(r"runtime: ready: workerapp")
        _publish_jobs(exchange, JOBS, JOBS)
        assert sorted(_done_by(proc, JOBS)) == list(range(JOBS, 2 * JOBS))

        proc.signal(signal.SIGTERM)
        proc.wait_for(r"received SIGTERM: stopping 2 worker\(s\) gracefully")
        code = proc.wait(40)
    finally:
        proc.kill()
        anyio.run(_rabbit.delete, [f"{exchange}-jobs"], [exchange])
    assert code == 0, proc.output
    assert proc.output.count("farine.runtime: stopped") == 2, proc.output
    assert "all 2 worker(s) stopped" in proc.output
