"""What each handler call tells operators beyond its log lines: a trace span and the
labels of its JSON log records.

Entrypoints ask `on()` once per call (one check, nothing else, while tracing is not
configured and logs are text) and only then wrap the call in `handling()`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from farine import _logging, _tracing
from farine._logging import CallLabels, labelled

if TYPE_CHECKING:
    from collections.abc import Generator

    from farine._tracing import HandlerCall

__all__ = ("handling", "on")


def on() -> bool:
    """True when handler calls are traced or labelled (JSON logs)."""
    return _logging.state.json or _tracing.tracer() is not None


@contextlib.contextmanager
def handling(call: HandlerCall) -> Generator[None]:
    """Run the block as the handler call `call`: its log records labelled (JSON logs),
    inside its span (tracing)."""
    with contextlib.ExitStack() as stack:
        if _logging.state.json:
            labels = CallLabels(call.service, call.entrypoint, call.message_id, call.correlation_id)
            stack.enter_context(labelled(labels))
        tracer = _tracing.tracer()
        if tracer is not None:
            stack.enter_context(_tracing.handler_span(tracer, call))
        yield
