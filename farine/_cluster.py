"""Broker URIs that name several nodes of one RabbitMQ cluster.

`amqp_uri` may list the nodes of a cluster, separated by commas. A connection tries them
in the order given, each time it connects or reconnects, and uses the first that answers.

Example:
    ```python
    split_nodes("amqp://u:p@rabbit-1/prod, amqp://u:p@rabbit-2/prod")
    # ('amqp://u:p@rabbit-1/prod', 'amqp://u:p@rabbit-2/prod')
    ```
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ("split_nodes",)

_SCHEMES = ("amqp://", "amqps://")


def split_nodes(uri: str) -> tuple[str, ...]:
    """Split a (possibly comma-separated) broker URI into one URI per node.

    Args:
        uri: `memory://...`, one `amqp(s)://` URI, or several separated by commas.

    Returns:
        The URIs, stripped, in the order given (a memory URI alone).

    Raises:
        ValueError: A part is empty or not an `amqp://`/`amqps://` URI, a memory URI is
            listed with others, or the nodes name different virtual hosts.
    """
    parts = tuple(part.strip() for part in uri.split(","))
    if len(parts) == 1:
        return parts
    if any(part.startswith("memory:") for part in parts):
        raise ValueError("a memory:// URI cannot be listed with other brokers")
    for part in parts:
        if not part.startswith(_SCHEMES):
            raise ValueError(f"expected amqp:// or amqps:// URIs separated by commas, got {part!r}")
    vhosts = {_vhost(part) for part in parts}
    if len(vhosts) > 1:
        shown = ", ".join(sorted(repr(v) for v in vhosts))
        raise ValueError(f"the nodes of one broker must name the same virtual host, not {shown}")
    return parts


def _vhost(uri: str) -> str:
    path = urlsplit(uri).path
    return unquote(path[1:]) if len(path) > 1 else "/"
