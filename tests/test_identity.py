"""Identity: bundles, fingerprints, human IDs (typo detection), private keys, the key file."""

import base64
import hashlib
import logging
import os
import stat
import struct

import pytest
from hypothesis import assume, given, settings, strategies as st

from chatp2p_core.crypto import identity as ident, pqc

BACKEND = pqc.PycryptodomeBackend()
ALICE = ident.Identity.generate(BACKEND)
BOB = ident.Identity.generate(BACKEND)
FP = bytes(range(32))
ID = ident.format_id(FP)

fingerprints = st.binary(min_size=32, max_size=32)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- human-readable ID -------------------------------------------------------------------
def test_id_shape():
    assert len(ID) == 58 + 11
    groups = ID.split("-")
    assert [len(g) for g in groups] == [5] * 11 + [3]
    assert set(ID) <= set(ident.ID_ALPHABET + "-")
    assert ID.replace("-", "")[:52] == base64.b32encode(FP).decode().rstrip("=").lower()


@given(fingerprints)
def test_id_round_trip(fp):
    text = ident.format_id(fp)
    assert ident.parse_id(text) == fp
    assert ident.looks_like_id(text)


def test_id_accepts_any_case_separator_and_confusables():
    raw = ID.replace("-", "")
    assert ident.parse_id(raw) == FP
    assert ident.parse_id(raw.upper()) == FP
    assert ident.parse_id(" ".join(ID.split("-"))) == FP
    assert ident.parse_id("  " + ID.upper() + "\n") == FP
    fp = hashlib.sha256(b"find one with o, l and b").digest()
    for i in range(1000):
        text = ident.format_id(fp)
        if all(c in text for c in "olb"):
            break
        fp = hashlib.sha256(fp).digest()
    confused = text.replace("o", "0").replace("l", "1").replace("b", "8")
    assert confused != text
    assert ident.parse_id(confused) == fp


def test_every_single_substitution_and_adjacent_swap_is_detected():
    """Exhaustive for one ID: the BCH checksum guarantees it, this checks the implementation."""
    for fp in (FP, ALICE.fingerprint):
        raw = ident.format_id(fp).replace("-", "")
        for i, original in enumerate(raw):
            for c in ident.ID_ALPHABET:
                if c != original:
                    with pytest.raises(ident.IdentityError, match="checksum"):
                        ident.parse_id(raw[:i] + c + raw[i + 1 :])
        for i in range(len(raw) - 1):
            if raw[i] != raw[i + 1]:
                with pytest.raises(ident.IdentityError, match="checksum"):
                    ident.parse_id(raw[:i] + raw[i + 1] + raw[i] + raw[i + 2 :])


@settings(max_examples=200)
@given(fp=fingerprints, pos=st.integers(0, 57), new=st.sampled_from(ident.ID_ALPHABET))
def test_single_substitution_detected(fp, pos, new):
    raw = ident.format_id(fp).replace("-", "")
    assume(raw[pos] != new)
    with pytest.raises(ident.IdentityError):
        ident.parse_id(raw[:pos] + new + raw[pos + 1 :])


@settings(max_examples=200)
@given(fp=fingerprints, pos=st.integers(0, 56))
def test_adjacent_swap_detected(fp, pos):
    raw = ident.format_id(fp).replace("-", "")
    assume(raw[pos] != raw[pos + 1])
    with pytest.raises(ident.IdentityError):
        ident.parse_id(raw[:pos] + raw[pos + 1] + raw[pos] + raw[pos + 2 :])


@settings(max_examples=300)
@given(st.text())
def test_parse_garbage_raises_only_identity_error(text):
    try:
        fp = ident.parse_id(text)
    except ident.IdentityError as exc:
        assert str(exc).startswith("Invalid ID")
    else:
        assert len(fp) == 32
    assert isinstance(ident.looks_like_id(text), bool)


@settings(max_examples=200)
@given(st.text(alphabet=ident.ID_ALPHABET + "018-", min_size=50, max_size=75))
def test_parse_near_ids_raises_only_identity_error(text):
    try:
        ident.parse_id(text)
    except ident.IdentityError as exc:
        assert str(exc).startswith("Invalid ID")


def test_parse_id_messages():
    cases = {
        "": "empty",
        "abc": "expected 58 characters",
        ID + "a": "expected 58 characters",
        ID[:-1] + "!": "unexpected character",
        ID[:-1] + ("a" if ID[-1] != "a" else "b"): "checksum",
    }
    for text, words in cases.items():
        with pytest.raises(ident.IdentityError, match=words):
            ident.parse_id(text)
    for bad in (None, b"bytes", 42, "x" * 10000):
        with pytest.raises(ident.IdentityError):
            ident.parse_id(bad)


def test_non_canonical_padding_bits_rejected():
    raw = ID.replace("-", "")
    data = [ident.ID_ALPHABET.index(c) for c in raw[:52]]
    data[-1] |= 1  # one of the 4 unused bits
    chars = "".join(ident.ID_ALPHABET[v] for v in data + ident._checksum(data))
    with pytest.raises(ident.IdentityError, match="canonical"):
        ident.parse_id(chars)


