"""The documents of every example and test service are valid AsyncAPI 3.0.0."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from farine.asyncapi import build_document
from farine.settings import Config
from tests.asyncapi._validate import assert_valid, errors

ROOT: Final = Path(__file__).parent.parent.parent
EXAMPLES: Final = sorted(
    path.name for path in (ROOT / "examples").iterdir() if (path / "service.py").exists()
)
APPS: Final = sorted(
    f"tests.apps.{path.name}"
    for path in (ROOT / "tests" / "apps").iterdir()
    if (path / "service.py").exists() and path.name != "broken"
)
#: The seed README's examples (`seedstyle`: all but the Database one, which is `seedapp`).
SEED: Final = ["tests.asyncapi.seedstyle", "tests.seedapp"]
DEFAULTS: Final = Config.from_string("")


def test_the_lists_are_not_empty() -> None:
    assert {"pingpong", "rpcdemo", "overview", "sse_listener", "ticker", "users"} <= set(EXAMPLES)
    assert "tests.apps.rpcapp" in APPS


@pytest.mark.parametrize("module", EXAMPLES)
def test_examples(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])
    document = build_document(module, config=DEFAULTS)
    assert_valid(document)
    assert document["info"]["title"] == module


@pytest.mark.parametrize("module", APPS)
def test_test_apps(module: str) -> None:
    assert_valid(build_document(module, config=DEFAULTS))


@pytest.mark.parametrize("module", SEED)
def test_seed_style_services(module: str) -> None:
    document = build_document(module, config=DEFAULTS)
    assert_valid(document)
    assert document["operations"]


def test_several_modules_make_one_valid_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])
    document = build_document(["pingpong", "rpcdemo", "tests.asyncapi.shop"], config=DEFAULTS)
    assert_valid(document)
    services = {tag["name"] for tag in document["info"]["tags"]}
    assert services == {"ping", "pong", "server", "client", "shop", "feed"}


def test_the_validator_rejects_what_the_schema_forbids() -> None:
    document = build_document("tests.asyncapi.shop", config=DEFAULTS)
    # AMQP binding 0.3.0 describes an exchange or a queue, never both.
    document["channels"]["shop.on_order"]["bindings"]["amqp"]["exchange"] = {"name": "orders"}
    # A reply address is a runtime expression.
    document["operations"]["shop.quote"]["reply"]["address"]["location"] = "reply_to"
    found = errors(document)
    assert len(found) == 2, found
    assert any("shop.on_order" in error for error in found)
    assert any("shop.quote" in error for error in found)


def test_the_document_shown_in_the_docs_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])
    shown: Any = yaml.safe_load(
        (ROOT / "docs" / "examples" / "asyncapi" / "examples.yaml").read_text()
    )
    assert shown == build_document(["pingpong", "rpcdemo"], config=DEFAULTS), (
        "regenerate it: cd examples && farine asyncapi pingpong rpcdemo --format yaml "
        "-o ../docs/examples/asyncapi/examples.yaml"
    )
    assert_valid(shown)
