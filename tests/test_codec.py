"""`farine.codec.BodyDecoder`: the content type picks the format; clear reasons otherwise."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from farine.codec import CONTENT_TYPES, BadBody, BodyDecoder, encode


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


def test_compressed_bodies_are_refused_by_name() -> None:
    with pytest.raises(BadBody, match="unsupported content encoding 'gzip'"):
        BodyDecoder(Any).decode(b"\x1f\x8b", "application/json", "gzip")
    assert BodyDecoder(Any).decode(b"[1]", "application/json", "UTF-8") == [1]
