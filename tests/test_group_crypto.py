"""Group record signatures, sender keys and message encryption (PROTOCOL §13.4, §13.5)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from chatp2p_core.codec import grouprecord as gr
from chatp2p_core.codec.grouprecord import GroupWireError, Kind, Record, SigKind
from chatp2p_core.crypto import groupcrypto as gc
from chatp2p_core.crypto import identity as ident
from chatp2p_core.crypto import pqc

BACKEND = pqc.PycryptodomeBackend()
ALICE = ident.Identity.generate(BACKEND)
BOB = ident.Identity.generate(BACKEND)
GID = bytes(range(16))


def draft(kind: Kind = Kind.MESSAGE, sig_kind: SigKind = SigKind.ED25519, **changes) -> Record:
    fields = dict(kind=kind, group_id=GID, author=ALICE.fingerprint, seq=3, prev=b"\x07" * 32, depth=4,
                  created_ms=1_700_000_000_000, key_epoch=2 if kind in (Kind.MESSAGE, Kind.KEY) else 0,
                  sig_kind=sig_kind, parents=(b"\x01" * 32,), body=b"\x00" * 20 if kind == Kind.MESSAGE else b"")
    fields.update(changes)
    return Record(**fields)


def fields_of(record: Record, **changes) -> dict:
    names = ("kind", "group_id", "author", "seq", "prev", "depth", "created_ms", "key_epoch", "sig_kind",
             "parents", "body", "signature")
    return {**{n: getattr(record, n) for n in names}, **changes}


@pytest.mark.parametrize("kind, sig_kind, size", [
    (Kind.MESSAGE, SigKind.ED25519, 64), (Kind.MESSAGE, SigKind.HYBRID, 3373), (Kind.CHECKPOINT, SigKind.HYBRID, 3373)])
def test_signatures_verify_and_survive_the_wire(kind, sig_kind, size):
    record = gc.sign_record(draft(kind, sig_kind), ALICE.sig_private, BACKEND)
    assert len(record.signature) == size
    back = gr.decode_record(record.encode())
    assert gc.verify_record(back, ALICE.sig_public, BACKEND)
    assert not gc.verify_record(back, BOB.sig_public, BACKEND)


def test_ed25519_signature_is_the_identity_keys_ed25519_half():
    record = gc.sign_record(draft(), ALICE.sig_private, BACKEND)
    message = b"chatp2p group record v1\x00" + record.signed_part()
    hybrid = BACKEND.sign(ALICE.sig_private, message)
    assert record.signature == hybrid[pqc.MLDSA_SIG_LEN:]  # Ed25519 is deterministic


@pytest.mark.parametrize("sig_kind", [SigKind.ED25519, SigKind.HYBRID])
def test_any_change_breaks_the_signature(sig_kind):
    record = gc.sign_record(draft(sig_kind=sig_kind), ALICE.sig_private, BACKEND)
    for change in (dict(body=b"\x01" + record.body[1:]), dict(seq=4), dict(depth=5), dict(created_ms=1),
                   dict(parents=(b"\x02" * 32,)), dict(prev=b"\x08" * 32), dict(key_epoch=3),
                   dict(signature=bytes(len(record.signature)))):
        assert not gc.verify_record(Record(**fields_of(record, **change)), ALICE.sig_public, BACKEND)


def test_a_relay_cannot_strip_a_hybrid_signature_to_ed25519():
    record = gc.sign_record(draft(sig_kind=SigKind.HYBRID), ALICE.sig_private, BACKEND)
    stripped = Record(**fields_of(record, sig_kind=SigKind.ED25519, signature=record.signature[pqc.MLDSA_SIG_LEN:]))
    assert not gc.verify_record(stripped, ALICE.sig_public, BACKEND)


def test_verify_answers_false_for_junk_keys():
    record = gc.sign_record(draft(), ALICE.sig_private, BACKEND)
    for key in (b"", b"x" * 32, ALICE.sig_public[:-1], "text"):
        assert not gc.verify_record(record, key, BACKEND)  # type: ignore[arg-type]


def test_ill_formed_drafts_are_not_signed():
    with pytest.raises(GroupWireError):
        gc.sign_record(draft(Kind.ADD, SigKind.ED25519), ALICE.sig_private, BACKEND)
    with pytest.raises(GroupWireError):
        gc.sign_record(draft(parents=()), ALICE.sig_private, BACKEND)


def test_needs_hybrid():
    assert gc.needs_hybrid(0, True)
    assert not gc.needs_hybrid(0, False)
    assert not gc.needs_hybrid(15, False)
    assert gc.needs_hybrid(16, False)
    assert gc.needs_hybrid(40, False)


# ---------------------------------------------------------------- sender keys


def test_sender_key_opens_only_for_its_recipient_and_context():
    key = gc.new_sender_key()
    assert len(key) == 32 and gc.new_sender_key() != key
    envelope = gc.seal_sender_key(BOB.bundle, key, GID, ALICE.fingerprint, 5)
    assert envelope.recipient == BOB.fingerprint
    assert len(envelope.enc) == 1120 and len(envelope.sealed) == 48
    assert gc.open_sender_key(BOB.kem_seed, envelope, GID, ALICE.fingerprint, 5, BOB.fingerprint) == key
    body = gr.encode_key([envelope])
    assert gr.decode_key(body) == (envelope,)
    bad_calls = [
        (ALICE.kem_seed, envelope, GID, ALICE.fingerprint, 5, ALICE.fingerprint),  # not addressed to Alice
        (ALICE.kem_seed, envelope, GID, ALICE.fingerprint, 5, BOB.fingerprint),  # Alice claims Bob's envelope
        (BOB.kem_seed, envelope, bytes(16), ALICE.fingerprint, 5, BOB.fingerprint),  # another group
        (BOB.kem_seed, envelope, GID, BOB.fingerprint, 5, BOB.fingerprint),  # another author
        (BOB.kem_seed, envelope, GID, ALICE.fingerprint, 6, BOB.fingerprint),  # another epoch
        (BOB.kem_seed, gr.KeyEnvelope(envelope.recipient, envelope.enc, bytes(48)), GID, ALICE.fingerprint, 5,
         BOB.fingerprint),
        (BOB.kem_seed, envelope, GID, ALICE.fingerprint, 0, BOB.fingerprint),
    ]
    for args in bad_calls:
        with pytest.raises(gc.GroupCryptoError):
            gc.open_sender_key(*args)
    with pytest.raises(gc.GroupCryptoError, match="addressed to another member"):
        gc.open_sender_key(*bad_calls[0])  # refused before any decapsulation


def test_open_with_the_specified_hpke_info():
    """An independent check of §13.4's info string: pqc.hpke_open with it built by hand."""
    key = gc.new_sender_key()
    envelope = gc.seal_sender_key(BOB.bundle, key, GID, ALICE.fingerprint, 7)
    info = b"chatp2p group key v1" + GID + ALICE.fingerprint + struct.pack(">I", 7) + BOB.fingerprint
    assert pqc.hpke_open(BOB.kem_seed, envelope.enc, envelope.sealed, info) == key


