"""The `farine` command: `farine start MODULE ...` (and baguette-messaging's
`farine --start=MODULE`), `farine migrate MODULE`, `farine call SERVICE.METHOD ...`,
`farine asyncapi MODULE`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, Literal, cast

import anyio
import msgspec

import farine
from farine import _dlq_cli, settings
from farine._logging import FORMATS, LogFormat, setup_logging
from farine._redact import add_secret, redact
from farine.entrypoints import running_sync_calls
from farine.exceptions import ConfigurationError, FarineError, RPCError, ServiceNotFound

__all__ = ("main",)

logger = logging.getLogger("farine.cli")

Backend = Literal["asyncio", "trio"]
BACKENDS: Final[tuple[Backend, ...]] = ("asyncio", "trio")

#: Exit codes (docs/running.md): 1 = a runtime failure (a service failed, the broker or
#: a call failed, the user's code raised); 2 = the command line, the configuration or the
#: code's declarations must change, or the module is not found (argparse's convention);
#: 130 = interrupted again while stopping.
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="event loop: asyncio (default) or trio (env: FARINE_BACKEND)",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="INI file (default: $FARINE_INI, else /etc/farine.ini)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="log level (default: the log_level setting, else INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        help="text lines or JSON objects (default: the log_format setting, else text)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the `farine` command."""
    parser = argparse.ArgumentParser(
        prog="farine",
        description="Run farine services, call their RPC methods, operate dead-letter queues, "
        "describe services in AsyncAPI.",
        epilog="baguette-messaging's form `farine --start=MODULE` (or -s MODULE) still works.",
    )
    parser.add_argument("--version", action="version", version=f"farine {farine.__version__}")
    parser.add_argument(
        "-s", "--start", action="append", metavar="MODULE", dest="legacy_start",
        help="start MODULE (same as `farine start MODULE`)",
    )  # fmt: skip
    _common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = commands.add_parser("start", help="run the services of one or more modules")
    start.add_argument("modules", nargs="+", metavar="MODULE", help="imports MODULE.service")
    start.add_argument(
        "--workers", type=_positive_int, metavar="N",
        help="run N supervised processes of the services (competing consumers)",
    )  # fmt: skip
    start.add_argument(
        "--reload", action="store_true",
        help="restart when a Python or INI file under a MODULE changes (development)",
    )  # fmt: skip
    _common(start)
    start.add_argument(
        "--http", metavar="HOST:PORT", type=_http_address,
        help="serve /livez, /readyz and /metrics on HOST:PORT (default: the http setting)",
    )  # fmt: skip

    migrate = commands.add_parser("migrate", help="create the tables of MODULE.models")
    migrate.add_argument("module", metavar="MODULE")
    _common(migrate)

    call = commands.add_parser(
        "call",
        help="call an RPC method and print its result as JSON",
        description="Call SERVICE.METHOD over RPC and print the result as JSON on stdout "
        "(a stream: one JSON document per line). A remote error or a timeout is printed "
        "on stderr as one line, with exit code 1. The SERVICE section of the configuration gives "
        "amqp_uri and rpc_timeout.",
    )
    call.add_argument(
        "target", type=_call_target, metavar="SERVICE.METHOD", help="the method to call"
    )
    call.add_argument(
        "args_json", type=_json_array, nargs="?", default=[], metavar="ARGS_JSON",
        help="positional arguments, as a JSON array (default: [])",
    )  # fmt: skip
    call.add_argument(
        "--kwargs", type=_json_object, default={}, metavar="JSON",
        help="keyword arguments, as a JSON object (default: {})",
    )  # fmt: skip
    call.add_argument(
        "--stream", action="store_true", help="read a stream: print each item as it arrives"
    )
    call.add_argument(
        "--timeout", type=_positive_float, metavar="S",
        help="deadline of the call in seconds (default: the rpc_timeout setting of SERVICE)",
    )  # fmt: skip
    call.add_argument(
        "--traceback", action="store_true",
        help="print the remote traceback too, when the server sends one (rpc_send_traceback)",
    )  # fmt: skip
    _common(call)

    asyncapi = commands.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of the services of MODULE",
        description="Describe every service of MODULE (imports MODULE.service, as `farine "
        "start` does) as one AsyncAPI 3.0.0 document: consumers, publishers, RPC methods "
        "and SSE listeners, with the JSON Schemas of their messages. Exit codes: 0 written; "
        "1 the output cannot be written, or the services' code fails; 2 no such module, "
        "two services of one name, or YAML without PyYAML installed.",
    )
    asyncapi.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE",
        help="imports MODULE.service (several: one document)",
    )
    asyncapi.add_argument(
        "--format", choices=("json", "yaml"), default="json",
        help="json (default) or yaml (needs PyYAML: pip install 'farine[yaml]')",
    )  # fmt: skip
    asyncapi.add_argument(
        "--output", "-o", metavar="FILE", help="write the document to FILE (default: stdout)"
    )
    _common(asyncapi)
    _dlq_cli.add_parser(commands, _common)
    return parser


