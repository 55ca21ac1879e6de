"""Fixtures of the interop tests: the real baguette-messaging 0.19 (the seed) beside farine.

The seed runs on Python 2.7 from the virtualenv that `.ci/seed-env` builds; the tests find
its interpreter in FARINE_SEED_PYTHON. Without it they skip, except under CI (the `CI`
variable set), where a missing seed is a failure. Both frameworks share a RabbitMQ vhost of
this session's own, created with rabbitmqctl and deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import pytest

from farine._broker import close_shared_connections
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from anyio.abc import Process

SEED_FILES: Final = Path(__file__).parent / "seed"
ENV_VAR: Final = "FARINE_SEED_PYTHON"


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="session")
def seed_python() -> Path:
    """The Python 2.7 interpreter that has baguette-messaging 0.19 installed."""
    value = os.environ.get(ENV_VAR, "")
    if not value:
        reason = (
            f"{ENV_VAR} is not set: build the seed's Python 2.7 environment with "
            f'`export {ENV_VAR}="$(bash .ci/seed-env)"` to run the interop tests'
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the interop tests, but {reason}")
        pytest.skip(reason)
    path = Path(value)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{ENV_VAR}={value} is not an executable Python")
    return path


@pytest.fixture(scope="session")
def vhost(seed_python: Path) -> Iterator[str]:
    """A RabbitMQ vhost of this session's own, with guest allowed everything."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH: the interop tests create a vhost with it")
    name = f"farine-interop-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        # Connections of code without a runtime (publishes from the tests themselves)
        # would otherwise outlive the vhost and keep reconnecting until exit.
        close_shared_connections()
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_uri(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


class Queues:
    """The queues of the vhost as `rabbitmqctl list_queues` shows them."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost

    async def flags(self, queue: str) -> dict[str, str]:
        """The `durable`, `auto_delete` and `exclusive` flags RabbitMQ shows for `queue`."""
        done = await anyio.run_process(
            ["rabbitmqctl", "-q", "list_queues", "-p", self.vhost, "name", "durable",
             "auto_delete", "exclusive", "--no-table-headers"],
            check=True,
        )  # fmt: skip
        for line in done.stdout.decode().splitlines():
            name, *values = line.split("\t")
            if name == queue:
                return dict(zip(("durable", "auto_delete", "exclusive"), values, strict=True))
        raise AssertionError(f"no queue {queue!r} in {self.vhost}")

    async def snapshot(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (messages ready + unacked, consumers)."""
        done = await anyio.run_process(
            ["rabbitmqctl", "-q", "list_queues", "-p", self.vhost, "name", "messages",
             "consumers", "--no-table-headers"],
            check=True,
        )  # fmt: skip
        found: dict[str, tuple[int, int]] = {}
        for line in done.stdout.decode().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                found[parts[0]] = (int(parts[1]), int(parts[2]))
        return found

    async def wait_for_consumers(self, queue: str, count: int = 1, seconds: float = 30) -> None:
        """Wait until `queue` has at least `count` consumers."""
        # Polled: the broker's state is all there is to watch (the seed signals nothing).
        with anyio.fail_after(seconds):
            while True:
                if (await self.snapshot()).get(queue, (0, 0))[1] >= count:
                    return
                await anyio.sleep(0.1)

    async def wait_for_empty(self, queue: str, seconds: float = 30) -> None:
        """Wait until `queue` holds no message, ready or unacknowledged."""
        with anyio.fail_after(seconds):
            while True:
                if (await self.snapshot()).get(queue, (1, 0))[0] == 0:
                    return
                await anyio.sleep(0.1)


@pytest.fixture
def queues(vhost: str) -> Queues:
    return Queues(vhost)


class Seed:
    """Runs baguette-messaging 0.19 programs against the test's vhost.

    `sections` lists the INI sections the seed needs: it reads the settings of each
    service, and of each remote service it calls, from its own section.
    """

    def __init__(self, python: Path, amqp_uri: str, workdir: Path) -> None:
        self.python = python
        self.amqp_uri = amqp_uri
        self.workdir = workdir
        self.ini = workdir / "farine.ini"
        self.sections: set[str] = set()
        self.keys: dict[str, dict[str, str]] = {}  # section -> extra INI lines
        self.record = workdir / "seed-record.jsonl"
        self.logs: list[Path] = []

    def env(self) -> dict[str, str]:
        lines = ["[DEFAULT]", f"amqp_uri = {self.amqp_uri}", ""]
        for section in sorted(self.sections | set(self.keys)):
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in self.keys.get(section, {}).items()]
            lines.append("")
        self.ini.write_text("\n".join(lines), encoding="utf-8")
        environ = {
            key: value
            for key, value in os.environ.items()
            if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        environ.update(
            FARINE_INI=str(self.ini), PYTHONPATH=str(self.workdir), SEED_RECORD=str(self.record)
        )
        return environ

    def app(self, template: str, module: str, **names: str) -> None:
        """Write seed/`template`.py2 as `module`/service.py, its @NAME@s replaced."""
        text = (SEED_FILES / f"{template}.py2").read_text(encoding="utf-8")
        for key, value in names.items():
            text = text.replace(f"@{key}@", value)
        package = self.workdir / module
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "service.py").write_text(text, encoding="utf-8")

    @property
    def farine_script(self) -> Path:
        """The seed's own `farine` console script (pkg_resources checks its pins)."""
        return self.python.parent / "farine"

    async def start(self, module: str) -> SeedService:
        """Start `farine --start=module` of the seed; see `SeedService`."""
        log = self.workdir / f"{module}.log"
        self.logs.append(log)
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            process = await anyio.open_process(
                [str(self.farine_script), f"--start={module}"],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return SeedService(process, log)

    async def tool(self, *args: str, seconds: float = 30) -> dict[str, Any]:
        """Run seed/tool.py2 with `args`, return the JSON it prints."""
        with anyio.fail_after(seconds):
            done = await anyio.run_process(
                [str(self.python), str(SEED_FILES / "tool.py2"), *args],
                cwd=self.workdir,
                env=self.env(),
                check=False,
            )
        if done.returncode != 0:
            raise AssertionError(f"seed tool {args} failed:\n{done.stderr.decode()}")
        result: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
        return result

    async def call(
        self,
        service: str,
        method: str,
        *args: Any,
        stream: bool = False,
        reply_timeout: float | None = 10,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One call by the seed's RPC client: `{"result": ...}` or `{"error": ...}`.

        `reply_timeout` is the seed client's own `timeout` (None: it waits forever).
        """
        self.sections.add(service)
        return await self.tool(
            "call", service, method, json.dumps(args), json.dumps(kwargs),
            "1" if stream else "0", "none" if reply_timeout is None else str(reply_timeout),
        )  # fmt: skip

    async def publish(
        self, service: str, body: Mapping[str, Any], exchange: str = "", routing_key: str = ""
    ) -> None:
        """Publish `body` with the seed's `@farine.amqp.publish` of a `service`."""
        self.sections.add(service)
        assert await self.tool("publish", service, exchange, routing_key, json.dumps(body)) == {
            "published": True
        }

    async def publish_bytes(
        self, service: str, body: bytes, exchange: str = "", routing_key: str = ""
    ) -> None:
        """Publish raw `body` with the seed's `@farine.amqp.publish` and `serializer = raw`."""
        self.keys.setdefault(service, {})["serializer"] = "raw"
        encoded = base64.b64encode(body).decode()
        assert await self.tool("publish-bytes", service, exchange, routing_key, encoded) == {
            "published": True
        }

    def records(self) -> list[dict[str, Any]]:
        """What the seed consumers of seed/consumer.py2 received, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    async def wait_for_records(self, count: int, seconds: float = 30) -> list[dict[str, Any]]:
        """Wait until the seed consumers wrote `count` records; return them all."""
        # Polled: another process appends to the file.
        with anyio.move_on_after(seconds):
            while True:
                if len(found := self.records()) >= count:
                    return found
                await anyio.sleep(0.05)
        raise AssertionError(f"the seed recorded {self.records()}, not {count}:\n{self.output()}")

    def output(self) -> str:
        """What the seed services started so far logged."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(encoding='utf-8', errors='replace')}"
            for log in self.logs
        )


class SeedService:
    """A running `farine --start=...` of the seed."""

    def __init__(self, process: Process, log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def stop(self) -> None:
        """Stop the seed (it has no graceful stop: SIGTERM ends it, unacked go back)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await self.process.wait()

    async def __aenter__(self) -> SeedService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop()


@pytest.fixture
def seed(seed_python: Path, amqp_uri: str, tmp_path: Path) -> Seed:
    return Seed(seed_python, amqp_uri, tmp_path)


@pytest.fixture
def farine_config(amqp_uri: str) -> Config:
    """farine's settings on the test's vhost (the seed's `type`, `durable`... defaults)."""
    return Config.from_string(
        f"[DEFAULT]\namqp_uri = {amqp_uri}\nshutdown_timeout = 5\nconnect_retry_timeout = 10\n"
    )


@pytest.fixture
def names() -> str:
    """A suffix that makes this test's service, exchange and queue names unique."""
    return uuid.uuid4().hex[:8]
