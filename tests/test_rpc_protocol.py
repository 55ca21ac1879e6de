"""The RPC wire format: seed compatibility and argument decoding into annotations."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import msgspec
import pytest

from farine.exceptions import ConfigurationError, RemoteError, RPCError
from farine.rpc._protocol import (
    END,
    ArgumentBinder,
    BadArguments,
    decode_reply,
    encode_error,
    encode_item,
    encode_request,
    error_from_reply,
    routing_key,
)


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    points: list[Point]


class Opaque:
    """A plain class: msgspec cannot decode into it."""


class Service:
    # Deliberately unannotated: such parameters take the JSON value as sent.
    def plain(self, a, b=2):  # pyright: ignore[reportMissingParameterType, reportUnknownParameterType]
        return a  # pyright: ignore[reportUnknownVariableType]

    def typed(self, p: Point, box: Box, when: datetime.datetime, *tags: str, **extra: int) -> int:
        return 0

    def optional(self, value: int | None = None) -> None: ...

    def positional(self, p: Point, n: int, /, label: str) -> None: ...


def test_seed_request_format_and_routing_key() -> None:
    assert routing_key("billing", "charge") == "billing__charge"
    assert msgspec.json.decode(encode_request((1, "a"), {"k": [1]})) == {
        "args": [1, "a"],
        "kwargs": {"k": [1]},
    }


def test_unannotated_parameters_take_values_as_sent() -> None:
    binder = ArgumentBinder(Service().plain, "svc.plain")  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    assert binder.bind(b'{"args": [{"a": 1}], "kwargs": {"b": [1, 2]}}') == (
        ({"a": 1}, [1, 2]),
        {},
    )
    # The seed sent both keys; a request may also omit them.
    assert binder.bind(b'{"kwargs": {"a": 5}}') == ((5,), {})


def test_annotated_parameters_are_decoded_into_their_types() -> None:
    binder = ArgumentBinder(Service().typed, "svc.typed")
    args, kwargs = binder.bind(
        b'{"args": [{"x": 1, "y": 2}, {"label": "b", "points": [{"x": 0, "y": 0}]},'
        b' "2026-01-02T03:04:05Z", "t1", "t2"], "kwargs": {"n": 3}}'
    )
    assert args[0] == Point(1, 2)
    assert args[1] == Box("b", [Point(0, 0)])
    assert args[2] == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert args[3:] == ("t1", "t2")
    assert kwargs == {"n": 3}


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (
            b'{"args": [{"x": "one", "y": 2}, {"label":"b","points":[]}, "2026-01-01T00:00:00Z"]}',
            "argument 'p': Expected `int`, got `str` - at `$.x`",
        ),
        (b'{"args": []}', "missing a required argument: 'p'"),
        (b'{"kwargs": {"nope": 1}}', "missing a required argument: 'p'"),
        (
            b'{"args": [{"x":1,"y":2}, {"label":"b","points":[]}, "2026-01-01T00:00:00Z", 5]}',
            "argument 'tags': Expected `str`, got `int`",
        ),
        (
            b'{"args": [{"x":1,"y":2}, {"label":"b","points":[]}, "2026-01-01T00:00:00Z"],'
            b' "kwargs": {"n": "x"}}',
            "argument \"extra['n']\": Expected `int`, got `str`",
        ),
        (b"not json", "malformed request"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed request"),
    ],
)
def test_arguments_that_do_not_fit_name_the_parameter(request_body: bytes, message: str) -> None:
    binder = ArgumentBinder(Service().typed, "svc.typed")
    with pytest.raises(BadArguments) as info:
        binder.bind(request_body)
    assert str(info.value).startswith("svc.typed: ")
    assert message in str(info.value)


def test_all_positional_calls_bind_like_any_other() -> None:
    """Every argument by position takes a shortcut; it must decode and fail the same."""
    binder = ArgumentBinder(Service().positional, "svc.positional")
    by_position = binder.bind(b'{"args": [{"x": 1, "y": 2}, 3, "a"]}')
    assert by_position == ((Point(1, 2), 3, "a"), {})
    assert binder.bind(b'{"args": [{"x": 1, "y": 2}, 3], "kwargs": {"label": "a"}}') == (
        by_position
    )
    with pytest.raises(BadArguments, match="argument 'n': Expected `int`, got `str`"):
        binder.bind(b'{"args": [{"x": 1, "y": 2}, "three", "a"]}')
    with pytest.raises(BadArguments, match="too many positional arguments"):
        binder.bind(b'{"args": [{"x": 1, "y": 2}, 3, "a", 4]}')


def test_optional_parameter_accepts_null_and_default() -> None:
    binder = ArgumentBinder(Service().optional, "svc.optional")
    assert binder.bind(b'{"args": [null]}') == ((None,), {})
    assert binder.bind(b'{"args": []}') == ((), {})


def test_undecodable_annotation_is_a_configuration_error() -> None:
    class Svc:
        def m(self, handle: Opaque) -> None: ...

    with pytest.raises(ConfigurationError, match="parameter 'handle'"):
        ArgumentBinder(Svc().m, "svc.m")


def test_items_and_end_marker_are_the_seeds() -> None:
    assert msgspec.json.decode(encode_item({"a": uuid.UUID(int=1)})) == {
        "body": {"a": "00000000-0000-0000-0000-000000000001"},
        "__end__": False,
    }
    assert msgspec.json.decode(END) == {"__end__": True}
    folded = decode_reply(encode_item(Point(1, 2), end=True))
    assert folded.has_body
    assert folded.end
    assert folded.body == {"x": 1, "y": 2}


def test_error_reply_keeps_the_seed_traceback_and_adds_a_typed_envelope() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = msgspec.json.decode(encode_error(exc, send_traceback=True, data={"k": 1}))
    assert payload["__except__"].startswith("Traceback (most recent call last):")
    assert payload["error"] == {"type": "KeyError", "message": "'missing'", "data": {"k": 1}}
    error = error_from_reply(decode_reply(msgspec.json.encode(payload)), "svc.m")
    assert isinstance(error, RemoteError)
    assert error.remote_type == "KeyError"
    assert error.remote_message == "'missing'"
    assert error.remote_data == {"k": 1}
    assert error.remote_traceback is not None
    assert "KeyError" in error.remote_traceback
    assert str(error) == "svc.m failed: KeyError: 'missing'"


def test_error_reply_without_traceback_still_has_a_truthy_except() -> None:
    payload: dict[str, Any] = msgspec.json.decode(
        encode_error(ValueError("bad"), send_traceback=False)
    )
    assert payload["__except__"] == "ValueError: bad"
    error = error_from_reply(decode_reply(msgspec.json.encode(payload)), "svc.m")
    assert isinstance(error, RemoteError)
    assert error.remote_traceback is None
    assert error.remote_type == "ValueError"


def test_seed_error_reply_is_understood() -> None:
    seed = b'{"__except__": "Traceback (most recent call last):\\n  File x\\nValueError: nope\\n"}'
    error = error_from_reply(decode_reply(seed), "svc.m")
    assert isinstance(error, RemoteError)
    assert (error.remote_type, error.remote_message) == ("ValueError", "nope")
    assert error.remote_data is None
    assert error.remote_traceback is not None


def test_unencodable_error_data_is_dropped_not_fatal() -> None:
    payload = msgspec.json.decode(
        encode_error(ValueError("x"), send_traceback=False, data=object())
    )
    assert payload["error"] == {"type": "ValueError", "message": "x"}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("depth", [10, 1000, 100_000])  # around and far past any recursion limit
def test_arguments_nested_past_body_max_depth_are_bad_arguments_on_every_python(
    depth: int,
) -> None:
    binder = ArgumentBinder(Service().plain, "svc.plain", max_depth=10)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    request = b'{"args": [' + _nested(depth) + b"]}"
    if depth <= 10:
        args, _ = binder.bind(request)
        assert len(args) == 1
        return
    with pytest.raises(BadArguments, match=r"nested too deeply \(more than body_max_depth"):
        binder.bind(request)


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_replies_nested_past_body_max_depth_are_malformed_on_every_python(depth: int) -> None:
    reply = b'{"body": ' + _nested(depth) + b', "__end__": false}'
    if depth <= 10:
        assert decode_reply(reply, max_depth=10).has_body
        return
    with pytest.raises(RPCError, match=r"malformed RPC reply: .*nested too deeply"):
        decode_reply(reply, max_depth=10)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("cannot read /srv/app/conf/x.ini", "cannot read <path>"),
        ("C:\\Users\\bob\\x.txt missing", "<path> missing"),
        ("see ~/secret/key", "see <path>"),
        ("in app/models.py at line 3", "in <path> at line 3"),
        ("'/etc/passwd' denied", "'<path>' denied"),
        ("ratio 1/2 too big", "ratio 1/2 too big"),
        ("GET http://host/a/b failed", "GET http://host/a/b failed"),
        ("first line /a/b/c\nsecond line", "first line <path>"),
        ("x" * 600, "x" * 497 + "..."),
    ],
)
def test_error_reply_messages_are_one_line_without_paths(message: str, shown: str) -> None:
    payload = msgspec.json.decode(encode_error(ValueError(message), send_traceback=False))
    assert payload["error"]["message"] == shown
    assert payload["__except__"] == f"ValueError: {shown}"


def test_an_os_error_naming_a_file_sends_only_its_reason() -> None:
    error = FileNotFoundError(2, "No such file or directory", "/srv/app/secret.txt")
    payload = msgspec.json.decode(encode_error(error, send_traceback=False))
    assert payload["__except__"] == "FileNotFoundError: No such file or directory"
    shown = msgspec.json.decode(encode_error(error, send_traceback=True))
    assert "/srv/app/secret.txt" in shown["error"]["message"]
    assert "/srv/app/secret.txt" in shown["__except__"]
