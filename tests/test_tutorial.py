"""Every step of docs/tutorial.md, run as its reader runs it, from a copy of its folder.

The tutorial's files live in docs/examples/tutorial; each test copies them to a fresh
folder (so nothing is left behind in the checkout) and runs the documented commands: with
this checkout's interpreter, and (marked `slow`) in a fresh virtual environment made by
the documented install commands, as a user whose environment is active would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from tests._proc import ROOT, FarineProcess, activated, run_farine
from tests.amqp import _rabbit

if TYPE_CHECKING:
    from pathlib import Path

TUTORIAL = ROOT / "docs" / "examples" / "tutorial"
BACKENDS = ["asyncio", "trio"]


def _console_commands(page: str, heading: str) -> list[str]:
    """The `$ ` lines of the first console block after `heading` in `page`."""
    section = page[page.index(heading) :]
    [block] = re.findall(r"```console\n(.*?)```", section, flags=re.DOTALL)[:1]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def _build(script: str, cwd: Path, environ: dict[str, str]) -> None:
    """Run the documented set-up `script`; skip if it fails, but fail under `CI`."""
    done = subprocess.run(
        ["bash", "-ec", script],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        reason = f"the documented install failed: {script}\n{done.stdout}{done.stderr}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tutorial_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtual environment step 1 makes, by its commands as written (once a session),
    with this checkout in place of the clone `~/src/farine`."""
    folder = tmp_path_factory.mktemp("reader")
    commands = _console_commands((ROOT / "docs" / "tutorial.md").read_text(), "## 1. Install")
    clone, *rest = commands
    assert re.fullmatch(r"git clone \S+ ~/src/farine", clone), clone
    environ = {**os.environ}
    environ.pop("PYTHONPATH", None)
    environ.pop("VIRTUAL_ENV", None)
    _build("\n".join(rest).replace("~/src/farine", shlex.quote(str(ROOT))), folder, environ)
    return folder / "myshop" / ".venv"


@dataclass(frozen=True)
class Reader:
    """How the reader runs the documented commands: `venv` None is this checkout's
    interpreter; else the fresh environment of step 1, active."""

    venv: Path | None

    def environ(self) -> dict[str, str]:
        environ = {**os.environ}
        environ.pop("FARINE_INI", None)
        if self.venv is None:
            return {**environ, "PYTHONPATH": str(ROOT)}
        return activated(self.venv, environ)

    def argv(self, command: str, *args: str) -> list[str]:
        """`command ARGS` (`farine`, `pytest`) as the reader types it."""
        if self.venv is None:
            return [sys.executable, "-m", command, *args]
        return [str(self.venv / "bin" / command), *args]

    def start(self, *args: str, cwd: Path) -> FarineProcess:
        return FarineProcess(*args, cwd=cwd, venv=self.venv)

    def run(self, *args: str, cwd: Path, timeout: float = 30.0) -> tuple[int, str]:
        return run_farine(*args, cwd=cwd, timeout=timeout, venv=self.venv)