# ---------------------------------------------------------------- messages


def _hkdf_sha256(salt: bytes, ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_message_round_trip_and_the_specified_key():
    key = gc.new_sender_key()
    plain = gr.encode_plain(gr.MessagePlain("m1", text="hello group"))
    unsigned = draft(body=b"")
    body = gc.encrypt_message(key, unsigned, plain)
    record = gc.sign_record(Record(**fields_of(unsigned, body=body)), ALICE.sig_private, BACKEND)
    back = gr.decode_record(record.encode())
    assert gr.decode_plain(gc.decrypt_message(key, back)) == gr.MessagePlain("m1", text="hello group")
    # §13.4 by hand: HKDF-SHA256 (RFC 5869) and ChaCha20-Poly1305 with a zero nonce, header as AAD
    expected_key = _hkdf_sha256(b"chatp2p group message v1", key, GID + ALICE.fingerprint + struct.pack(">Q", 3))
    assert ChaCha20Poly1305(expected_key).decrypt(bytes(12), back.body, back.encode()[: len(back.header())]) == plain


def test_message_is_bound_to_its_header_and_key():
    key = gc.new_sender_key()
    record = Record(**fields_of(draft(body=b""), body=gc.encrypt_message(key, draft(body=b""), b"secret")))
    assert gc.decrypt_message(key, record) == b"secret"
    for change in (dict(seq=4), dict(depth=9), dict(parents=(b"\x03" * 32,)), dict(key_epoch=3),
                   dict(author=BOB.fingerprint), dict(group_id=bytes(16)), dict(created_ms=5),
                   dict(body=bytes([record.body[0] ^ 1]) + record.body[1:])):
        with pytest.raises(gc.GroupCryptoError):
            gc.decrypt_message(key, Record(**fields_of(record, **change)))
    with pytest.raises(gc.GroupCryptoError):
        gc.decrypt_message(gc.new_sender_key(), record)
    with pytest.raises(gc.GroupCryptoError):
        gc.decrypt_message(b"short", record)
