"""`farine.codec.BodyDecoder`: the content type picks the format; clear reasons otherwise."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from farine.codec import (
    BODY_MAX_DEPTH_LIMIT,
    CONTENT_TYPES,
    DEFAULT_BODY_MAX_DEPTH,
    RAW_BYTES,
    BadBody,
    BodyDecoder,
    check_depth,
    encode,
    encode_body,
)


class Order(msgspec.Struct):
    id: int
    item: str


@pytest.mark.parametrize("serializer", sorted(CONTENT_TYPES))
def test_what_a_serializer_encodes_decodes_under_its_content_type(serializer: str) -> None:
    content_type, content_encoding = CONTENT_TYPES[serializer]
    data = encode(Order(1, "bread"), serializer)
    decoded = BodyDecoder(Order).decode(data, content_type, content_encoding)
    assert decoded == Order(1, "bread")


@pytest.mark.parametrize(
    ("content_type", "data", "reason"),
    [
        ("application/x-msgpack", b"\xc1", "invalid msgpack"),
        ("application/msgpack", msgspec.msgpack.encode({"id": "one"}), "does not match Order"),
        ("application/problem+json", b"{", "invalid JSON"),
        ("text/plain", b"words", "invalid JSON"),
        ("application/octet-stream", b"{}", "unsupported content type 'application/octet"),
        ("application/data", b"{}", "unsupported content type 'application/data' for a Order"),
        ("image/png", b"\x89PNG", "unsupported content type 'image/png'"),
    ],
)
def test_bodies_that_do_not_decode_say_why(content_type: str, data: bytes, reason: str) -> None:
    with pytest.raises(BadBody, match=reason):
        BodyDecoder(Order).decode(data, content_type)


def test_text_is_decoded_with_its_charset() -> None:
    text = BodyDecoder(str)
    assert text.decode("été".encode("latin-1"), 'text/plain; charset="latin-1"') == "été"
    assert text.decode("été".encode(), "text/csv") == "été"
    with pytest.raises(BadBody, match="undecodable text/plain text"):
        text.decode(b"\xff", "text/plain")
    with pytest.raises(BadBody, match="undecodable text/plain text"):
        text.decode(b"x", "text/plain; charset=no-such-charset")


def test_json_labelled_as_text_still_decodes_into_other_types() -> None:
    assert BodyDecoder(Order).decode(b'{"id": 1, "item": "x"}', "text/plain") == Order(1, "x")


def test_unannotated_bodies_take_text_and_bytes_as_kombu_gave_them() -> None:
    anything = BodyDecoder(Any)
    assert anything.decode(b"\x00\x01", "application/octet-stream") == b"\x00\x01"
    assert anything.decode(b"hi", "text/plain") == "hi"
    assert anything.decode(b'{"a": 1}') == {"a": 1}
    assert anything.decode(b'{"a": 1}', "") == {"a": 1}


@pytest.mark.parametrize("serializer", sorted(CONTENT_TYPES))
def test_bytes_bodies_are_published_as_they_are_and_read_back_into_bytes(serializer: str) -> None:
    for body in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        data, content_type, content_encoding = encode_body(body, serializer)
        assert (data, type(data)) == (b"\x00\xff", bytes)
        assert (content_type, content_encoding) == RAW_BYTES == ("application/data", "binary")
        for annotation in (bytes, Any):
            assert BodyDecoder(annotation).decode(data, content_type, content_encoding) == data
    data, content_type, _ = encode_body({"a": b"\x00"}, serializer)
    assert content_type == CONTENT_TYPES[serializer][0]
    assert BodyDecoder(dict[str, bytes]).decode(data, content_type) == {"a": b"\x00"}


def test_a_bytes_body_is_not_copied_either_way() -> None:
    body = b"x" * 1024
    data, content_type, _ = encode_body(body)
    assert data is body
    assert BodyDecoder(bytes).decode(data, content_type) is body


def test_a_json_base64_string_still_decodes_into_bytes() -> None:
    # What farine published for a bytes body before it sent them as they are.
    old = encode(b"\x00old")
    assert old == b'"AG9sZA=="'
    assert BodyDecoder(bytes).decode(old, "application/json", "utf-8") == b"\x00old"


def test_compressed_bodies_are_refused_by_name() -> None:
    with pytest.raises(BadBody, match="unsupported content encoding 'gzip'"):
        BodyDecoder(Any).decode(b"\x1f\x8b", "application/json", "gzip")
    assert BodyDecoder(Any).decode(b"[1]", "application/json", "UTF-8") == [1]


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("serializer", sorted(CONTENT_TYPES))
def test_nesting_up_to_body_max_depth_decodes_and_deeper_is_rejected(serializer: str) -> None:
    content_type, _ = CONTENT_TYPES[serializer]
    decoder = BodyDecoder(Any, max_depth=3)
    assert decoder.decode(encode({"a": [[1]]}, serializer), content_type) == {"a": [[1]]}
    with pytest.raises(BadBody, match=r"nested too deeply \(more than body_max_depth = 3 "):
        decoder.decode(encode({"a": [[[1]]]}, serializer), content_type)


@pytest.mark.parametrize("depth", [200, 1200, 100_000])
def test_the_default_depth_limit_is_the_same_on_every_python(depth: int) -> None:
    # Python 3.11 stops near 1,000 levels, 3.12 and 3.13 far deeper: the limit decides.
    data = _nested(depth)
    if depth <= DEFAULT_BODY_MAX_DEPTH:
        assert BodyDecoder(Any).decode(data) is not None
        return
    with pytest.raises(BadBody, match="JSON nested too deeply"):
        BodyDecoder(Any).decode(data)
    with pytest.raises(BadBody, match="msgpack nested too deeply"):
        BodyDecoder(Any).decode(b"\x91" * depth + b"\x01", "application/msgpack")


def test_brackets_in_strings_are_not_nesting() -> None:
    decoder = BodyDecoder(Any, max_depth=2)
    text = '"[[[[{{{{ \\" ]]]]"'
    assert decoder.decode(f'{{"a": [{text}]}}'.encode()) == {"a": ['[[[[{{{{ " ]]]]']}
    # Closers inside a string do not hide the depth outside it.
    with pytest.raises(BadBody, match="nested too deeply"):
        decoder.decode(f"[{text}, [[1]]]".encode())


def test_check_depth_leaves_malformed_bodies_to_the_decoder() -> None:
    check_depth(b'[[}, "', 2)  # not JSON, but not too deep: decoding says what is wrong
    check_depth(b"\x91" * 3 + b"\xc1", 3, "msgpack")
    with pytest.raises(BadBody, match="invalid JSON"):
        BodyDecoder(Any, max_depth=2).decode(b'[[}, "')
    with pytest.raises(BadBody, match="invalid msgpack"):
        BodyDecoder(Any, max_depth=2).decode(b"\x91" * 3 + b"\xc1", "application/msgpack")


def test_the_largest_body_max_depth_decodes_on_this_python() -> None:
    # Deep inside a test's call stack, as a handler is deep inside the runtime's.
    def nest(levels: int) -> Any:
        if levels:
            return nest(levels - 1)
        decoder = BodyDecoder(Any, max_depth=BODY_MAX_DEPTH_LIMIT)
        return decoder.decode(_nested(BODY_MAX_DEPTH_LIMIT))

    assert nest(150) is not None
