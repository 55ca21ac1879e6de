"""Where the operations endpoint listens, and the hook for one port per worker process."""

from __future__ import annotations

from typing import Final

from farine.exceptions import ConfigurationError

__all__ = ("WORKER_INDEX_VARIABLE", "split_address", "worker_address")

#: The environment variable that gives a worker process its index (0, 1, ...): its
#: endpoint listens on the port of the `http` setting plus that index.
WORKER_INDEX_VARIABLE: Final = "FARINE_WORKER_INDEX"


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) as `(host, port)`.

    Raises:
        ConfigurationError: Not `HOST:PORT`.
    """
    host, colon, port = address.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(
            f"the operations endpoint address must be HOST:PORT, not {address!r}"
        )
    return host.strip("[]"), int(port)


def worker_address(address: str, index: int) -> str:
    """The endpoint address of worker `index` of a process started with `address`.

    Each worker of a supervisor that starts several processes listens on a port of its
    own: the port of `address` plus `index` (port 0 stays 0: any free port).

    Example:
        ```python
        worker_address("127.0.0.1:8081", 2)  # "127.0.0.1:8083"
        ```
    """
    host, port = split_address(address)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index if port else 0}"
