"""The byte-field helpers every codec shares (chatp2p_core.codec.fields)."""

from __future__ import annotations

import struct

import pytest

from chatp2p_core.codec.fields import check_bytes, encode_prefixed, read_prefixed


class FieldError(ValueError):
    pass


def test_check_bytes_accepts_bytes_like_and_returns_bytes():
    value = b"abc"
    assert check_bytes(value, "nonce", FieldError) is value  # no copy of bytes
    assert check_bytes(bytearray(b"abc"), "nonce", FieldError, 3) == b"abc"
    assert type(check_bytes(memoryview(b"abcd")[1:], "nonce", FieldError, 3)) is bytes


def test_check_bytes_raises_the_callers_error():
    with pytest.raises(FieldError, match="nonce must be bytes, not str"):
        check_bytes("abc", "nonce", FieldError)
    with pytest.raises(FieldError, match="nonce must be 4 bytes, got 3"):
        check_bytes(b"abc", "nonce", FieldError, 4)


def test_prefixed_round_trip():
    data = encode_prefixed(b"") + encode_prefixed(b"key") + b"tail"
    assert data == b"\x00\x00\x00\x03keytail"
    first, pos = read_prefixed(data, 0, FieldError, "truncated")
    second, pos = read_prefixed(data, pos, FieldError, "truncated")
    assert (first, second, data[pos:]) == (b"", b"key", b"tail")


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x04abc"])
def test_read_prefixed_refuses_truncation(data):
    with pytest.raises(FieldError, match="^bundle truncated$"):
        read_prefixed(data, 0, FieldError, "bundle truncated")


def test_encode_prefixed_refuses_more_than_a_u16():
    with pytest.raises(struct.error):
        encode_prefixed(bytes(65536))
