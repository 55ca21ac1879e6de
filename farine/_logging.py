"""Log set-up for the CLI: one readable line per event, secrets masked."""

from __future__ import annotations

import logging
import sys

from farine._redact import RedactingFilter
from farine._tracebacks import TrimmingFilter

__all__ = ("setup_logging",)

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr at `level`, masking URI passwords and configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(TrimmingFilter())  # before redacting: the traceback text is redacted too
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request, full URL included, at INFO: one line per SSE reconnection
    # that repeats farine's own, and a token in a query string would land in the log.
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if root.getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    )
