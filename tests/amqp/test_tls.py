"""`amqps://` against the TLS node `.ci/extra-broker start tls` starts (client certificates
required).

Without `FARINE_TEST_AMQPS_URI` (and `FARINE_TEST_TLS_DIR`) these tests skip, except
under CI, where they fail: `.ci/run` starts that broker.
"""

from __future__ import annotations

import os
import ssl
import uuid
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from anyio.streams.tls import TLSListener
from yarl import URL

import farine.amqp
from farine._broker import AmqpConnection, ConnectionOptions, open_connection
from farine.amqp import AsyncPublisher, BrokerUnavailable, Message, TLSVerificationError
from farine.exceptions import ConfigurationError
from farine.settings import Config
from tests.amqp._proxy import free_port
from tests.amqp._tls import AMQPS_URI, TLS_DIR
from tests.amqp.conftest import LogWatcher, Recorder, running

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


@pytest.fixture(autouse=True)
def _tls_broker() -> None:
    if AMQPS_URI and (TLS_DIR / "ca.pem").exists():
        return
    reason = (
        "FARINE_TEST_AMQPS_URI and FARINE_TEST_TLS_DIR are not set: start the TLS broker "
        "with `bash .ci/extra-broker start tls DIR` (see .ci/run)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the TLS tests, but {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["on", "off"])
def fast_path(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


def _options(fast_path: str, **changes: Any) -> ConnectionOptions:
    values: dict[str, Any] = {
        "tls_ca": str(TLS_DIR / "ca.pem"),
        "tls_cert": str(TLS_DIR / "client.pem"),
        "tls_key": str(TLS_DIR / "client.key"),
        "connect_retry_timeout": 5,
        "fast_path": fast_path,
    }
    values.update(changes)
    return ConnectionOptions(**values)


def _on_host(host: str, port: int | None = None) -> str:
    url = URL(AMQPS_URI).with_host(host)
    return str(url.with_port(port) if port is not None else url)


async def _error_of(uri: str, options: ConnectionOptions) -> BaseException:
    """The error that opening a connection to `uri` raises within 20 s."""
    try:
        with anyio.fail_after(20):
            async with open_connection(uri, options):
                pass
    except Exception as exc:
        return exc
    raise AssertionError("connected")


async def test_a_service_consumes_and_publishes_over_tls_with_a_client_certificate(
    fast_path: str,
) -> None:
    exchange = f"farine-test-tls-{uuid.uuid4().hex[:10]}"
    seen = Recorder()

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=exchange, auto_delete=True)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body["n"])

    config = Config.from_string(
        "[DEFAULT]\n"
        f"amqp_uri = {AMQPS_URI}\n"
        f"amqp_tls_ca = {TLS_DIR / 'ca.pem'}\n"
        f"amqp_tls_cert = {TLS_DIR / 'client.pem'}\n"
        f"amqp_tls_key = {TLS_DIR / 'client.key'}\n"
        f"amqp_fast_path = {fast_path}\n"
        "connect_retry_timeout = 5\n"
    )
    with anyio.fail_after(30):
        async with running(Worker, config=config):
            publish = AsyncPublisher(exchange, "rk", settings=config.service("worker"))
            for n in range(20):
                await publish({"n": n})
            assert sorted(await seen.wait_for(20)) == list(range(20))


async def test_the_uri_query_names_the_certificates_as_aiormq_does(fast_path: str) -> None:
    query = {
        "cafile": str(TLS_DIR / "ca.pem"),
        "certfile": str(TLS_DIR / "client.pem"),
        "keyfile": str(TLS_DIR / "client.key"),
    }
    uri = str(URL(AMQPS_URI).update_query(query))
    options = _options(fast_path, tls_ca=None, tls_cert=None, tls_key=None)
    with anyio.fail_after(20):
        async with open_connection(uri, options) as connection:
            assert isinstance(connection, AmqpConnection)
            assert connection.connected


@pytest.mark.parametrize(
    ("host", "ca", "reason"),
    [
        ("localhost", "other-ca.pem", "self-signed certificate in certificate chain"),
        ("127.0.0.1", "ca.pem", "certificate is not valid for '127.0.0.1'"),
    ],
    ids=["wrong-ca", "host-name-mismatch"],
)
async def test_a_certificate_not_accepted_fails_at_once(
    fast_path: str, host: str, ca: str, reason: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    retried = watch_log("retrying")
    error = await _error_of(_on_host(host), _options(fast_path, tls_ca=str(TLS_DIR / ca)))
    assert isinstance(error, TLSVerificationError)
    assert isinstance(error, ConfigurationError)
    assert reason in str(error)
    assert "guest:***@" in str(error)
    assert not retried.event.is_set()  # one attempt, no fallback to plain AMQP


async def _serve_expired(port: int, *, task_status: TaskStatus[None]) -> None:
    """A TLS listener on `port` that presents an expired certificate for localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS_DIR / "expired.pem", TLS_DIR / "expired.key")
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    listener = TLSListener(tcp, context, standard_compatible=False)

    async def handshake_only(stream: object) -> None:
        pass

    async with listener:
        task_status.started()
        await listener.serve(handshake_only)


async def test_an_expired_certificate_fails_at_once(fast_path: str) -> None:
    port = free_port()
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(_serve_expired, port)
        error = await _error_of(_on_host("localhost", port), _options(fast_path))
        tg.cancel_scope.cancel()
    assert isinstance(error, TLSVerificationError)
    assert "certificate has expired" in str(error)


async def test_verification_turned_off_connects_and_warns(
    fast_path: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    warned = watch_log("TLS verification is off")
    options = _options(fast_path, tls_ca=None, tls_verify=False)
    with anyio.fail_after(20):
        async with open_connection(_on_host("127.0.0.1"), options) as connection:
            assert isinstance(connection, AmqpConnection)
            assert connection.connected
    assert warned.event.is_set()
    assert "?" not in warned.records[0].getMessage()


async def test_without_the_client_certificate_the_broker_refuses(fast_path: str) -> None:
    options = _options(fast_path, tls_cert=None, tls_key=None, connect_retry_timeout=0.5)
    error = await _error_of(AMQPS_URI, options)
    assert isinstance(error, BrokerUnavailable)
    assert not isinstance(error, TLSVerificationError)


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"tls_ca": "/nonexistent/ca.pem"}, "amqp_tls_ca: cannot load /nonexistent/ca.pem"),
        ({"tls_key": "/nonexistent/client.key"}, "cannot load"),
        ({"tls_cert": None}, "amqp_tls_key is set without amqp_tls_cert"),
    ],
    ids=["ca", "key", "key-alone"],
)
async def test_unreadable_tls_files_are_a_configuration_error(
    fast_path: str, changes: dict[str, Any], text: str
) -> None:
    error = await _error_of(AMQPS_URI, _options(fast_path, **changes))
    assert isinstance(error, ConfigurationError)
    assert text in str(error)
