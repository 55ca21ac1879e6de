"""Tracebacks of the user's code: farine's own frames left out, unless logging at DEBUG.

A handler that raises is called through several layers of farine (the entrypoint, the
service, the worker threads); their frames say nothing about the user's bug. The
frames of other libraries (the user's dependencies) are kept.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Final

import farine

__all__ = ("TrimmingFilter", "format_user_exception", "keeps_all_frames")

#: The folder of the farine package: frames of files under it are farine's own.
FARINE_DIR: Final = os.path.dirname(os.path.abspath(farine.__file__)) + os.sep


def keeps_all_frames() -> bool:
    """True when farine logs at DEBUG: tracebacks then keep farine's frames too."""
    return logging.getLogger("farine").isEnabledFor(logging.DEBUG)


def _trim(summary: traceback.TracebackException, seen: set[int]) -> None:
    if id(summary) in seen:
        return
    seen.add(id(summary))
    frames = [frame for frame in summary.stack if not frame.filename.startswith(FARINE_DIR)]
    summary.stack = traceback.StackSummary.from_list(frames)
    for inner in (summary.__cause__, summary.__context__, *(summary.exceptions or ())):
        if inner is not None:
            _trim(inner, seen)


def format_user_exception(exc: BaseException, *, trim: bool | None = None) -> str:
    """Format `exc` with its traceback, without farine's own frames.

    Args:
        exc: The exception, with its traceback (and its cause and context, trimmed alike).
        trim: Leave farine's frames out; default: unless the `farine` logger is at DEBUG.

    Returns:
        The text `traceback.format_exception` would give, less those frames. An error
        raised by farine itself, with no frame of the user's, is its last line only.
    """
    summary = traceback.TracebackException.from_exception(exc)
    if trim if trim is not None else not keeps_all_frames():
        _trim(summary, set())
    return "".join(summary.format())


class TrimmingFilter(logging.Filter):
    """Render the traceback of a record without farine's frames (unless at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_text is None:
            exc = record.exc_info[1]
            if exc is not None and not keeps_all_frames():
                record.exc_text = format_user_exception(exc, trim=True).rstrip("\n")
        return True
