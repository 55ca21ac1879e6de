"""The docs stay true: the configuration table is current, the tutorial example runs."""

from __future__ import annotations

import importlib
import re
import sys
import uuid
from pathlib import Path

import anyio
import pytest

import farine.testing
from farine import settings
from farine.rpc._blocking_client import ScriptLoop
from farine.settings import KEYS, Config, reference_table
from tests._proc import FarineProcess, run_farine

ROOT = Path(__file__).parent.parent


def test_configuration_reference_lists_every_key_as_generated() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert reference_table() in text, "regenerate the table with farine.settings.reference_table()"
    for key in KEYS:
        assert f"| `{key.name}` |" in text


def test_tutorial_example_runs_on_both_backends() -> None:
    for backend in ("asyncio", "trio"):
        code, out = run_farine(
            "start", "hello", "--backend", backend, cwd=ROOT / "docs" / "examples"
        )
        assert code == 0, out
        assert "hello #3" in out
        assert "hello from a worker thread" in out
        assert "service stopped: hello" in out


def test_readme_commands_name_existing_things() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "farine start pingpong" in readme
    assert (ROOT / "examples" / "pingpong" / "service.py").exists()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line.strip() for line in readme.splitlines() if "python -m pytest" in line)
    assert test_command in ci, "the CI test step must be the README's test command"


# -- the RPC guides' examples (docs/rpc.md, docs/rpc-streaming.md) -------------------------

EXAMPLES = ROOT / "docs" / "examples"


def run_example(module: str, backend: str, *lines: str) -> str:
    """`farine start MODULE` on memory:// until each of `lines` is logged, then SIGTERM."""
    process = FarineProcess("start", module, "--backend", backend, cwd=EXAMPLES)
    try:
        for line in lines:
            process.expect(line, timeout=30)
        process.signal()
        assert process.wait(timeout=30) == 0, process.output
    finally:
        process.kill()
    return process.output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_guide_example_runs(backend: str) -> None:
    out = run_example(
        "rpc_stock",
        backend,
        r"inventory: stock\.inventory: timeout: no reply within 0\.5s",
        r"stock\.inventory: call \S+ cancelled: its deadline passed",  # on the server
    )
    assert re.search(r"reserved 2 apple until \d{4}-\d\d-\d\dT", out), out
    assert "stock.reserve raised OutOfStock: only 0 pear left" in out  # INFO: expected
    assert "no pear: only 0 pear left (0 left)" in out
    assert "levels: {'pear': 0, 'plum': 12}" in out
    assert "ERROR" not in out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_streaming_guide_example_runs(backend: str) -> None:
    out = run_example(
        "rpc_feed",
        backend,
        r"feed\.ticks: caller stopped stream",  # the caller's break, not the deadline
        r"ticks: stopped after \d+",  # closed the server's generator
        r"flaky: failed with RuntimeError: sensor unplugged",
    )
    logged = [
        line.split("rpc_feed.service: ", 1)[1]
        for line in out.splitlines()
        if "rpc_feed.service: " in line
    ]
    assert [line for line in logged if line.startswith("countdown")] == [
        "countdown: 3",
        "countdown: 2",
        "countdown: 1",
    ]
    assert [line for line in logged if line.startswith("tick ")] == ["tick 1", "tick 2", "tick 3"]
    assert "flaky: first reading" in out


@pytest.mark.anyio
async def test_rpc_guide_script_calls_the_example_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])
    config = Config.from_string(f"[DEFAULT]\namqp_uri = memory://docs-{uuid.uuid4().hex}\n")
    settings.use(config)
    try:
        stock = importlib.import_module("rpc_stock.service")
        script = importlib.import_module("rpc_script")
        async with farine.testing.running(stock.Stock, config=config):
            with anyio.fail_after(30):
                await anyio.to_thread.run_sync(script.main)
                await script.amain()
    finally:
        ScriptLoop.close()
        for name in ("rpc_stock", "rpc_stock.service", "rpc_script"):
            sys.modules.pop(name, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "plums: 12"
    assert re.fullmatch(r"reserved: \{'item': 'plum', 'quantity': 3, 'expires': '.+'\}", lines[1])
    assert lines[2] == "plums: 9"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_delivery_guide_example_runs(backend: str) -> None:
    out = run_example(
        "delivery",
        backend,
        r"order 2 failed after 1 attempt\(s\): farine\.amqp\.Permanent: order 2: quantity",
        r"order 1 saved",
    )
    assert "orders.on_order raised ConnectionError: the warehouse is restarting" in out
    assert "(attempt 1/4); retrying in 0." in out
    assert "dead-lettering message" in out
    assert "to queue placed.dead (permanent (Permanent))" in out
