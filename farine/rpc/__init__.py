"""RPC over AMQP: serve methods with `method()`, call them with `client()` or `Client`.

```python
import farine.rpc

class Server:
    @farine.rpc.method()
    def dummy(self, *args, **kwargs):
        return True

class Caller:
    @farine.rpc.client("server")
    def call(self, rpc):
        return rpc.dummy()
```
"""

from __future__ import annotations

from farine.exceptions import MethodNotFound as MethodNotFound
from farine.exceptions import RemoteError as RemoteError
from farine.exceptions import RPCError as RPCError
from farine.exceptions import RPCTimeout as RPCTimeout
from farine.exceptions import ServiceUnavailable as ServiceUnavailable
from farine.exceptions import UnknownService as UnknownService

from ._async_client import AsyncClient as AsyncClient
from ._blocking_client import Client as Client
from ._client import client as client
from ._context import CallContext as CallContext
from ._context import context as context
from ._errors import register_error as register_error
from ._server import MethodSpec as MethodSpec
from ._server import method as method

__all__ = (
    "AsyncClient",
    "CallContext",
    "Client",
    "MethodNotFound",
    "MethodSpec",
    "RPCError",
    "RPCTimeout",
    "RemoteError",
    "ServiceUnavailable",
    "UnknownService",
    "client",
    "context",
    "method",
    "register_error",
)
