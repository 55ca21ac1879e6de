"""Operating farine in production: the operations endpoint and its metrics.

`farine start MODULE --http HOST:PORT` (or the `[DEFAULT]` setting `http`) serves
`/livez`, `/readyz` and `/metrics`; see the guide "Running in production".
"""

from __future__ import annotations

from farine.ops._address import WORKER_INDEX_VARIABLE as WORKER_INDEX_VARIABLE
from farine.ops._address import worker_address as worker_address

__all__ = ("WORKER_INDEX_VARIABLE", "worker_address")
