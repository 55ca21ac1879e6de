"""Faults with a ledger: nothing confirmed is lost, duplicates stay bounded, service recovers.

A publisher in this process sends numbered messages straight to RabbitMQ and notes each
one the broker confirmed. A consumer process (`farine start ledger`, through a fault
proxy) adds one to each number's row of a PostgreSQL `ledger` table. Mid-stream, one
fault is injected. Then every confirmed number must be in the ledger (lost = 0), numbers
counted twice are at most what was in flight at the fault (prefetch per interruption),
and the consumer handles messages again within `RECOVERY_BOUND` seconds of the fault's
end. Each fault on both backends. The figures are printed (`-s`) and quoted in
docs/amqp/brokers.md.

The suite runs only when asked (`FARINE_FAULT_SUITE=1`), against a RabbitMQ node of its
own (`FARINE_TEST_AMQP_URI`, and `FARINE_FAULT_NODE` for rabbitmqctl): it stops and starts
that node's application, which would break any other test using it. `.ci/run` starts
such a node (`.ci/extra-broker start faults DIR`) and runs the suite once:

    FARINE_FAULT_SUITE=1 FARINE_FAULT_NODE=farine-faults@localhost \
    FARINE_TEST_AMQP_URI=amqp://guest:guest@127.0.0.1:5673/ pytest -s tests/amqp/test_fault_suite.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Final

import anyio
import peewee
import pytest

from farine.amqp import AsyncPublisher, PublishError
from tests._db import postgres, rows
from tests._proc import FarineProcess
from tests.amqp import _rabbit
from tests.amqp._faults import FaultProxy, serving_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.amqp.conftest import Broker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.skipif(
        os.environ.get("FARINE_FAULT_SUITE") != "1",
        reason="the fault suite runs on a node of its own: FARINE_FAULT_SUITE=1 (.ci/run)",
    ),
]

MESSAGES: Final = 3000
PREFETCH: Final = 16
HEARTBEAT: Final = 2
#: Seconds from the end of a fault until the consumer handles messages again.
RECOVERY_BOUND: Final = 30.0
#: The application name of this test's own database session.
OURS: Final = "farine-fault-suite"
#: How many times the consumer's connection is interrupted by each fault.
INTERRUPTIONS: Final = {"close_x5": 5, "broker_restart": 1, "blackhole": 1, "sigkill": 1,
                        "pg_terminate": 1}  # fmt: skip


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    async with serving_proxy() as found:
        yield found


class Ledger:
    """The `ledger` table in a PostgreSQL database of the test session."""

    def __init__(self, dbname: str) -> None:
        # Named, so that terminating the consumer's sessions spares this one.
        self.db = peewee.PostgresqlDatabase(
            dbname, host="127.0.0.1", port=5432, user="postgres", application_name=OURS
        )
        rows(self.db, "DROP TABLE IF EXISTS ledger")
        rows(self.db, "CREATE TABLE ledger (id text PRIMARY KEY, hits integer NOT NULL)")

    def counts(self) -> dict[int, int]:
        return {int(i): int(h) for i, h in rows(self.db, "SELECT id, hits FROM ledger")}

    def size(self) -> int:
        return int(rows(self.db, "SELECT count(*) FROM ledger")[0][0])

    async def wait_size(self, size: int, seconds: float) -> float:
        """Wait until `size` ids are recorded; return the seconds it took."""
        started = anyio.current_time()
        with anyio.fail_after(seconds):
            # Polling the table: another process writes it, nothing here can signal.
            while await anyio.to_thread.run_sync(self.size) < size:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        return anyio.current_time() - started


class Consumer:
    """`farine start ledger` in a process of its own, restartable."""

    def __init__(self, backend: str, config: Path, name: str) -> None:
        self.args = ("start", "ledger", "--backend", backend)
        self.env = {"FARINE_INI": str(config), "LEDGER_NAME": name, "LEDGER_DATABASE": "1"}
        self.process = self._start()

    def _start(self) -> FarineProcess:
        return FarineProcess(*self.args, env=self.env)

    async def wait_for(self, pattern: str, seconds: float = 60) -> str:
        return await anyio.to_thread.run_sync(self.process.wait_for, pattern, seconds)

    async def restart_after_sigkill(self) -> None:
        self.process.signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(self.process.wait, 30)
        self.process = self._start()

    async def stop(self) -> int:
        self.process.signal(signal.SIGTERM)
        return await anyio.to_thread.run_sync(self.process.wait, 60)


def _rabbitmqctl(*args: str) -> str:
    """rabbitmqctl on the suite's own node."""
    node = os.environ.get("FARINE_FAULT_NODE")
    where = ["-n", node] if node else []
    done = subprocess.run(
        ["rabbitmqctl", "-q", *where, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def _close_connections_of(pid: int) -> int:
    """Close, from the broker's side, every connection of farine process `pid`."""
    closed = 0
    for line in _rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        if f'"farine-{pid}-' in line:
            _rabbitmqctl("close_connection", line.split("\t", 1)[0], "fault suite: forced close")
            closed += 1
    return closed


async def _inject(fault: str, consumer: Consumer, proxy: FaultProxy, dbname: str) -> float:
    """Inject `fault`; return when it ended (`time.monotonic()`): what follows is recovery."""
    if fault == "close_x5":
        for attempt in range(INTERRUPTIONS[fault]):
            pid = consumer.process.proc.pid
            assert await anyio.to_thread.run_sync(_close_connections_of, pid) >= 1
            if attempt < INTERRUPTIONS[fault] - 1:
                await consumer.wait_for(r"reconnected to ")
    elif fault == "broker_restart":
        await anyio.to_thread.run_sync(_rabbitmqctl, "stop_app")
        try:
            await consumer.wait_for(r"lost \(")
        finally:
            await anyio.to_thread.run_sync(_rabbitmqctl, "start_app")
    elif fault == "blackhole":
        proxy.blackhole()
        await consumer.wait_for(r"lost \(")  # found by the heartbeats
        proxy.heal()
    elif fault == "sigkill":
        await consumer.restart_after_sigkill()
    else:
        assert fault == "pg_terminate"
        admin = postgres("test")
        terminated = rows(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND application_name <> '{OURS}'",
        )
        admin.close()
        assert terminated, "the consumer had no database session to terminate"
    return time.monotonic()


@pytest.mark.parametrize("fault", list(INTERRUPTIONS))
async def test_no_confirmed_message_is_lost_across_a_fault(
    rabbitmq: Broker, proxy: FaultProxy, pg_database: str, tmp_path: Path, fault: str,
    anyio_backend_name: str,
) -> None:  # fmt: skip
    backend = anyio_backend_name  # the consumer process's, as this test's
    name = rabbitmq.queue()
    ledger = Ledger(pg_database)
    config = tmp_path / "farine.ini"
    config.write_text(
        "[DEFAULT]\n"
        f"amqp_uri = {_rabbit.uri_on_port(proxy.port)}\n"
        f"heartbeat = {HEARTBEAT}\nconnect_timeout = 2\nshutdown_timeout = 5\n"
        f"prefetch = {PREFETCH}\nconnect_retry_timeout = 60\n"
        "db_connector = postgres\ndb_user = postgres\ndb_host = 127.0.0.1\ndb_port = 5432\n"
        f"db_name = {pg_database}\n"
    )
    consumer = Consumer(backend, config, name)
    confirmed: set[int] = set()
    fault_took = recovery = float("nan")
    publish = AsyncPublisher(
        name, "rk", settings=rabbitmq.config(publish_timeout=30).service("publisher")
    )

    async def publish_all() -> None:
        for n in range(MESSAGES):
            try:
                await publish({"n": n})
            except PublishError:
                continue  # not confirmed: the publisher knows, nothing to check
            confirmed.add(n)
            if n % 100 == 99:
                await anyio.sleep(0.05)  # a steady stream, so the fault lands mid-way

    try:
        await consumer.wait_for(r"farine\.runtime: ready: ")
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await ledger.wait_size(MESSAGES // 4, 60)
            fault_started = time.monotonic()
            fault_ended = await _inject(fault, consumer, proxy, pg_database)
            fault_took = fault_ended - fault_started
            # Recovery: from the fault's end to the next message recorded.
            await ledger.wait_size(
                min(await anyio.to_thread.run_sync(ledger.size) + 1, MESSAGES),
                RECOVERY_BOUND + 30,
            )
            recovery = time.monotonic() - fault_ended
        await ledger.wait_size(len(confirmed), 120)
        assert await consumer.stop() == 0, consumer.process.output
    finally:
        consumer.process.kill()
        await _rabbit.delete(queues=[name], exchanges=[name])
    counts = await anyio.to_thread.run_sync(ledger.counts)
    lost = confirmed - set(counts)
    duplicates = sum(hits - 1 for hits in counts.values())
    print(  # noqa: T201  # the figures docs/amqp/brokers.md quotes (pytest -s)
        f"\nfault {fault} ({backend}): {len(confirmed)} confirmed, lost {len(lost)}, "
        f"duplicates {duplicates}, fault took {fault_took:.1f}s, recovery {recovery:.2f}s"
    )
    assert lost == set()
    assert duplicates <= PREFETCH * INTERRUPTIONS[fault]
    assert recovery < RECOVERY_BOUND
