"""Worker threads that anyio and trio take for their own: `anyio.from_thread.run()`
without a token works in them.

anyio and trio record the loop of their own worker threads in thread-local objects
(both private). farine's worker pool records its caller's loop there too, so that code
in a `def` handler may call `anyio.from_thread.run()` as in anyio's worker threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio._core._eventloop import threadlocals as _anyio_threadlocals
from trio._threads import PARENT_TASK_DATA as _trio_threadlocals

if TYPE_CHECKING:
    import anyio.lowlevel

__all__ = ("claim", "release")


def claim(token: anyio.lowlevel.EventLoopToken, trio_token: Any) -> None:
    """Record the calling loop in this worker thread, as anyio's worker threads do."""
    _anyio_threadlocals.current_token = token
    if trio_token is not None:
        # As trio's threads started with abandon_on_cancel: calls made from here run
        # in trio's system nursery, not in the (unrelated) task that waits.
        _trio_threadlocals.token = trio_token
        _trio_threadlocals.abandon_on_cancel = True


def release(trio_token: Any) -> None:
    """Forget what `claim()` recorded."""
    del _anyio_threadlocals.current_token
    if trio_token is not None:
        del _trio_threadlocals.token
        del _trio_threadlocals.abandon_on_cancel
