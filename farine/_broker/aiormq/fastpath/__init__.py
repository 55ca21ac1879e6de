"""The fast path: every line of farine that relies on private names of aiormq, pamqp,
asyncio, anyio or trio lives in this folder, behind one switch.

`decide()` reads the switch: the `amqp_fast_path` setting (`auto`, `on` or `off`),
overridden by the `FARINE_AMQP_FAST_PATH` environment variable. Under `auto` the fast
path runs only on the versions listed in `verified.toml` beside this file. Importing
this package touches no private name: the fast modules are imported only once chosen.

Example:
    ```python
    decision = decide("auto")
    if decision.enabled:
        ...
    ```
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from farine._broker.aiormq.calls import ChannelCalls

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = (
    "ENV_VAR",
    "MODES",
    "Decision",
    "channel_calls",
    "decide",
    "installed_versions",
    "verified_versions",
)

logger = logging.getLogger("farine.amqp")

#: The environment variable that overrides the `amqp_fast_path` setting.
ENV_VAR: Final = "FARINE_AMQP_FAST_PATH"

#: The values of the setting and of the environment variable.
MODES: Final = ("auto", "on", "off")

Mode = Literal["auto", "on", "off"]

_VERIFIED_FILE: Final = Path(__file__).with_name("verified.toml")

#: The packages (and Python) whose versions decide `auto`.
_GATED: Final = ("python", "aiormq", "pamqp")


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether the fast path runs, and why."""

    enabled: bool
    mode: Mode
    reason: str


def verified_versions() -> dict[str, tuple[str, ...]]:
    """The versions listed in `verified.toml`, per package (and `python`)."""
    data = tomllib.loads(_VERIFIED_FILE.read_text(encoding="utf-8"))
    return {name: tuple(str(version) for version in data.get(name, ())) for name in _GATED}


def installed_versions() -> dict[str, str]:
    """The installed versions of aiormq and pamqp, and the Python minor version."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "aiormq": importlib.metadata.version("aiormq"),
        "pamqp": importlib.metadata.version("pamqp"),
    }


def _unverified(installed: Mapping[str, str], verified: Mapping[str, tuple[str, ...]]) -> list[str]:
    return [
        f"{name} {version}" for name, version in installed.items() if version not in verified[name]
    ]


def _mode(setting: str) -> Mode:
    chosen = os.environ.get(ENV_VAR, "").strip().lower() or setting
    if chosen not in MODES:
        source = ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "amqp_fast_path"
        raise ValueError(f"{source} = {chosen!r}: expected one of auto, on, off")
    return chosen


def decide(
    setting: str = "auto",
    *,
    installed: Mapping[str, str] | None = None,
    verified: Mapping[str, tuple[str, ...]] | None = None,
) -> Decision:
    """Decide whether the fast path runs.

    Args:
        setting: The `amqp_fast_path` setting; `FARINE_AMQP_FAST_PATH` overrides it.
        installed: The versions to judge (default: `installed_versions()`).
        verified: The verified versions (default: `verified_versions()`).

    Raises:
        ValueError: The setting or the environment variable is not auto, on or off.
    """
    mode = _mode(setting)
    if mode == "off":
        return Decision(False, mode, "amqp_fast_path = off")
    unverified = _unverified(
        installed_versions() if installed is None else installed,
        verified_versions() if verified is None else verified,
    )
    if not unverified:
        return Decision(True, mode, "verified versions")
    listed = ", ".join(unverified)
    if mode == "on":
        return Decision(True, mode, f"amqp_fast_path = on, on versions not verified: {listed}")
    return Decision(False, mode, f"versions not verified for it: {listed}")


#: What was logged already, so that each decision is logged once per process.
_logged: set[Decision] = set()


def channel_calls(setting: str = "auto") -> ChannelCalls:
    """The channel calls of a new connection: the fast path's or the stock ones.

    Logs the decision once per process: at INFO when `auto` falls back to the stock
    path, at WARNING when `on` runs on versions not verified.

    Raises:
        ValueError: The setting or the environment variable is not auto, on or off.
    """
    decision = decide(setting)
    if decision not in _logged:
        _logged.add(decision)
        if decision.mode == "on" and decision.reason != "verified versions":
            logger.warning("AMQP fast path: %s; it may fail", decision.reason)
        elif decision.mode == "auto" and not decision.enabled:
            logger.info("AMQP fast path off: %s; using aiormq's documented API", decision.reason)
        else:
            logger.debug(
                "AMQP fast path %s (%s)", "on" if decision.enabled else "off", decision.reason
            )
    if not decision.enabled:
        return ChannelCalls()
    # Imported only now: the fast modules read private names as they load.
    from farine._broker.aiormq.fastpath.calls import FastChannelCalls

    return FastChannelCalls()
