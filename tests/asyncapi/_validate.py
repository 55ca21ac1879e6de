"""Check documents against the official AsyncAPI 3.0.0 JSON Schema (vendored in `schema/`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Final, cast

import jsonschema

SCHEMA: Final = Path(__file__).parent / "schema" / "asyncapi-3.0.0.json"


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    schema = cast(dict[str, Any], json.loads(SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(document: Any) -> list[str]:
    """Every way `document` breaks the AsyncAPI 3.0.0 schema (empty when it is valid)."""
    return [
        f"{error.json_path}: {error.message[:300]}"
        for error in _validator().iter_errors(document)  # pyright: ignore[reportUnknownMemberType]
    ]


def assert_valid(document: Any) -> None:
    found = errors(document)
    assert found == [], "\n".join(found)


def payload_errors(document: dict[str, Any], schema: Any, value: Any) -> list[str]:
    """How `value` breaks a payload schema of `document` (its `$ref`s resolved there)."""
    rooted = {"allOf": [schema], "components": document.get("components", {})}
    validator = jsonschema.Draft7Validator(rooted)
    found = validator.iter_errors(value)  # pyright: ignore[reportUnknownMemberType]
    return [f"{error.json_path}: {error.message}" for error in found]
