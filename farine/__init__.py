"""farine: microservices as plain Python classes, on anyio (asyncio or trio).

Decorate methods with `farine.amqp.consume`, `farine.rpc.method`, `farine.stream.http`
or `farine.execute.method`, then run the module with `farine start MODULE`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ("__version__",)