def test_looks_like_id():
    assert ident.looks_like_id(ID)
    assert ident.looks_like_id(ID.upper().replace("-", " "))
    raw = ID.replace("-", "")
    typo = raw[:3] + ("a" if raw[3] != "a" else "b") + raw[4:]
    assert ident.looks_like_id(typo)  # shaped like one: the caller reports parse_id's error
    for text in ("alice", "", ALICE.bundle.to_base64(), ID + "-x", ID[:-1], None, 5):
        assert not ident.looks_like_id(text)


def test_short_id():
    assert ident.short_id(FP) == ID[:11]
    assert len(ident.short_id(FP).replace("-", "")) == 10
    assert ALICE.short_id == ALICE.id[:11]
    with pytest.raises(ident.IdentityError):
        ident.short_id(b"short")
    with pytest.raises(ident.IdentityError):
        ident.format_id(b"\0" * 31)


# -- bundle ----------------------------------------------------------------------------------
def test_bundle_encoding_layout():
    bundle = ALICE.bundle
    data = bundle.encode()
    assert data[:4] == b"CP2B" and data[4] == ident.BUNDLE_VERSION == 1
    assert struct.unpack(">H", data[5:7]) == (1216,)
    assert data[7 : 7 + 1216] == ALICE.kem_public
    assert struct.unpack(">H", data[1223:1225]) == (1984,)
    assert data[1225:] == ALICE.sig_public
    text = bundle.to_base64()
    assert 4000 < len(text) < 4400
    assert base64.b64decode(text, validate=True) == data


def test_bundle_round_trip_and_whitespace():
    text = ALICE.bundle.to_base64()
    assert ident.Bundle.from_base64(text) == ALICE.bundle
    wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    assert ident.Bundle.from_base64("  " + wrapped + "\r\n") == ALICE.bundle


def test_fingerprint():
    fp = ALICE.bundle.fingerprint()
    assert len(fp) == 32 and fp == ALICE.fingerprint
    body = struct.pack(">H", 1216) + ALICE.kem_public + struct.pack(">H", 1984) + ALICE.sig_public
    assert fp == hashlib.sha256(ident.FINGERPRINT_LABEL + body).digest()
    assert BOB.fingerprint != fp
    assert ident.Bundle(ALICE.kem_public, BOB.sig_public).fingerprint() not in (fp, BOB.fingerprint)
    assert ALICE.id == ident.format_id(fp)


def _b64(data):
    return base64.b64encode(data).decode()


def test_bundle_errors():
    good = ALICE.bundle.encode()
    bad_kem = ALICE.kem_public[:-32] + bytes(32)
    bad_ed = ALICE.sig_public[:-32] + b"\xff" * 32
    cases = {
        "": "empty",
        "!!!!": "base64",
        "QUJ": "base64",
        _b64(b"CP2"): "too short",
        _b64(b"XXXX" + good[4:]): "magic",
        _b64(good[:4] + b"\x02" + good[5:]): "version 2",
        _b64(good[:-1]): "truncated",
        _b64(good[:6]): "truncated",
        _b64(good + b"\0"): "trailing",
        _b64(good[:5] + struct.pack(">H", 1215) + good[7:1222] + good[1223:]): "1216 bytes",
        _b64(ident.Bundle(bad_kem, ALICE.sig_public).encode()): "KEM public key",
        _b64(ident.Bundle(ALICE.kem_public, bad_ed).encode()): "Ed25519",
        "A" * (ident.MAX_BUNDLE_TEXT + 4): "too long",
    }
    for text, words in cases.items():
        with pytest.raises(ident.IdentityError, match=words):
            ident.Bundle.from_base64(text)
    with pytest.raises(ident.IdentityError):
        ident.Bundle.from_base64(None)
    with pytest.raises(ident.IdentityError):
        ident.Bundle(ALICE.kem_public[:-1], ALICE.sig_public)
    with pytest.raises(ident.IdentityError):
        ident.Bundle(ALICE.kem_public, ALICE.sig_public, version=2)


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=3300).map(lambda b: _b64(b"CP2B\x01" + b))))
def test_bundle_garbage_raises_only_identity_error(text):
    with pytest.raises(ident.IdentityError):
        ident.Bundle.from_base64(text)


# -- identity and private keys ---------------------------------------------------------------
def test_identity_sign_and_repr():
    signature = ALICE.sign(BACKEND, b"hello")
    assert BACKEND.verify(ALICE.bundle.sig_public, b"hello", signature)
    assert not BACKEND.verify(BOB.bundle.sig_public, b"hello", signature)
    text = repr(ALICE)
    assert ALICE.id in text
    for secret in (ALICE.kem_seed, ALICE.sig_private):
        assert secret.hex()[:16] not in text and repr(secret)[2:20] not in text
    assert ALICE.id in repr(ALICE.bundle)


