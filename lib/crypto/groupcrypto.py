"""The cryptography of group records (PROTOCOL §13.4, §13.5), pure: record signatures (Ed25519
or hybrid), sender keys sealed to each member with HPKE/X-Wing, and message encryption.

Nothing here keeps state or knows the membership: the service decides who gets a key and
which signature a record needs (`needs_hybrid`); this module only does the math.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..codec import grouprecord as gr
from ..codec.fields import check_bytes
from ..codec.grouprecord import KeyEnvelope, Record, SigKind
from . import identity, pqc
from .session import hkdf

SENDER_KEY_LEN = 32
KEY_INFO_LABEL = b"chatp2p group key v1"
MESSAGE_SALT = b"chatp2p group message v1"
HYBRID_EVERY = 16  # an author's records after its last hybrid-signed one before the next must be
_NONCE = bytes(12)  # each message key seals one message
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class GroupCryptoError(pqc.CryptoError):
    """A sender key or message that cannot be opened: wrong key, wrong recipient, tampered."""


def _signed_message(record: Record) -> bytes:
    return gr.RECORD_LABEL + b"\x00" + record.signed_part()


def sign_record(draft: Record, sig_private: bytes, backend: pqc.Backend) -> Record:
    """`draft` signed by its author: Ed25519 alone (the Ed25519 half of the identity's key) or
    hybrid (`backend.sign`), as `draft.sig_kind` says, over label || 0x00 || signed part.
    GroupWireError if the draft is not well-formed: nothing ill-formed gets signed."""
    gr.check_record(draft)
    message = _signed_message(draft)
    if draft.sig_kind == SigKind.ED25519:
        return draft.with_signature(pqc.ed25519_sign(sig_private, message))
    return draft.with_signature(backend.sign(sig_private, message))


def verify_record(record: Record, sig_public: bytes, backend: pqc.Backend) -> bool:
    """Does `record`'s signature hold for `sig_public` (a bundle's 1984-byte signature key)?
    False, never an exception, for anything else."""
    message = _signed_message(record)
    if record.sig_kind == SigKind.ED25519:
        return pqc.ed25519_verify(sig_public, message, record.signature)
    return backend.verify(sig_public, message, record.signature)


def needs_hybrid(records_since_hybrid: int, first_after_key: bool) -> bool:
    """Must the author's next MESSAGE carry a hybrid signature (§13.5)? Yes when it is the first
    record after a KEY, or when `records_since_hybrid` (its records written after its last
    hybrid-signed one) has reached HYBRID_EVERY."""
    return first_after_key or records_since_hybrid >= HYBRID_EVERY


# ---------------------------------------------------------------- sender keys


def new_sender_key() -> bytes:
    return secrets.token_bytes(SENDER_KEY_LEN)


def _key_info(group_id: bytes, author: bytes, epoch: int, recipient: bytes) -> bytes:
    if not isinstance(epoch, int) or not 1 <= epoch <= 0xFFFFFFFF:
        raise GroupCryptoError(f"a key epoch is 1..2^32-1, not {epoch!r}")
    return (KEY_INFO_LABEL + check_bytes(group_id, "group_id", GroupCryptoError, gr.GROUP_ID_LEN)
            + check_bytes(author, "author", GroupCryptoError, gr.FP_LEN) + _U32.pack(epoch)
            + check_bytes(recipient, "recipient", GroupCryptoError, gr.FP_LEN))


def seal_sender_key(recipient_bundle: identity.Bundle, key: bytes, group_id: bytes, author: bytes,
                    epoch: int) -> KeyEnvelope:
    """`key` sealed to one member (HPKE base mode, X-Wing, ChaCha20-Poly1305), bound to the
    group, the author, the epoch and the recipient."""
    key = check_bytes(key, "sender key", GroupCryptoError, SENDER_KEY_LEN)
    recipient = recipient_bundle.fingerprint()
    enc, sealed = pqc.hpke_seal(recipient_bundle.kem_public, key, _key_info(group_id, author, epoch, recipient))
    return KeyEnvelope(recipient, enc, sealed)


def open_sender_key(kem_seed: bytes, envelope: KeyEnvelope, group_id: bytes, author: bytes, epoch: int,
                    own_fingerprint: bytes) -> bytes:
    """The sender key in an envelope addressed to us; GroupCryptoError if it is not ours or
    does not open (another group, author or epoch, tampered)."""
    if envelope.recipient != own_fingerprint:
        raise GroupCryptoError("this key envelope is addressed to another member")
    try:
        key = pqc.hpke_open(kem_seed, envelope.enc, envelope.sealed, _key_info(group_id, author, epoch, own_fingerprint))
    except pqc.CryptoError as exc:
        raise GroupCryptoError(f"the sender key does not open: {exc}") from None
    if len(key) != SENDER_KEY_LEN:
        raise GroupCryptoError("the sealed sender key has the wrong size")
    return key


# ---------------------------------------------------------------- messages


def message_key(sender_key: bytes, group_id: bytes, author: bytes, seq: int) -> bytes:
    """HKDF-SHA256(salt = label, IKM = sender key, info = group_id || author || seq): one key
    per message, so the zero nonce is never reused."""
    return hkdf(MESSAGE_SALT, check_bytes(sender_key, "sender key", GroupCryptoError, SENDER_KEY_LEN),
                group_id + author + _U64.pack(seq), 32)


def encrypt_message(sender_key: bytes, draft: Record, plaintext: bytes) -> bytes:
    """The MESSAGE body: `plaintext` sealed under the message key, the draft's header (which
    does not depend on the body) as associated data."""
    key = message_key(sender_key, draft.group_id, draft.author, draft.seq)
    return ChaCha20Poly1305(key).encrypt(_NONCE, check_bytes(plaintext, "plaintext", GroupCryptoError), draft.header())


def decrypt_message(sender_key: bytes, record: Record) -> bytes:
    """The plaintext of a MESSAGE record; GroupCryptoError if the key is wrong or anything
    in the header or body was changed."""
    key = message_key(sender_key, record.group_id, record.author, record.seq)
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, record.body, record.header())
    except InvalidTag:
        raise GroupCryptoError("the message does not open with this sender key (wrong key or tampered)") from None
