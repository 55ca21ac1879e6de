"""Configuration: one INI file, a `[DEFAULT]` section and one section per service.

The file is `--config PATH` (the CLI), else the `FARINE_INI` environment variable, else
`/etc/farine.ini`. It is read lazily the first time a setting is needed, so a plain
script never has to call `load()`. A file named explicitly (by `--config` or
`FARINE_INI`) must exist; the default one is optional and, when absent, every key takes
its default.

Each service reads the section named after its lowercase class name; a service with no
section of its own gets `[DEFAULT]`. Values are parsed into typed `ServiceSettings`; a
wrong value raises `SettingsError` naming the file, section, key and value.

For compatibility with baguette-messaging, `farine.settings.<section>` is the section as
a plain dict of parsed values (`farine.settings.consume["durable"]`).
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import json
import os
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, cast

from farine._cluster import split_nodes
from farine._redact import redact
from farine.codec import BODY_MAX_DEPTH_LIMIT, DEFAULT_BODY_MAX_DEPTH
from farine.exceptions import SettingsError

__all__ = (
    "DEFAULT_PATH",
    "ENV_VAR",
    "KEYS",
    "Config",
    "Key",
    "ServiceSettings",
    "configure",
    "current",
    "get",
    "load",
    "reference_table",
    "use",
    "using",
)

DEFAULT_PATH: Final = Path("/etc/farine.ini")
ENV_VAR: Final = "FARINE_INI"

_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off"})


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_positive_int(raw: str) -> int:
    value = _parse_int(raw)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _parse_body_max_depth(raw: str) -> int:
    value = _parse_int(raw)
    if not 1 <= value <= BODY_MAX_DEPTH_LIMIT:
        raise ValueError(f"expected an integer from 1 to {BODY_MAX_DEPTH_LIMIT}")
    return value


def _parse_non_negative_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value < 0 or value != value:  # NaN compares unequal to itself
        raise ValueError("expected a number of seconds >= 0")
    return value


def _parse_dict(raw: str) -> dict[str, Any]:
    text = raw.strip()
    try:
        value = json.loads(text)
    except ValueError:
        # baguette-messaging wrote Python literals (`{'max_retries': 5}`); accept those too.
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError("expected a JSON object or a Python dict literal") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object or a Python dict literal")
    items = cast(dict[Any, Any], value).items()
    return {str(k): v for k, v in items}


def _parse_names(raw: str) -> tuple[str, ...]:
    names = tuple(name for name in raw.replace(",", " ").split() if name)
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"expected service names separated by commas, got {name!r}")
    return names


def _parse_optional_str(raw: str) -> str | None:
    value = raw.strip()
    return value or None


def _parse_optional_int(raw: str) -> int | None:
    return _parse_int(raw) if raw.strip() else None


def _parse_optional_float(raw: str) -> float | None:
    return _parse_non_negative_float(raw) if raw.strip() else None


def _parse_time_limit(raw: str) -> float | None:
    if not raw.strip():
        return None
    value = _parse_non_negative_float(raw)
    if value == 0:
        raise ValueError("expected a number of seconds > 0 (leave it empty for no limit)")
    return value


def _parse_optional_positive_int(raw: str) -> int | None:
    return _parse_positive_int(raw) if raw.strip() else None


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return value

    return parse


def _parse_delivery_mode(raw: str) -> int:
    value = raw.strip()
    if value not in {"1", "2"}:
        raise ValueError("expected 1 (transient) or 2 (persistent)")
    return int(value)


def _parse_log_level(raw: str) -> str | None:
    value = raw.strip().upper()
    if not value:
        return None
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _parse_http_address(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT (e.g. 127.0.0.1:8081)")
    return value


def _parse_amqp_uri(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("amqp://", "amqps://", "memory://")):
        raise ValueError("expected an amqp://, amqps:// or memory:// URI")
    # Several nodes of one cluster, comma-separated: kept as one normalised string.
    return ",".join(split_nodes(value))


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its parser, its default and what it means."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    type: str
    doc: str
    secret: bool = False


KEYS: Final[tuple[Key, ...]] = (
    # -- baguette-messaging's keys ------------------------------------------------------------
    Key("type", _choice("direct", "topic", "fanout", "headers"), "direct", "str",
        "Exchange type publishers declare (consumers declare `direct` unless given "
        "`exchange_type=`, as baguette-messaging did)."),
    Key("durable", _parse_bool, True, "bool",
        "Exchanges and queues survive a broker restart."),
    Key("auto_delete", _parse_bool, False, "bool",
        "Queues are deleted when their last consumer goes away."),
    Key("auto_declare", _parse_bool, True, "bool",
        "Declare exchanges, queues and bindings at start-up."),
    Key("exclusive", _parse_bool, False, "bool",
        "Queues are used by this connection only and deleted when it closes."),
    Key("delivery_mode", _parse_delivery_mode, 2, "int",
        "1 = transient, 2 = persistent messages."),
    Key("retry", _parse_bool, True, "bool",
        "Retry publishing while the broker connection is being re-established."),
    Key("retry_policy", _parse_dict, {"max_retries": 5}, "dict",
        "How publishing retries: `max_retries` (and `interval_start`, `interval_step`, "
        "`interval_max` in seconds)."),
    Key("serializer", _choice("json", "msgpack"), "json", "str",
        "Encoding of published bodies: `json`, or `msgpack` (for farine consumers); "
        "RPC is always JSON."),
    Key("amqp_uri", _parse_amqp_uri, "memory://", "str",
        "Broker URI: `amqp://user:password@host:port/vhost`, `amqps://...`, or `memory://` "
        "for the in-process broker. Its password is masked in logs. The nodes of a "
        "cluster: several `amqp://` URIs separated by commas, tried in order."),
    Key("enabled", _parse_bool, True, "bool",
        "`false` skips this service at start-up."),
    Key("endpoint", _parse_optional_str, None, "str",
        "URL of the Server-Sent-Events stream of `farine.stream.http` entrypoints."),
    Key("debug", _parse_bool, False, "bool",
        "Allow baguette-messaging's `__debug__` profiling of consumed messages."),
    # -- runtime ---------------------------------------------------------------------
    Key("shutdown_timeout", _parse_non_negative_float, 30.0, "float",
        "Seconds in-flight handlers get to finish after SIGINT/SIGTERM (an entrypoint's "
        "`shutdown_timeout=` overrides it for that entrypoint)."),
    Key("max_workers", _parse_positive_int, 10, "int",
        "Worker threads for the service's `def` handlers."),
    Key("handler_timeout", _parse_time_limit, None, "float",
        "Seconds a consumer, RPC method or SSE handler call may run before it fails with "
        "`HandlerTimeout` (`timeout=` of the decorator overrides it); unset: no limit."),
    Key("max_concurrency", _parse_optional_positive_int, None, "int",
        "Calls of one consumer or RPC method running at once (`max_concurrency=` of the "
        "decorator overrides it); unset: as many as its prefetch."),
    Key("log_level", _parse_log_level, None, "str",
        "Log level (DEBUG, INFO, ...); `--log-level` overrides it."),
    Key("http", _parse_http_address, None, "str",
        "`[DEFAULT]` only: serve the operations endpoint (`/livez`, `/readyz`, "
        "`/metrics`) on `HOST:PORT`; unset: off. `--http` overrides it."),
    Key("log_format", _choice("text", "json"), "text", "str",
        "`text` (one line per record) or `json` (one object per line, with the service, "
        "entrypoint, message id, correlation id and trace id of the handler call it was "
        "logged in); `--log-format` overrides it."),
    # -- AMQP ------------------------------------------------------------------------
    Key("prefetch", _parse_positive_int, 64, "int",
        "Messages a consumer may hold unacknowledged."),
    Key("max_body_size", _parse_positive_int, 16 * 1024 * 1024, "int",
        "Largest body (bytes) a consumer decodes; larger ones are rejected."),
    Key("body_max_depth", _parse_body_max_depth, DEFAULT_BODY_MAX_DEPTH, "int",
        "Deepest nesting of arrays and objects in a body a consumer decodes, or in an "
        f"RPC argument or reply (1 to {BODY_MAX_DEPTH_LIMIT}); deeper ones are rejected, "
        "the same on every Python."),
    Key("heartbeat", _parse_positive_int, 60, "int", "AMQP heartbeat interval in seconds."),
    Key("connect_timeout", _parse_non_negative_float, 10.0, "float",
        "Seconds one connection attempt (AMQP or HTTP) may take."),
    Key("connect_retry_timeout", _parse_non_negative_float, 10.0, "float",
        "Seconds to keep retrying the first broker connection (refused, or no answer) "
        "before giving up; raise it when the broker starts alongside the services."),
    Key("publish_timeout", _parse_non_negative_float, 30.0, "float",
        "Seconds a publish may wait for the connection and the broker's confirm."),
    Key("amqp_fast_path", _choice("auto", "on", "off"), "auto", "str",
        "AMQP fast path: auto (only on verified aiormq, pamqp and Python versions), on, "
        "or off (aiormq's documented API only). FARINE_AMQP_FAST_PATH overrides it."),
    Key("amqp_tls_ca", _parse_optional_str, None, "str",
        "On `amqps://`: a PEM file of the CA certificates that verify the broker's "
        "certificate (default: the system's)."),
    Key("amqp_tls_cert", _parse_optional_str, None, "str",
        "On `amqps://`: this client's certificate (PEM), for brokers that require one."),
    Key("amqp_tls_key", _parse_optional_str, None, "str",
        "On `amqps://`: the private key of `amqp_tls_cert` (PEM; default: in that file)."),
    Key("amqp_tls_verify", _parse_bool, True, "bool",
        "On `amqps://`: verify the broker's certificate and host name. `false` (or "
        "`?no_verify_ssl=1` in the URI) logs a WARNING at each connection."),
    # -- delivery guarantees ----------------------------------------------------------
    Key("retry_budget", _parse_non_negative_float, 60.0, "float",
        "Seconds of delays within which a consumer retries a transient failure (when "
        "`consume()` has no `retry=`) before dead-lettering the message."),
    Key("retry_delay", _parse_non_negative_float, 1.0, "float",
        "Seconds before the first retry of the default retry policy (then doubled, "
        "with jitter)."),
    Key("retry_max_delay", _parse_non_negative_float, 30.0, "float",
        "Longest delay (seconds) between two retries of the default retry policy."),
    Key("dead_letter", _parse_bool, True, "bool",
        "Failed messages go to a dead-letter queue `<queue>.dead`; `false` rejects them "
        "(dropped unless the queue has a dead-letter exchange)."),
    Key("dead_letter_exchange", _parse_optional_str, None, "str",
        "Exchange farine declares for dead letters (`<queue>.dead` bound to it with the "
        "queue's name); unset: the default exchange."),
    Key("queue_type", _choice("classic", "quorum"), "classic", "str",
        "Type of the queues consumers declare: `classic`, or `quorum` (durable, "
        "replicated; the work queue then gets `x-queue-type`)."),
    Key("delivery_limit", _parse_optional_int, None, "int",
        "Deliveries a quorum queue allows per message (`x-delivery-limit`)."),
    # -- RPC -------------------------------------------------------------------------
    Key("rpc_timeout", _parse_non_negative_float, 30.0, "float",
        "Default deadline of an RPC call, in seconds."),
    Key("rpc_send_traceback", _parse_bool, False, "bool",
        "Include the server's traceback text (and file paths) in RPC error replies; "
        "off, they carry a one-line summary."),
    Key("rpc_stream_window", _parse_positive_int, 256, "int",
        "Items of an RPC stream the server may send ahead of its reader."),
    Key("rpc_legacy_servers", _parse_names, (), "list",
        "Services served by baguette-messaging (comma-separated): calls to them get their "
        "replies through a reply queue bound to the service's exchange."),
    # -- SSE -------------------------------------------------------------------------
    Key("headers", _parse_dict, {}, "dict",
        "Extra HTTP headers for the SSE endpoint (e.g. Authorization); never logged.",
        secret=True),
    Key("sse_retry", _parse_non_negative_float, 3.0, "float",
        "Seconds before reconnecting to an SSE stream when the server sent no `retry:`."),
    # -- database --------------------------------------------------------------------
    Key("db_connector", _parse_optional_str, None, "str",
        "`postgres` or `sqlite`; unset means the service has no database."),
    Key("db_name", _parse_optional_str, None, "str",
        "Database name (the file path for sqlite)."),
    Key("db_user", _parse_optional_str, None, "str", "Database user."),
    Key("db_host", _parse_optional_str, None, "str", "Database host."),
    Key("db_password", _parse_optional_str, None, "str", "Database password.", secret=True),
    Key("db_port", _parse_optional_int, None, "int", "Database port."),
    Key("db_max_conn", _parse_positive_int, 10, "int", "Size of the connection pool."),
    Key("db_stale_timeout", _parse_optional_float, None, "float",
        "Seconds after which an idle pooled connection is recycled."),
    Key("db_timeout", _parse_non_negative_float, 10.0, "float",
        "Seconds to wait for a free pooled connection."),
    Key("transaction", _parse_bool, False, "bool",
        "Wrap every handler call of the service in a database transaction."),
)  # fmt: skip

_KEYS_BY_NAME: Final = {key.name: key for key in KEYS}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings(Mapping[str, Any]):
    """The parsed settings of one service.

    Attribute access is typed (`settings.max_workers`); mapping access
    (`settings["durable"]`) is kept for code written against baguette-messaging.
    Keys farine does not know are kept, as strings, in `extra`.
    """

    name: str
    source: str = "<defaults>"
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    auto_declare: bool = True
    exclusive: bool = False
    delivery_mode: int = 2
    retry: bool = True
    retry_policy: dict[str, Any] = field(default_factory=lambda: {"max_retries": 5})
    serializer: str = "json"
    amqp_uri: str = "memory://"
    enabled: bool = True
    endpoint: str | None = None
    debug: bool = False
    shutdown_timeout: float = 30.0
    max_workers: int = 10
    handler_timeout: float | None = None
    max_concurrency: int | None = None
    log_level: str | None = None
    http: str | None = None
    log_format: str = "text"
    prefetch: int = 64
    max_body_size: int = 16 * 1024 * 1024
    body_max_depth: int = DEFAULT_BODY_MAX_DEPTH
    heartbeat: int = 60
    connect_timeout: float = 10.0
    connect_retry_timeout: float = 10.0
    publish_timeout: float = 30.0
    amqp_fast_path: str = "auto"
    amqp_tls_ca: str | None = None
    amqp_tls_cert: str | None = None
    amqp_tls_key: str | None = None
    amqp_tls_verify: bool = True
    retry_budget: float = 60.0
    retry_delay: float = 1.0
    retry_max_delay: float = 30.0
    dead_letter: bool = True
    dead_letter_exchange: str | None = None
    queue_type: str = "classic"
    delivery_limit: int | None = None
    rpc_timeout: float = 30.0
    rpc_send_traceback: bool = False
    rpc_stream_window: int = 256
    rpc_legacy_servers: tuple[str, ...] = ()
    headers: dict[str, Any] = field(default_factory=dict[str, Any])
    sse_retry: float = 3.0
    db_connector: str | None = None
    db_name: str | None = None
    db_user: str | None = None
    db_host: str | None = None
    db_password: str | None = None
    db_port: int | None = None
    db_max_conn: int = 10
    db_stale_timeout: float | None = None
    db_timeout: float = 10.0
    transaction: bool = False
    extra: dict[str, str] = field(default_factory=dict[str, str])

    def __getitem__(self, key: str) -> Any:
        if key in _KEYS_BY_NAME:
            return getattr(self, key)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from _KEYS_BY_NAME
        yield from self.extra

    def __len__(self) -> int:
        return len(_KEYS_BY_NAME) + len(self.extra)

    def __repr__(self) -> str:
        def show(key: Key) -> str:
            value = getattr(self, key.name)
            return "***" if key.secret and value else redact(repr(value))

        shown = ", ".join(f"{key.name}={show(key)}" for key in KEYS)
        return f"ServiceSettings(name={self.name!r}, {shown})"


def _check_fields() -> None:
    # Keep KEYS and ServiceSettings in step: a key added to one must be added to the other.
    names = {f.name for f in fields(ServiceSettings)} - {"name", "source", "extra"}
    assert names == set(_KEYS_BY_NAME), names ^ set(_KEYS_BY_NAME)


_check_fields()


class Config:
    """A loaded configuration file: `[DEFAULT]` plus one section per service."""

    def __init__(self, path: Path | None, parser: configparser.RawConfigParser) -> None:
        self.path = path
        self._parser = parser
        self._cache: dict[str, ServiceSettings] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_string(cls, text: str, *, source: str = "<string>") -> Config:
        """Parse INI text (mainly for tests and embedded configuration)."""
        parser = _new_parser()
        try:
            parser.read_string(text, source=source)
        except configparser.Error as exc:
            raise SettingsError(f"{source}: cannot parse the file: {exc}") from None
        return cls(Path(source), parser)

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "<defaults>"

    def sets(self, key: str) -> bool:
        """True when `[DEFAULT]` or a service section sets `key`."""
        return key in self._parser.defaults() or any(
            self._parser.has_option(section, key) for section in self._parser.sections()
        )

    def with_defaults(self, **values: str) -> Config:
        """Return a copy whose `[DEFAULT]` section also sets `values` (raw INI text)."""
        parser = _new_parser()
        sections = {name: dict(self._parser.items(name, raw=True)) for name in self.sections()}
        parser.read_dict(sections)
        parser.read_dict({"DEFAULT": {**self._parser.defaults(), **values}})
        return Config(self.path, parser)

    def sections(self) -> list[str]:
        """Return the section names of the file, `DEFAULT` excluded."""
        return self._parser.sections()

    def service(self, name: str) -> ServiceSettings:
        """Return the parsed settings of service `name` (its lowercase class name)."""
        with self._lock:
            cached = self._cache.get(name)
            if cached is None:
                cached = self._cache[name] = self._parse(name)
            return cached

    def _parse(self, name: str) -> ServiceSettings:
        section = name if self._parser.has_section(name) else "DEFAULT"
        raw: Mapping[str, str] = (
            self._parser[section] if section != "DEFAULT" else self._parser.defaults()
        )
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for option in raw:
            text = raw[option]
            key = _KEYS_BY_NAME.get(option)
            if key is None:
                extra[option] = text
                continue
            try:
                values[option] = key.parse(text)
            except ValueError as exc:
                shown = "***" if key.secret else redact(text)
                raise SettingsError(
                    f"{self.source} [{section}] {option} = {shown!r}: {exc}"
                ) from None
        return ServiceSettings(name=name, source=self.source, extra=extra, **values)


def _new_parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None)
    parser.optionxform = str.lower  # type: ignore[assignment]  # keys are case-insensitive
    return parser


def _read(path: Path, *, required: bool) -> Config:
    parser = _new_parser()
    try:
        with path.open(encoding="utf-8") as file:
            parser.read_file(file, source=str(path))
    except FileNotFoundError:
        if required:
            raise SettingsError(f"{path}: configuration file not found") from None
        return Config(None, parser)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the file: {exc}") from None
    except configparser.Error as exc:
        raise SettingsError(f"{path}: cannot parse the file: {redact(str(exc))}") from None
    return Config(path, parser)


_lock = threading.Lock()
_current: Config | None = None
_explicit_path: Path | None = None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration file now and make it the current one.

    Args:
        path: The file to read. Without it: the path given to `configure()`, else
            `FARINE_INI`, else `/etc/farine.ini` (which may be absent).

    Returns:
        The loaded configuration.

    Raises:
        SettingsError: A named file is missing, unreadable or not valid INI.
    """
    global _current
    if path is not None:
        chosen, required = Path(path), True
    elif _explicit_path is not None:
        chosen, required = _explicit_path, True
    elif os.environ.get(ENV_VAR):
        chosen, required = Path(os.environ[ENV_VAR]), True
    else:
        chosen, required = DEFAULT_PATH, False
    config = _read(chosen, required=required)
    with _lock:
        _current = config
    return config


