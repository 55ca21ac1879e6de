"""Write a document as JSON or YAML."""

from __future__ import annotations

import importlib
import json
from typing import Any, Literal

from farine.exceptions import FarineError

__all__ = ("Format", "YamlUnavailable", "render")

Format = Literal["json", "yaml"]


class YamlUnavailable(FarineError):
    """YAML output was asked for, and PyYAML is not installed."""

    __module__ = "farine.asyncapi"  # where users import it from, as tracebacks show it


def render(document: Any, format: Format = "json") -> str:
    """Return `document` as text: indented JSON, or YAML (block style, keys in order).

    Args:
        document: A JSON-compatible value (`build_document()`'s result).
        format: `"json"` or `"yaml"`; YAML needs PyYAML (`pip install 'farine[yaml]'`).

    Raises:
        YamlUnavailable: `format` is `"yaml"` and PyYAML is not installed.

    Example:
        ```python
        text = render(build_document("pingpong"), "yaml")
        ```
    """
    if format == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise YamlUnavailable(
            "YAML output needs PyYAML: pip install 'farine[yaml]' (or use --format json)"
        ) from None

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a schema repeated is written out again, not as an anchor

    def text_block(dumper: Any, data: str) -> Any:
        # Multi-line text (descriptions) as a literal block, as one would write it.
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text_block)

    text: str = yaml.dump(
        document, Dumper=Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return text
