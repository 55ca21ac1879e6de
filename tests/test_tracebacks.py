"""Handler failures show the user's frames, not farine's; public errors show public paths."""

from __future__ import annotations

import importlib
import signal

import pytest

from farine._tracebacks import FARINE_DIR, format_user_exception
from tests._proc import FarineProcess

PUBLIC_MODULES = (
    "farine",
    "farine.amqp",
    "farine.rpc",
    "farine.execute",
    "farine.stream",
    "farine.exceptions",
    "farine.codec",
    "farine.settings",
    "farine.testing",
    "farine.connectors.sql",
    "farine.asyncapi",
)


def _crashy_log(*options: str) -> str:
    proc = FarineProcess("start", "crashy", *options)
    try:
        proc.wait_for(r"crashy.fail raised \(run 2\)")
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.output
    finally:
        proc.kill()
    return proc.output


def test_a_failing_handlers_log_shows_its_frames_not_farines() -> None:
    out = _crashy_log()
    assert 'crashy/service.py", line' in out
    assert "RuntimeError: boom" in out
    assert FARINE_DIR not in out


def test_at_debug_level_the_log_keeps_farines_frames() -> None:
    out = _crashy_log("--log-level", "DEBUG")
    assert 'crashy/service.py", line' in out
    assert f"{FARINE_DIR}execute" in out


def _raise_through(fn_raising: type[BaseException]) -> BaseException:
    def user_code() -> None:
        raise fn_raising("boom")

    try:
        try:
            user_code()
        except BaseException as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def test_formatting_keeps_the_users_frames_and_the_cause() -> None:
    text = format_user_exception(_raise_through(ValueError), trim=True)
    assert "in user_code" in text
    assert "ValueError: boom" in text
    assert "The above exception was the direct cause" in text
    assert text.endswith("RuntimeError: wrapped\n")


def test_an_error_raised_by_farine_alone_is_its_last_line() -> None:
    from farine.settings import Config

    with pytest.raises(Exception) as caught:  # noqa: PT011  # any parse error will do
        Config.from_string("[DEFAULT]\nprefetch = many\n").service("x")
    text = format_user_exception(caught.value, trim=True)
    assert FARINE_DIR not in text
    assert "prefetch" in text.splitlines()[-1]
    assert FARINE_DIR in format_user_exception(caught.value, trim=False)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_exceptions_name_their_public_module(module: str) -> None:
    namespace = importlib.import_module(module)
    for name in getattr(namespace, "__all__", ()):
        value = getattr(namespace, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            if not value.__module__.startswith("farine"):
                continue  # re-exported from a library (peewee's errors)
            parts = value.__module__.split(".")
            assert not any(part.startswith("_") for part in parts), (name, value.__module__)
            assert getattr(importlib.import_module(value.__module__), value.__name__) is value
