"""A service module whose own import fails: its traceback must be shown."""

from __future__ import annotations

import this_dependency_does_not_exist  # noqa: F401  # pyright: ignore[reportMissingImports, reportUnusedImport]

import farine.execute


class Broken:
    @farine.execute.method()
    def run(self) -> None:
        pass
