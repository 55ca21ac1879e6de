"""The docs stay true: the configuration table is current, the tutorial example runs."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
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


# -- the delivery guide's example (docs/delivery.md) ----------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_delivery_guide_example_ships_each_order_once(backend: str, tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text(
        f"[DEFAULT]\ndb_connector = sqlite\ndb_name = {tmp_path / 'shipping.sqlite'}\n",
        encoding="utf-8",
    )
    code, out = run_farine("migrate", "shipping", "--config", str(config), cwd=EXAMPLES)
    assert code == 0, out
    assert "tables shipment, farine_inbox" in out
    process = FarineProcess(
        "start", "shipping", "--backend", backend, "--config", str(config), cwd=EXAMPLES
    )
    try:
        process.expect(r"message order-A-1 was already processed", timeout=30)
        process.expect(r"shipped B-2", timeout=30)
        process.signal()
        assert process.wait(timeout=30) == 0, process.output
    finally:
        process.kill()
    out = process.output
    assert out.count("shipped A-1") == 1
    assert "(2 shipment(s) so far)" in out
    assert "ERROR" not in out


# -- the testing guide's examples (docs/testing.md) and the tutorial's test ----------------


def test_testing_guide_examples_pass_as_a_user_runs_them() -> None:
    """`pytest` in docs/examples, as a user runs it: farine's plugin loaded from its entry
    point, the example conftest.py running every test on asyncio and on trio."""
    environ = {**os.environ}
    environ.pop("FARINE_INI", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "test_hello.py",
         "testing_guide"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environ,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for test in (
        "test_hello_greets_three_times",
        "test_an_order_sends_an_invoice",
        "test_feed_keeps_the_latest_prices",
        "test_created_publishes_an_invoice",
    ):
        assert f"{test}[asyncio] PASSED" in out, out
        assert f"{test}[trio] PASSED" in out, out
    assert "test_receive_adds_to_the_stock PASSED" in out, out
    assert re.search(r"\b17 passed\b", out), out


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


# -- the production guide's tracing example (docs/production.md) --------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_tracing_example_prints_one_trace(backend: str) -> None:
    out = run_example("traced", backend, r"pong: got ball 1", r'"name": "process ping"')
    names = re.findall(r'"name": "([^"]+)"', out)
    assert {"execute ping.serve", "publish ping", "process ping"} <= set(names), out
    assert len(set(re.findall(r'"trace_id": "(0x[0-9a-f]+)"', out))) == 1, out


#: The example files the guides show, page by page: the tests above run these files.
SHOWN_EXAMPLES = {
    "testing.md": {
        "docs/examples/testing_guide/shop/service.py",
        "docs/examples/conftest.py",
        "docs/examples/testing_guide/test_shop.py",
    },
    "production.md": {"docs/examples/traced/service.py"},
    "rpc-streaming.md": {"docs/examples/rpc_feed/service.py"},
    "asyncapi.md": {"docs/examples/asyncapi/examples.yaml"},
    "delivery.md": {"docs/examples/delivery/service.py", "docs/examples/shipping/service.py"},
    "rpc.md": {
        "docs/examples/rpc_stock/service.py",
        "docs/examples/rpc_script.py",
        "docs/examples/rpc_chain/service.py",
    },
}


def _shown_blocks(page: Path) -> list[tuple[str, str]]:
    """The (path, code) of each fenced block of `page` titled with an example's path."""
    pattern = r'^```\w+ title="(docs/examples/[^"]+)"\n(.*?)^```$'
    return re.findall(pattern, page.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_guides_show_their_code_inline_as_the_files_the_tests_run() -> None:
    """Raw Markdown shows code, not include markers; each block titled with a path of
    docs/examples is that file, or a run of its whole lines (an excerpt)."""
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert [page for page in pages if "--8<--" in page.read_text()] == []
    shown: dict[str, set[str]] = {}
    for page in pages:
        for path, code in _shown_blocks(page):
            source = (ROOT / path).read_text()
            # Whole lines: the block follows a line's end (or the start) and ends one.
            assert f"\n{code}" in f"\n{source}", f"{page.name} shows an old {path}"
            shown.setdefault(str(page.relative_to(ROOT / "docs")), set()).add(path)
    assert shown == SHOWN_EXAMPLES


def test_the_testing_guide_shows_each_test_of_its_example() -> None:
    """The excerpts of testing.md cover every test function of the example it runs."""
    example = (ROOT / "docs/examples/testing_guide/test_shop.py").read_text()
    shown = "".join(code for _, code in _shown_blocks(ROOT / "docs" / "testing.md"))
    tests = re.findall(r"^(?:async )?def (test_\w+)", example, flags=re.MULTILINE)
    assert len(tests) >= 5
    for test in tests:
        assert f"def {test}(" in shown, test
