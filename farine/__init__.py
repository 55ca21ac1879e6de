"""farine: microservices as plain Python classes, on anyio (asyncio or trio).

Decorate methods with `farine.amqp.consume`, `farine.rpc.method`, `farine.stream.http`
or `farine.execute.method`, then run the module with `farine start MODULE`, or from
your own program with `farine.run()` (blocking) or `farine.serve()` (on your event loop).
"""

from __future__ import annotations

__version__ = "0.1.0"

from farine._serve import run as run
from farine._serve import serve as serve

__all__ = ("__version__", "run", "serve")
