"""The built documentation site: signatures are formatted, one parameter a line."""

from __future__ import annotations

import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import farine.amqp
from tests._proc import ROOT

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,  # this interpreter's, as the test runs it
    reason="needs the docs extra",
)
def test_the_reference_shows_consumes_parameters_one_a_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = (site / "reference" / "amqp" / "index.html").read_text()
    anchor = page.index('id="farine.amqp.consume"')
    block = re.search(r"<pre.*?</pre>", page[anchor:], flags=re.DOTALL)
    assert block is not None
    signature = html.unescape(re.sub(r"<[^>]+>", "", block.group(0)))
    lines = signature.strip().splitlines()
    assert lines[0] == "consume("
    for name in inspect.signature(farine.amqp.consume).parameters:
        assert any(line.strip().startswith(f"{name}:") for line in lines), (name, signature)
    assert max(len(line) for line in lines) <= 80, signature  # nothing cut off
    # The decorators come first, and no private base class shows.
    assert page.index('id="farine.amqp.consume"') < page.index('id="farine.amqp.ConsumeSpec"')
    rpc_page = (site / "reference" / "rpc" / "index.html").read_text()
    for base in ("_BasePublisher", "ClientBase"):
        assert base not in page + rpc_page


def test_the_reference_pages_list_every_public_name() -> None:
    """The pages that order their members by hand still show every public name."""
    import importlib

    for page, module in (("amqp", "farine.amqp"), ("rpc", "farine.rpc")):
        text = (ROOT / "docs" / "reference" / f"{page}.md").read_text()
        listed = re.findall(rf"^::: {re.escape(module)}\.(\w+)$", text, flags=re.MULTILINE)
        assert sorted(listed) == sorted(importlib.import_module(module).__all__), page
        assert listed[0] in ("consume", "method"), "the decorators come first"