def test_identity_from_private_derives_public_keys():
    again = ident.Identity.from_private(BACKEND, ALICE.kem_seed, ALICE.sig_private, ALICE.created)
    assert again == ALICE and again.id == ALICE.id


def test_private_key_round_trip():
    blob = ident.encode_private(ALICE)
    assert blob[:4] == b"CP2K" and blob[4] == 1 and len(blob) == ident.PRIVATE_KEY_LEN
    restored = ident.private_key_from_base64(ident.private_key_to_base64(ALICE))
    assert restored == ALICE
    restored = ident.private_key_from_base64(ident.private_key_to_base64(ALICE), BACKEND)
    assert restored.kem_seed == ALICE.kem_seed


def test_private_key_errors():
    good = ident.encode_private(ALICE)
    cases = {
        "": "wrong size",
        "%%%": "base64",
        _b64(b"CP2B" + good[4:]): "magic",
        _b64(good[:4] + b"\x09" + good[5:]): "version 9",
        _b64(good[:-1]): "expected 113 bytes",
        _b64(good + b"\0"): "expected 113 bytes",
        _b64(good[:20] + bytes([good[20] ^ 1]) + good[21:]): "checksum",
    }
    for text, words in cases.items():
        with pytest.raises(ident.IdentityError, match=words):
            ident.private_key_from_base64(text)
    with pytest.raises(ident.IdentityError):
        ident.private_key_from_base64(None)


@settings(max_examples=100)
@given(st.text(max_size=300))
def test_private_key_garbage_raises_only_identity_error(text):
    with pytest.raises(ident.IdentityError):
        ident.private_key_from_base64(text)


def test_generate_keypair_export():
    out = ident.generate_keypair_export(BACKEND)
    assert set(out) == {"public_key", "private_key", "algorithm", "fingerprint"}
    assert out["algorithm"] == "X-Wing (ML-KEM-768+X25519) / ML-DSA-65+Ed25519"
    bundle = ident.Bundle.from_base64(out["public_key"])
    assert ident.format_id(bundle.fingerprint()) == out["fingerprint"]
    private = ident.private_key_from_base64(out["private_key"])
    assert private.bundle == bundle and private.id not in (ALICE.id, BOB.id)


# -- key file --------------------------------------------------------------------------------
def test_load_or_create_makes_private_dir_and_file(tmp_path):
    old_umask = os.umask(0)  # the modes must not depend on a permissive umask
    try:
        data_dir = tmp_path / "a" / "data"
        first = ident.load_or_create(data_dir, BACKEND)
    finally:
        os.umask(old_umask)
    key_file = data_dir / ident.KEY_FILE
    assert mode_of(data_dir) == 0o700
    assert mode_of(key_file) == 0o600
    assert key_file.read_bytes()[:4] == b"CP2K"
    assert sorted(p.name for p in data_dir.iterdir()) == ["identity.key"]  # no temp file left
    again = ident.load_or_create(data_dir, BACKEND)
    assert again == first and again.id == first.id and again.created == first.created


def test_existing_data_dir_is_left_alone(tmp_path):
    os.chmod(tmp_path, 0o750)
    ident.load_or_create(tmp_path, BACKEND)
    assert mode_of(tmp_path) == 0o750
    assert mode_of(tmp_path / ident.KEY_FILE) == 0o600


def test_loose_key_file_mode_is_repaired_with_a_warning(tmp_path, caplog):
    first = ident.load_or_create(tmp_path, BACKEND)
    key_file = tmp_path / ident.KEY_FILE
    os.chmod(key_file, 0o644)
    with caplog.at_level(logging.WARNING, logger=ident.__name__):
        again = ident.load_or_create(tmp_path, BACKEND)
    assert again == first
    assert mode_of(key_file) == 0o600
    assert "0644" in caplog.text


def test_damaged_key_file_is_refused_not_replaced(tmp_path):
    ident.load_or_create(tmp_path, BACKEND)
    key_file = tmp_path / ident.KEY_FILE
    damaged = bytearray(key_file.read_bytes())
    damaged[30] ^= 0x40
    key_file.write_bytes(bytes(damaged))
    for content in (bytes(damaged), b"", b"garbage"):
        key_file.write_bytes(content)
        with pytest.raises(ident.IdentityError, match="identity.key is unusable"):
            ident.load_or_create(tmp_path, BACKEND)
        assert key_file.read_bytes() == content


def test_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ident.IdentityError, match="not a directory"):
        ident.load_or_create(target, BACKEND)


def test_unwritable_data_dir_gives_identity_error(tmp_path, monkeypatch):
    def refuse(path, data, replace=True):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ident, "write_private_file", refuse)
    with pytest.raises(ident.IdentityError, match="Cannot write .*Permission denied"):
        ident.load_or_create(tmp_path, BACKEND)


def test_key_file_that_is_a_directory_gives_identity_error(tmp_path):
    (tmp_path / ident.KEY_FILE).mkdir(mode=0o700)
    with pytest.raises(ident.IdentityError, match="Cannot read"):
        ident.load_or_create(tmp_path, BACKEND)
