"""Helpers only: nothing here is decorated, so `farine start nothing` has nothing to run."""

from __future__ import annotations


class Helper:
    def help(self) -> str:
        return "not an entrypoint"
