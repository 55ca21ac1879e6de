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

from farine.exceptions import RPCError as RPCError

from ._async_client import AsyncClient as AsyncClient
from ._blocking_client import Client as Client
from ._client import client as client
from ._server import MethodSpec as MethodSpec
from ._server import method as method

__all__ = ("AsyncClient", "Client", "MethodSpec", "RPCError", "client", "method")
