"""Test your services: run them in-process, drive them, observe them, or unit-test a handler.

```python
import farine.testing

async def test_orders_are_recorded():
    async with farine.testing.running(Orders) as app:
        await app.publish("orders", "created", {"id": 1})
        [call] = await app.wait_for("orders.created")
        assert call.exception is None
```

- `running()` runs service classes on the current event loop, on a `memory://` broker
  of their own (or the configured broker), and yields an `App`: `publish()`, `rpc()`,
  `wait_for()`, `calls()`, `broker`.
- `worker_factory()` builds a service instance whose injected helpers are mocks (or
  the objects given), to call a handler directly; `message()` builds the message a
  consumer gets.
- `sse_transport()` serves Server-Sent Events to SSE listeners without a server.
- The pytest plugin (`farine.testing.pytest_plugin`, loaded automatically) isolates
  settings per test and provides the `farine_config` fixture.
"""

from __future__ import annotations

from ._broker import BrokerView as BrokerView
from ._calls import CallRecord as CallRecord
from ._calls import CallsNotSeen as CallsNotSeen
from ._message import RecordedMessage as RecordedMessage
from ._message import message as message
from ._running import App as App
from ._running import running as running
from ._sse import SSETransport as SSETransport
from ._sse import sse_transport as sse_transport
from ._worker import worker_factory as worker_factory

__all__ = (
    "App",
    "BrokerView",
    "CallRecord",
    "CallsNotSeen",
    "RecordedMessage",
    "SSETransport",
    "message",
    "running",
    "sse_transport",
    "worker_factory",
)
