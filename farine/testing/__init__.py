"""Helpers for testing services: run them in-process, on the current event loop.

```python
import farine.testing

async def test_my_service():
    async with farine.testing.running(MyService, config="[myservice]\\nmax_workers = 2\\n"):
        ...  # publish, call, observe
```
"""

from __future__ import annotations

from ._running import running as running

__all__ = ("running",)
