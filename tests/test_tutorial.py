"""Every step of docs/tutorial.md, run as its reader runs it, from a copy of its folder.

The tutorial's files live in docs/examples/tutorial; each test copies them to a fresh
folder (so nothing is left behind in the checkout) and runs the documented commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests._proc import ROOT, FarineProcess, run_farine
from tests.amqp import _rabbit

if TYPE_CHECKING:
    from pathlib import Path

TUTORIAL = ROOT / "docs" / "examples" / "tutorial"
BACKENDS = ["asyncio", "trio"]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The reader's folder: the tutorial's files, copied."""
    folder = tmp_path / "myshop"
    shutil.copytree(TUTORIAL, folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite"))
    return folder


def test_step_3_the_tests_pass_on_both_backends(shop: Path) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("FARINE_INI", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v"],
        cwd=shop, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for test in (
        "test_an_order_is_placed_cooked_and_ready",
        "test_an_item_not_on_the_menu_is_refused",
    ):
        for backend in BACKENDS:
            assert f"{test}[{backend}] PASSED" in out, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_1_runs_on_memory_and_stops_gracefully(shop: Path, backend: str) -> None:
    code, out = run_farine("migrate", "shop", "--config", "farine.ini", cwd=shop)
    assert code == 0, out
    assert "tables orderrow created" in out
    proc = FarineProcess("start", "shop", "--config", "farine.ini", "--backend", backend, cwd=shop)
    try:
        proc.wait_for(r"farine\.runtime: ready: orders, kitchen")
        proc.signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "service stopped: kitchen" in proc.output


def _call(shop: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("FARINE_INI", None)
    return subprocess.run(
        [sys.executable, "-m", "farine", "call", *args, "--config", "production.ini"],
        cwd=shop, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_4_the_same_code_on_rabbitmq_and_postgresql(
    shop: Path, backend: str, pg_database: str
) -> None:
    ini = shop / "production.ini"
    # The tests' own virtual host and throwaway database; the rest is the file as shown.
    text = ini.read_text()
    text = text.replace("amqp://guest:guest@127.0.0.1:5672/", _rabbit.RABBITMQ_URI)
    ini.write_text(text.replace("db_name = shop", f"db_name = {pg_database}"))
    code, out = run_farine("migrate", "shop", "--config", "production.ini", cwd=shop)
    assert code == 0, out
    proc = FarineProcess(
        "start", "shop", "--config", "production.ini", "--backend", backend, cwd=shop
    )
    try:
        proc.wait_for(r"farine\.runtime: ready: orders, kitchen", timeout=30)
        placed = _call(shop, "orders.place", '[{"item": "soup", "quantity": 2}]')
        assert placed.returncode == 0, placed.stderr
        order_id = json.loads(placed.stdout)
        proc.expect(rf"order {order_id} is ready")
        status = _call(shop, "orders.status", f"[{order_id}]", "--stream")
        assert (status.returncode, status.stdout) == (0, '"ready"\n'), status.stderr
        refused = _call(shop, "orders.place", '[{"item": "cake"}]')
        assert refused.returncode == 1
        assert refused.stderr == "farine: error: orders.place failed: NotOnTheMenu: cake\n"
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
