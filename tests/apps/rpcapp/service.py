"""An RPC service for `farine start` tests, named by `$RPCAPP_SERVICE`.

The tests share one RabbitMQ, so each runs its own, uniquely named copy of the service.
"""

from __future__ import annotations

import os

from . import methods

Service = type(os.environ.get("RPCAPP_SERVICE", "rpcapp"), (methods.Calc,), {})
