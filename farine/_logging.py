"""Log set-up for the CLI: one readable line per event, secrets masked."""

from __future__ import annotations

import logging
import sys

from farine._redact import RedactingFilter

__all__ = ("setup_logging",)

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr at `level`, masking URI passwords and configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