def configure(path: str | os.PathLike[str] | None) -> None:
    """Choose the file later loads read (the CLI's `--config`) and forget the current one."""
    global _current, _explicit_path
    with _lock:
        _explicit_path = Path(path) if path is not None else None
        _current = None


def use(config: Config) -> None:
    """Make `config` the current configuration (tests, or settings built in code)."""
    global _current
    with _lock:
        _current = config


@contextlib.contextmanager
def using(config: Config | None) -> Generator[Config | None]:
    """Make `config` current for the block, then restore the one current before.

    Args:
        config: The configuration; None forgets the current one (the file is then
            loaded on first use).

    Example:
        ```python
        with farine.settings.using(Config.from_string("[DEFAULT]\nprefetch = 1\n")):
            assert farine.settings.get("orders").prefetch == 1
        ```
    """
    global _current
    with _lock:
        previous, _current = _current, config
    try:
        yield config
    finally:
        with _lock:
            _current = previous


def current() -> Config:
    """Return the current configuration, loading it on first use."""
    config = _current
    if config is None:
        with _lock:
            config = _current
        if config is None:
            config = load()
    return config


def get(service: str) -> ServiceSettings:
    """Return the typed settings of `service` (its lowercase class name)."""
    return current().service(service)


def __getattr__(name: str) -> dict[str, Any]:
    # baguette-messaging exposed each section as a module attribute holding a dict.
    if name.startswith("__"):
        raise AttributeError(name)
    return dict(get(name))


def reference_table() -> str:
    """Render every key as a Markdown table (the configuration reference's source)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        if key.default is None:
            default = "*(unset)*"
        elif key.default == ():
            default = "*(none)*"
        else:
            default = f"`{_render_default(key.default)}`"
        rows.append(f"| `{key.name}` | {key.type} | {default} | {key.doc} |")
    return "\n".join(rows) + "\n"


def _render_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, tuple):
        return ", ".join(cast(tuple[str, ...], value))
    return str(value)