@pytest.fixture(
    params=[
        pytest.param("checkout"),
        # The first test to ask builds the environment (a minute on a busy machine).
        pytest.param("fresh-venv", marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
    ]
)
def reader(request: pytest.FixtureRequest) -> Reader:
    if request.param == "checkout":
        return Reader(None)
    return Reader(request.getfixturevalue("tutorial_venv"))


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The reader's folder: the tutorial's files, copied."""
    folder = tmp_path / "myshop"
    shutil.copytree(TUTORIAL, folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite"))
    return folder


def test_step_3_the_tests_pass_on_both_backends(shop: Path, reader: Reader) -> None:
    done = subprocess.run(
        reader.argv("pytest", "-p", "no:cacheprovider", "-v"),
        cwd=shop, env=reader.environ(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for test in (
        "test_an_order_is_placed_cooked_and_ready",
        "test_an_item_not_on_the_menu_is_refused",
        "test_an_order_too_big_for_the_oven_is_tried_three_times",
    ):
        for backend in BACKENDS:
            assert f"{test}[{backend}] PASSED" in out, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_4_runs_on_memory_and_stops_gracefully(
    shop: Path, backend: str, reader: Reader
) -> None:
    code, out = reader.run("migrate", "shop", "--config", "farine.ini", cwd=shop)
    assert code == 0, out
    assert "tables orderrow created" in out
    proc = reader.start("start", "shop", "--config", "farine.ini", "--backend", backend, cwd=shop)
    try:
        proc.wait_for(r"farine\.runtime: ready: orders, kitchen")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "service stopped: kitchen" in proc.output


def _call(reader: Reader, shop: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        reader.argv("farine", "call", *args, "--config", "production.ini"),
        cwd=shop, env=reader.environ(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_5_to_7_the_same_code_on_rabbitmq_and_postgresql(
    shop: Path, backend: str, pg_database: str, reader: Reader
) -> None:
    _production(shop, pg_database, reader)
    proc = reader.start(
        "start", "shop", "--config", "production.ini", "--backend", backend, cwd=shop
    )
    try:
        proc.wait_for(r"farine\.runtime: ready: orders, kitchen", timeout=30)
        placed = _call(reader, shop, "orders.place", '[{"item": "soup", "quantity": 2}]')
        assert placed.returncode == 0, placed.stderr
        order_id = json.loads(placed.stdout)
        proc.expect(rf"order {order_id} is ready")
        status = _call(reader, shop, "orders.status", f"[{order_id}]", "--stream")
        assert (status.returncode, status.stdout) == (0, '"ready"\n'), status.stderr
        refused = _call(reader, shop, "orders.place", '[{"item": "cake"}]')
        assert refused.returncode == 1
        assert refused.stderr == "farine: error: orders.place failed: NotOnTheMenu: cake\n"
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output


def _production(shop: Path, pg_database: str, reader: Reader) -> None:
    """production.ini as shown, on the tests' own virtual host and throwaway database,
    and its tables created with `farine migrate` (step 5)."""
    ini = shop / "production.ini"
    text = ini.read_text()
    text = text.replace("amqp://guest:guest@127.0.0.1:5672/", _rabbit.RABBITMQ_URI)
    ini.write_text(text.replace("db_name = shop", f"db_name = {pg_database}"))
    code, out = reader.run("migrate", "shop", "--config", "production.ini", cwd=shop)
    assert code == 0, out


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_8_a_failing_order_is_retried_dead_lettered_and_replayed(
    shop: Path, backend: str, pg_database: str, reader: Reader
) -> None:
    _production(shop, pg_database, reader)
    production = ("--config", "production.ini")
    # Another test's dead letters (the queue outlives its service): none here.
    reader.run("dlq", "purge", "order.placed.dead", "--yes", *production, cwd=shop)
    proc = reader.start("start", "shop", *production, "--backend", backend, cwd=shop)
    try:
        proc.wait_for(r"farine\.runtime: ready: orders, kitchen", timeout=30)
        placed = _call(reader, shop, "orders.place", '[{"item": "pie", "quantity": 12}]')
        assert placed.returncode == 0, placed.stderr
        order_id = json.loads(placed.stdout)
        error = rf"ValueError: order {order_id}: 12 portions do not fit the oven"
        for attempt in (1, 2):
            proc.wait_for(rf"kitchen\.cook raised {error} on message \w+ \(attempt {attempt}/3\)")
        dead = r"kitchen\.cook: dead-lettering message \w+ to queue order\.placed\.dead \(3 attempt"
        proc.wait_for(dead)

        code, out = reader.run("dlq", "list", "shop", *production, cwd=shop)
        assert (code, out.splitlines()[-1]) == (0, "order.placed.dead\t1\t(kitchen.cook)"), out
        code, out = reader.run("dlq", "show", "order.placed.dead", *production, cwd=shop)
        assert code == 0, out
        assert f"x-farine-error-message: order {order_id}: 12 portions do not fit the oven" in out
        assert "x-farine-attempts: 3" in out
        assert f'body: {{"id":{order_id},"item":"pie","quantity":12}}' in out
        code, out = reader.run("dlq", "replay", "order.placed.dead", *production, cwd=shop)
        assert (code, out.splitlines()[-1]) == (0, "1 message(s) replayed from order.placed.dead")
        # The oven is still too small: three calls again, and back to the queue.
        proc.wait_for(dead)
        code, out = reader.run("dlq", "purge", "order.placed.dead", "--yes", *production, cwd=shop)
        assert (code, out.splitlines()[-1]) == (0, "1 message(s) purged from order.placed.dead")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_9_readiness_and_metrics_on_memory(shop: Path, backend: str, reader: Reader) -> None:
    page = (ROOT / "docs" / "tutorial.md").read_text()
    assert "$ farine start shop --config farine.ini --http 127.0.0.1:8080\n" in page
    code, out = reader.run("migrate", "shop", "--config", "farine.ini", cwd=shop)
    assert code == 0, out
    # Port 0: a free port, which the endpoint's line names.
    args = ("start", "shop", "--config", "farine.ini", "--http", "127.0.0.1:0")
    proc = reader.start(*args, "--backend", backend, cwd=shop)
    try:
        line = proc.wait_for(r"farine\.ops: operations endpoint: http://127\.0\.0\.1:\d+ ")
        url = re.findall(r"http://\S+", line)[0]
        proc.expect(r"farine\.runtime: ready: orders, kitchen")
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert (ready.status_code, ready.text) == (200, '{"ready": true}\n')
        metrics = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
        shown = [line for line in metrics if line.startswith("farine_connection_state")]
        assert shown == [
            'farine_connection_state{service="orders"} 1.0',
            'farine_connection_state{service="kitchen"} 1.0',
        ]
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output


def test_the_pages_code_is_the_tested_files() -> None:
    """Each `title="PATH"` block of docs/tutorial.md is the file the tests run."""
    page = (ROOT / "docs" / "tutorial.md").read_text()
    blocks = re.findall(r'```\w+ title="([^"]+)"\n(.*?)```\n', page, flags=re.DOTALL)
    shown = {path for path, _ in blocks}
    assert shown == {
        "shop/__init__.py", "shop/models.py", "shop/service.py",
        "farine.ini", "production.ini", "conftest.py", "test_shop.py",
    }  # fmt: skip
    for path, code in blocks:
        assert code == (TUTORIAL / path).read_text(), f"docs/tutorial.md shows an old {path}"


def test_the_readme_tour_is_the_example_that_runs() -> None:
    """The README's tour is examples/pingpong/service.py as it is (a ball a second)."""
    readme = (ROOT / "README.md").read_text()
    [tour] = re.findall(r"```python\n(.*?)```\n", readme, flags=re.DOTALL)
    source = (ROOT / "examples" / "pingpong" / "service.py").read_text()
    assert source.endswith(tour)
    assert "time.sleep(1)" in tour
    proc = FarineProcess("start", "pingpong", cwd=ROOT / "examples")
    try:
        proc.wait_for(r"pingpong\.service: ping: sent ball 1$")
        # Either line may come first: the ball can arrive before its publish returns.
        proc.expect(r"pingpong\.service: pong: received ball 1 from ping$")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output


def test_the_readme_names_the_pythons_and_oldest_dependencies_ci_tests() -> None:
    """The README's CI line matches pyproject.toml's lower bounds and .ci/run's Pythons."""
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    [oldest] = re.findall(r"the oldest versions allowed \(([^)]*)\)", readme)
    pyproject = (ROOT / "pyproject.toml").read_text()
    named = dict(pin.rsplit(" ", 1) for pin in oldest.split(", "))
    assert set(named) == {"anyio", "trio", "aiormq", "pamqp", "msgspec", "peewee"}
    for name, version in named.items():
        assert f'"{name}>={version}' in pyproject, f"{name} {version} is not pyproject's bound"
    ci = (ROOT / ".ci" / "run").read_text()
    for python in ("3.11", "3.12", "3.13"):
        assert f"py{python}" in ci
        assert python in readme


def _readme_set_up() -> tuple[str, list[str]]:
    """The README's first command, split: the set-up, and the `farine` arguments it runs
    in `examples/`."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Set up") :]
    [line] = re.findall(r"```console\n(.*?)\n```", section, flags=re.DOTALL)[:1]
    set_up, run = line.split(" && cd examples && ")
    farine, *args = shlex.split(run)
    assert farine == "../.venv/bin/farine", line
    return set_up, args


@pytest.fixture(scope="session")
def readme_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files, as a clone has them, set up by the README's first
    command (once a session)."""
    clone = tmp_path_factory.mktemp("clone") / "farine"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed, and absent
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    environ = {**os.environ}
    environ.pop("PYTHONPATH", None)
    environ.pop("VIRTUAL_ENV", None)
    _build(_readme_set_up()[0], clone, environ)
    return clone


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first one sets the copy up
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_readme_set_up_runs_the_example_in_a_fresh_clone(
    readme_clone: Path, backend: str
) -> None:
    """The README's first command, in a copy of the checkout: its own venv, the example."""
    _, args = _readme_set_up()
    assert args == ["start", "pingpong", "--backend", "trio"]
    args[-1] = backend
    proc = FarineProcess(*args, cwd=readme_clone / "examples", venv=readme_clone / ".venv")
    try:
        proc.wait_for(r"pingpong\.service: ping: sent ball 1$", timeout=30)
        proc.expect(r"pingpong\.service: pong: received ball 1 from ping$")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output
