"""Log set-up for the CLI: one line per event, as text or JSON, secrets masked.

In JSON (`log_format = json`), each record is one object on one line; a record logged
during a handler call also carries the call's labels (service, entrypoint, message id,
correlation id), set by `farine._telemetry` around each call while JSON logs are on,
and the trace and span ids when tracing is on.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from farine import _tracing
from farine._redact import RedactingFilter
from farine._tracebacks import TrimmingFilter

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ("FORMATS", "CallLabels", "JsonFormatter", "LogFormat", "labelled", "setup_logging")

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

LogFormat = Literal["text", "json"]
FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")


@dataclass(frozen=True, slots=True)
class CallLabels:
    """Which handler call a log record belongs to."""

    service: str
    entrypoint: str
    message_id: str | None = None
    correlation_id: str | None = None


_labels: ContextVar[CallLabels | None] = ContextVar("farine_log_labels", default=None)


@contextlib.contextmanager
def labelled(labels: CallLabels) -> Generator[None]:
    """Label the records logged in this block (and the worker threads it starts)."""
    token = _labels.set(labels)
    try:
        yield
    finally:
        _labels.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the labels of the
    handler call it was logged in, trace ids, and the traceback (`exc_info`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        labels = _labels.get()
        if labels is not None:
            entry["service"] = labels.service
            entry["entrypoint"] = labels.entrypoint
            entry["message_id"] = labels.message_id
            entry["correlation_id"] = labels.correlation_id
        ids = _tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return msgspec.json.encode(entry).decode()


class _State:
    #: JSON logs are on: handler calls set their labels (see `farine._telemetry`).
    json = False


state = _State()


def setup_logging(level: str | int = "INFO", log_format: LogFormat = "text") -> None:
    """Log to stderr at `level`, as text lines or JSON objects, masking URI passwords and
    configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    handler.addFilter(TrimmingFilter())  # before redacting: the traceback text is redacted too
    # The filter renders each record, masked, before the formatter sees it.
    handler.addFilter(RedactingFilter())
    state.json = log_format == "json"
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