# -- `farine call` arguments (argparse reports their errors as usage errors, exit 2) ----


def _call_target(text: str) -> tuple[str, str]:
    service, dot, method = text.partition(".")
    if not dot or not service or not method.isidentifier():
        raise argparse.ArgumentTypeError(f"expected SERVICE.METHOD, got {text!r}")
    return service, method


def _decode_json(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON: {exc}") from None


def _json_array(text: str) -> list[Any]:
    value = _decode_json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(
            f"expected a JSON array of positional arguments (e.g. '[1, 2]'), got {text!r}"
        )
    return cast(list[Any], value)


def _json_object(text: str) -> dict[str, Any]:
    value = _decode_json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of keyword arguments (e.g. '{{\"n\": 3}}'), got {text!r}"
        )
    kwargs = cast(dict[str, Any], value)
    reserved = sorted(name for name in kwargs if name.startswith("__"))
    if reserved:
        # `__stream__` and `__timeout__` are the client's own flags: use the options.
        raise argparse.ArgumentTypeError(f"reserved keyword argument(s): {', '.join(reserved)}")
    return kwargs


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _http_address(text: str) -> str:
    from farine.ops._address import split_address

    try:
        split_address(text)
    except FarineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _choose_backend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backend:
    backend = cast(str | None, args.backend) or os.environ.get("FARINE_BACKEND") or "asyncio"
    for known in BACKENDS:
        if backend == known:
            return known
    parser.error(f"FARINE_BACKEND: invalid choice {backend!r} (choose from asyncio, trio)")


def _prepare(args: argparse.Namespace, default_level: str = "INFO") -> None:
    """Configure settings and logging from the command line."""
    settings.configure(cast(str | None, args.config))
    config = settings.current()
    defaults = config.service("DEFAULT")
    add_secret(defaults.db_password)
    for section in config.sections():
        add_secret(config.service(section).db_password)
    log_format = cast(LogFormat | None, args.log_format) or cast(LogFormat, defaults.log_format)
    setup_logging(
        cast(str | None, args.log_level) or defaults.log_level or default_level, log_format
    )
    if config.path is None:
        logger.info("no configuration file at %s: using defaults", settings.DEFAULT_PATH)
    else:
        logger.info("configuration: %s", config.path)


