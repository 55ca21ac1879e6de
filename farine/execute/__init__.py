"""Long-running methods: `farine.execute.method()` runs a method, and runs it again."""

from __future__ import annotations

from ._method import ExecuteSpec as ExecuteSpec
from ._method import method as method

__all__ = ("ExecuteSpec", "method")
