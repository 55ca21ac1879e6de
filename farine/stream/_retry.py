"""How long to wait before reconnecting to an SSE stream."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "CLIENT_ERROR_BACKOFF",
    "MAX_BACKOFF",
    "MAX_CLIENT_ERROR_BACKOFF",
    "MIN_BACKOFF",
    "reconnect_delay",
)

#: Smallest backoff unit (seconds) once failures repeat, so that a server asking for
#: `retry: 0` cannot make a refused connection spin the CPU.
MIN_BACKOFF: Final = 0.1
#: Cap (seconds) of the backoff after network errors, 5xx and 429 answers.
MAX_BACKOFF: Final = 60.0
#: First wait (seconds) after a 4xx answer (other than 429): retrying soon will not help,
#: the request itself (credentials, URL) is wrong until someone fixes it.
CLIENT_ERROR_BACKOFF: Final = 60.0
#: Cap (seconds) of the backoff after repeated 4xx answers.
MAX_CLIENT_ERROR_BACKOFF: Final = 600.0


def reconnect_delay(
    base: float,
    failures: int,
    *,
    client_error: bool = False,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Return the seconds to wait before the next connection attempt.

    The first attempt after a connection that had opened waits exactly `base` (the
    server's `retry:`, else the `sse_retry` setting), as the SSE spec asks. When
    attempts keep failing the wait doubles up to a cap, with "equal jitter" (a random
    point in the upper half) so that many clients cut off together do not all come back
    at the same instant; it never drops below `base`.

    Args:
        base: The reconnection time in seconds.
        failures: Consecutive failed attempts, this one included (1 after a connection
            that had opened was lost or ended).
        client_error: The server answered 4xx (other than 429): back off long.
        jitter: Returns a float in [0, 1); replaced in tests.

    Returns:
        The delay in seconds.
    """
    if client_error:
        floor, cap = max(base, CLIENT_ERROR_BACKOFF), max(base, MAX_CLIENT_ERROR_BACKOFF)
    elif failures <= 1:
        return base
    else:
        floor, cap = max(base, MIN_BACKOFF), max(base, MAX_BACKOFF)
    # The exponent is bounded so that 2**n stays a small float after days of failures.
    ceiling = min(cap, floor * 2.0 ** min(max(failures - 1, 0), 30))
    return max(base, ceiling * (0.5 + 0.5 * jitter()))