def _start(modules: Sequence[str], backend: Backend, http: str | None = None) -> int:
    from farine.discovery import discover
    from farine.runtime import run

    if os.getcwd() not in sys.path:
        # `farine start mymodule` imports from the current directory, as `python -m` would.
        sys.path.insert(0, os.getcwd())
    services = [service for module in modules for service in discover(module)]
    if not services:
        print(
            f"farine: error: nothing to run: no service in {', '.join(modules)} "
            "(a service is a class with a decorated method, in MODULE/service.py)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    logger.info("starting %d service(s) from %s on %s", len(services), ", ".join(modules), backend)
    anyio.run(functools.partial(run, services, http=http), backend=backend)
    return 0


def _start_processes(args: argparse.Namespace, backend: Backend) -> int:
    """`farine start --workers N` / `--reload`: supervise `farine start` processes."""
    from farine._processes import Supervisor, module_directories

    modules = cast(list[str], args.modules)
    arguments = ["start", *modules, "--backend", backend]
    for option, value in (
        ("--config", args.config),
        ("--log-level", args.log_level),
        ("--log-format", args.log_format),
        ("--http", args.http),  # each worker on its own port: see farine.ops
    ):
        if value is not None:
            arguments += [option, cast(str, value)]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as the workers import the modules
    watch = module_directories(modules) if args.reload else None
    workers = cast(int | None, args.workers) or 1
    return anyio.run(Supervisor(arguments, workers, watch).run, backend=backend)


def _migrate(module: str) -> int:
    import importlib

    from farine.discovery import import_package

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import_package(module)  # a missing module reads as with `farine start`
    # Imported by name: the database connector is optional at this stage of the project.
    sql = importlib.import_module("farine.connectors.sql")
    migrate = cast(Callable[[str], None], sql.migrate)
    migrate(module)
    return 0


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()  # a stream's items show as they arrive, also through a pipe


def _call(args: argparse.Namespace, backend: Backend) -> int:
    from farine.rpc import Client
    from farine.rpc._blocking_client import use_script_backend

    service, method = cast(tuple[str, str], args.target)
    positional = cast(list[Any], args.args_json)
    keywords = cast(dict[str, Any], args.kwargs)
    from farine._broker import is_memory

    uri = settings.get(service).amqp_uri
    if is_memory(uri):
        print(
            f"farine: error: `farine call` needs a broker other processes share (RabbitMQ): "
            f"amqp_uri of [{service}] is {uri}, an in-process broker (set amqp_uri)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    use_script_backend(backend)
    # Outside a service, the client's deadline also bounds connecting to the broker.
    rpc = Client(service, cast(float | None, args.timeout))
    try:
        if not args.stream:
            _print_json(rpc.call(method, *positional, **keywords))
            return 0
        stream = cast(Generator[Any], rpc.call(method, *positional, __stream__=True, **keywords))
        # Closed on every way out (an error, a closed pipe): the server stops streaming.
        with contextlib.closing(stream) as items:
            for item in items:
                _print_json(item)
    except RPCError as exc:
        if exc.remote_traceback and args.traceback:
            print(exc.remote_traceback.rstrip(), file=sys.stderr)
        print(f"farine: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader left (`farine call ... --stream | head -1`): flushing at exit would
        # fail again, so point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from farine.asyncapi import YamlUnavailable, build_document, render

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `farine start` imports the module
    document = build_document(cast(list[str], args.modules))
    try:
        text = render(document, cast(Literal["json", "yaml"], args.format))
    except YamlUnavailable as exc:
        print(f"farine: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    output = cast(str | None, args.output)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        print(f"farine: error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        group = cast(BaseExceptionGroup[BaseException], exc)
        return all(_only_interrupts(inner) for inner in group.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def exit_code(exc: FarineError) -> int:
    """The exit code of a command that failed with `exc` (see docs/running.md)."""
    # ConfigurationError includes a login, a virtual host or a certificate the broker
    # refuses: trying again changes nothing until the settings change. An unreachable
    # broker (BrokerUnavailable) may come back: a runtime failure.
    if isinstance(exc, settings.SettingsError | ServiceNotFound | ConfigurationError):
        return EXIT_USAGE
    return EXIT_FAILURE


def _unwrap(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, else the group itself."""
    if isinstance(exc, BaseExceptionGroup):
        inner = cast(tuple[BaseException, ...], exc.exceptions)  # pyright: ignore[reportUnknownMemberType]
        if len(inner) == 1:
            return _unwrap(inner[0])
    return cast(BaseException, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `farine` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = cast(str | None, args.command)
    legacy = cast(list[str] | None, args.legacy_start)
    if command is None and not legacy:
        parser.error("nothing to do: use `farine start MODULE` (or --start=MODULE)")
    if command is not None and legacy:
        parser.error("--start cannot be combined with a command")
    backend = _choose_backend(args, parser)
    try:
        # `farine call`, `farine dlq` and `farine asyncapi` print results on stdout: keep
        # their stderr for warnings and errors.
        _prepare(args, "WARNING" if command in {"call", "dlq", "asyncapi"} else "INFO")
        if command == "asyncapi":
            code = _asyncapi(args)
        elif command == "migrate":
            code = _migrate(cast(str, args.module))
        elif command == "call":
            code = _call(args, backend)
        elif command == "dlq":
            code = _dlq_cli.run(args, backend)
        elif command == "start" and (args.workers is not None or args.reload):
            code = _start_processes(args, backend)
        else:
            http = cast(str | None, getattr(args, "http", None))  # `start` has --http
            code = _start(legacy or cast(list[str], args.modules), backend, http)
    except FarineError as exc:
        print(f"farine: error: {redact(str(exc))}", file=sys.stderr)
        return exit_code(exc)
    except BaseException as exc:
        if _only_interrupts(exc):
            print("farine: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        inner = _unwrap(exc)
        if isinstance(inner, FarineError):
            print(f"farine: error: {redact(str(inner))}", file=sys.stderr)
            return exit_code(inner)
        if inner is not exc and isinstance(inner, Exception):
            raise inner from None
        raise
    return code


def legacy_migrate(argv: Sequence[str] | None = None) -> int:
    """baguette-messaging's `farine-migrate --service MODULE`."""
    parser = argparse.ArgumentParser(prog="farine-migrate")
    parser.add_argument("-s", "--service", required=True, metavar="MODULE")
    parser.add_argument("--config", metavar="PATH")
    args = parser.parse_args(argv)
    return main(
        ["migrate", cast(str, args.service)]
        + (["--config", cast(str, args.config)] if args.config else [])
    )


def run_main() -> None:  # pragma: no cover - exercised through subprocess tests
    """Console-script wrapper: exit with `main()`'s code, not waiting on stuck threads."""
    code = main()
    stuck = running_sync_calls()
    if stuck:
        # A `def` handler still running after the shutdown grace period cannot be
        # interrupted; do not let it keep the process alive.
        logger.warning("%d handler call(s) still running in worker threads; abandoning them", stuck)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run_legacy_migrate() -> None:  # pragma: no cover - exercised through subprocess tests
    """Console-script wrapper of `legacy_migrate()`."""
    sys.exit(legacy_migrate())
