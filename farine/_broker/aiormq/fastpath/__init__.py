"""Everything in farine that relies on private names of aiormq, pamqp, asyncio, anyio or trio."""

from __future__ import annotations
