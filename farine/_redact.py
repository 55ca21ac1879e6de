"""Keep secrets out of log lines and error messages."""

from __future__ import annotations

import logging
import re
import threading
from typing import Final

__all__ = ("RedactingFilter", "add_secret", "redact")

# `scheme://user:password@host` -> `scheme://user:***@host`
_URI_PASSWORD: Final = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")

_secrets: set[str] = set()
_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Register a literal secret (a password from the settings) to mask everywhere."""
    if value and len(value) >= 3:  # masking "a" or "12" would garble every log line
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` with URI passwords and registered secrets replaced by `***`."""
    text = _URI_PASSWORD.sub(r"\g<head>***@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record once, redacted, before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            formatter = logging.Formatter()
            record.exc_text = formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True
