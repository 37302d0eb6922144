"""The crypto encrypt/decrypt envelope: round trips, layout, binding, clear errors."""

import base64
import struct

import pytest
from hypothesis import given, settings, strategies as st

from chatp2p_core.crypto import identity as ident, pqc, sealed

BACKEND = pqc.PycryptodomeBackend()
ALICE = ident.Identity.generate(BACKEND)
BOB = ident.Identity.generate(BACKEND)
ALICE_B64 = ALICE.bundle.to_base64()
ENVELOPE = sealed.seal(ALICE_B64, b"attack at dawn")
HEADER_LEN = 4 + 1 + 2 + 2


def b64(data):
    return base64.b64encode(data).decode()


def raw(envelope):
    return base64.b64decode(envelope)


@pytest.mark.parametrize("aead", ["chacha20poly1305", "aes256gcm"])
@pytest.mark.parametrize("message", [b"", b"hello", "héllo wörld ✓", b"\0" * 5000])
def test_round_trip(aead, message):
    envelope = sealed.seal(ALICE_B64, message, aead=aead)
    expected = message.encode("utf-8") if isinstance(message, str) else message
    assert sealed.open_sealed(envelope, ALICE.kem_seed) == expected


def test_envelope_layout():
    for aead, aead_id in (("chacha20poly1305", 3), ("aes256gcm", 2)):
        data = raw(sealed.seal(ALICE_B64, b"12345", aead=aead))
        assert data[:4] == b"CP2E" and data[4] == sealed.ENVELOPE_VERSION == 1
        assert struct.unpack(">HH", data[5:9]) == (aead_id, 1120)
        assert len(data) == HEADER_LEN + 1120 + 5 + 16


def test_each_envelope_is_fresh():
    assert sealed.seal(ALICE_B64, b"same") != sealed.seal(ALICE_B64, b"same")


def test_bare_xwing_public_key_is_accepted():
    envelope = sealed.seal(b64(ALICE.kem_public), b"hi")
    assert sealed.open_sealed(envelope, ALICE.kem_seed) == b"hi"


def test_wrapped_bundle_text_is_accepted():
    wrapped = "\n".join(ALICE_B64[i : i + 76] for i in range(0, len(ALICE_B64), 76))
    assert sealed.open_sealed(sealed.seal(wrapped, b"hi"), ALICE.kem_seed) == b"hi"


def test_wrong_key():
    with pytest.raises(sealed.SealedError, match="^Decryption failed: wrong key or tampered data$"):
        sealed.open_sealed(ENVELOPE, BOB.kem_seed)


def test_header_is_bound():
    """Relabelling the cipher (or the version) breaks the envelope, even with a valid layout."""
    data = bytearray(raw(sealed.seal(ALICE_B64, b"m", aead="chacha20poly1305")))
    data[5:7] = struct.pack(">H", 2)
    with pytest.raises(sealed.SealedError, match="Decryption failed"):
        sealed.open_sealed(b64(bytes(data)), ALICE.kem_seed)


def test_recipient_is_bound():
    """An envelope re-made with the same HPKE output but another recipient's info fails."""
    data = raw(ENVELOPE)
    header = data[:7]
    enc, ct = data[HEADER_LEN : HEADER_LEN + 1120], data[HEADER_LEN + 1120 :]
    assert pqc.hpke_open(ALICE.kem_seed, enc, ct, sealed._info(header, ALICE.kem_public), "chacha20poly1305")
    with pytest.raises(pqc.CryptoError):
        pqc.hpke_open(ALICE.kem_seed, enc, ct, sealed._info(header, BOB.kem_public), "chacha20poly1305")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_is_detected(data):
    blob = bytearray(raw(ENVELOPE))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(sealed.SealedError):
        sealed.open_sealed(b64(bytes(blob)), ALICE.kem_seed)


def test_open_errors():
    data = raw(ENVELOPE)
    cases = {
        "": "empty",
        "not base64 !": "not valid base64",
        b64(b"XXXX" + data[4:]): "bad magic",
        b64(b"CP"): "bad magic",
        b64(data[:4]): "version missing",
        b64(data[:4] + b"\x07" + data[5:]): "version 7",
        b64(data[:7]): "truncated",
        b64(data[:5] + struct.pack(">H", 9) + data[7:]): "unknown cipher",
        b64(data[:7] + struct.pack(">H", 1000) + data[9:]): "encapsulated key of 1000 bytes",
        b64(data[: HEADER_LEN + 1120 + 15]): "truncated",
        b64(data[:-1]): "Decryption failed",
        "A" * (sealed.MAX_ENVELOPE_TEXT + 4): "too long",
    }
    for text, words in cases.items():
        with pytest.raises(sealed.SealedError, match=words):
            sealed.open_sealed(text, ALICE.kem_seed)
    with pytest.raises(sealed.SealedError, match="not text"):
        sealed.open_sealed(None, ALICE.kem_seed)


def test_wrong_size_private_key():
    for seed in (ALICE.kem_seed[:-1], ALICE.kem_seed + b"\0", b"", ALICE.sig_private, None, "x" * 32):
        with pytest.raises(sealed.SealedError, match="32-byte KEM seed"):
            sealed.open_sealed(ENVELOPE, seed)


def test_seal_errors():
    bad_kem = ALICE.kem_public[:-32] + bytes(32)
    cases = {
        "": "empty",
        "%%%": "not valid base64",
        b64(b"hello"): "expected a public key bundle",
        b64(ALICE.bundle.encode()[:-1]): "truncated",
        b64(bad_kem): "X25519",
        b64(ident.Bundle(bad_kem, ALICE.sig_public).encode()): "KEM public key",
    }
    for text, words in cases.items():
        with pytest.raises(sealed.SealedError, match=words):
            sealed.seal(text, b"m")
    with pytest.raises(sealed.SealedError, match="Unknown AEAD"):
        sealed.seal(ALICE_B64, b"m", aead="rc4")
    with pytest.raises(sealed.SealedError, match="text or bytes"):
        sealed.seal(ALICE_B64, 42)
    with pytest.raises(sealed.SealedError):
        sealed.seal(None, b"m")


def test_private_key_from_generate_keypair_opens():
    out = ident.generate_keypair_export(BACKEND)
    envelope = sealed.seal(out["public_key"], "for the exported key")
    seed = ident.private_key_from_base64(out["private_key"]).kem_seed
    assert sealed.open_sealed(envelope, seed) == "for the exported key".encode()


@settings(max_examples=150)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=1300).map(lambda b: b64(b"CP2E\x01" + b))))
def test_garbage_raises_only_sealed_error(text):
    with pytest.raises(sealed.SealedError):
        sealed.open_sealed(text, ALICE.kem_seed)


@settings(max_examples=100)
@given(st.text(max_size=300))
def test_garbage_public_key_raises_only_sealed_error(text):
    with pytest.raises(sealed.SealedError):
        sealed.seal(text, b"m")
