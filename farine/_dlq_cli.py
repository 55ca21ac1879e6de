"""`farine dlq list|show|replay|purge`: operating the dead-letter queues from a shell."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, cast

import anyio

from farine import settings
from farine._redact import redact
from farine.exceptions import FarineError

if TYPE_CHECKING:
    from collections.abc import Callable

    from farine._broker import Connection
    from farine.amqp._dlq import DeadLetterView
    from farine.settings import ServiceSettings

__all__ = ("add_parser", "run")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],  # pyright: ignore[reportPrivateUsage]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `dlq` and its commands to the `farine` parser."""
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead-letter queues",
        description="Operate the dead-letter queues of consumers (see the Delivery "
        "guarantees guide). The broker is the amqp_uri of --service's section (default: "
        "[DEFAULT]).",
    )
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list", help="the dead-letter queues of MODULE's consumers, with their counts"
    )
    listing.add_argument("modules", nargs="+", metavar="MODULE", help="imports MODULE.service")
    common(listing)

    show = actions.add_parser("show", help="print the headers and a preview of messages")
    show.add_argument("queue", metavar="QUEUE")
    show.add_argument("--limit", type=_limit, default=10, metavar="N", help="default: 10")
    replay = actions.add_parser(
        "replay", help="publish messages back where they were first published"
    )
    replay.add_argument("queue", metavar="QUEUE")
    replay.add_argument("--limit", type=_limit, default=None, metavar="N", help="default: all")
    purge = actions.add_parser("purge", help="delete every message of QUEUE")
    purge.add_argument("queue", metavar="QUEUE")
    purge.add_argument("--yes", action="store_true", help="confirm: the messages are lost")
    for parser in (show, replay, purge):
        parser.add_argument("--service", metavar="NAME", help="the section giving amqp_uri")
        common(parser)


def _settings_of(args: argparse.Namespace) -> ServiceSettings:
    return settings.get(cast(str | None, getattr(args, "service", None)) or "DEFAULT")


def run(args: argparse.Namespace, backend: str) -> int:
    """Run `farine dlq ...`; return the exit code."""
    from farine._broker import is_memory

    action = cast(str, args.dlq_command)
    if action == "purge" and not args.yes:
        print(
            f"farine: error: purging deletes every message of {args.queue!r} for good: "
            "add --yes to confirm",
            file=sys.stderr,
        )
        return 2
    if action == "list":
        targets = _dead_letter_queues(cast(list[str], args.modules))
        service = _settings_of(args) if not targets else targets[0][0]
    else:
        targets = []
        service = _settings_of(args)
    if is_memory(service.amqp_uri):
        print(
            "farine: error: `farine dlq` needs a broker other processes share (RabbitMQ): "
            f"amqp_uri is {service.amqp_uri}, an in-process broker (set amqp_uri)",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        from farine._broker import open_connection
        from farine._connections import options_for

        async with open_connection(service.amqp_uri, options_for(service)) as connection:
            return await _act(connection, args, targets)

    return anyio.run(main, backend=backend)


def _dead_letter_queues(modules: list[str]) -> list[tuple[ServiceSettings, str, str]]:
    """(settings, entrypoint, dead-letter queue) of every consumer of `modules`."""
    from farine.amqp._consumer import ConsumeSpec, dead_letter_queue
    from farine.discovery import discover

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[tuple[ServiceSettings, str, str]] = []
    for module in modules:
        for definition in discover(module):
            service = settings.get(definition.name)
            for name, spec in definition.entrypoints:
                if isinstance(spec, ConsumeSpec):
                    queue = dead_letter_queue(spec, definition.name, service)
                    if queue is not None:
                        found.append((service, f"{definition.name}.{name}", queue))
    return found


async def _act(
    connection: Connection,
    args: argparse.Namespace,
    targets: list[tuple[ServiceSettings, str, str]],
) -> int:
    from farine.amqp import _dlq

    action = cast(str, args.dlq_command)
    queue = cast(str, getattr(args, "queue", ""))
    try:
        if action == "list":
            for _, entrypoint, dead in targets:
                count = await connection.queue_size(dead)
                shown = "not declared yet" if count is None else str(count)
                print(f"{dead}\t{shown}\t({entrypoint})")
        elif action == "show":
            views = await _dlq.peek(connection, queue, cast(int, args.limit))
            for view in views:
                _print_view(view)
            print(f"{len(views)} message(s) shown; they stay in {queue}")
        elif action == "replay":
            count = await _dlq.replay(connection, queue, cast(int | None, args.limit))
            print(f"{count} message(s) replayed from {queue}")
        else:
            count = await _dlq.purge(connection, queue)
            print(f"{count} message(s) purged from {queue}")
    except FarineError as exc:
        print(f"farine: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _print_view(view: DeadLetterView) -> None:
    exchange, routing_key = view.route
    print(f"--- message {view.message_id} ({view.size} bytes) -> {exchange!r} / {routing_key!r}")
    for key in sorted(view.headers):
        print(f"  {key}: {view.headers[key]}")
    more = "..." if view.size > len(view.preview) else ""
    print(f"  body: {view.preview.decode('utf-8', errors='replace')}{more}")
