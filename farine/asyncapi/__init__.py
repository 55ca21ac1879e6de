"""AsyncAPI 3.0: describe the services of a module as one document (`farine asyncapi`).

```python
from farine.asyncapi import build_document, render

print(render(build_document("pingpong"), "yaml"))
```
"""

from __future__ import annotations

from ._document import ASYNCAPI_VERSION as ASYNCAPI_VERSION
from ._document import build_document as build_document
from ._render import Format as Format
from ._render import YamlUnavailable as YamlUnavailable
from ._render import render as render

__all__ = ("ASYNCAPI_VERSION", "Format", "YamlUnavailable", "build_document", "render")
