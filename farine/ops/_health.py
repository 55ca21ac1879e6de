"""What `/readyz` reports: every entrypoint ready, or what is not and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farine.runtime import Runtime

__all__ = ("not_ready",)


async def not_ready(runtime: Runtime) -> dict[str, str]:
    """What keeps `runtime` from being ready, by name (empty: ready).

    Not ready: while starting, once stopping (so that a load balancer stops routing to
    the process before it drains), and while an entrypoint cannot take work (its
    consumer reconnecting, its connection blocked by a broker alarm, ...).
    """
    if runtime.stopping.is_set():
        return {"runtime": "stopping"}
    reasons: dict[str, str] = {}
    if not runtime.ready:
        reasons["runtime"] = "starting"
    for entrypoint, started in runtime.entrypoint_states():
        if not started:
            reasons[entrypoint.qualname] = "starting"
            continue
        reason = await entrypoint.not_ready()
        if reason is not None:
            reasons[entrypoint.qualname] = reason
    return reasons
