"""The envelope of the API's ``crypto encrypt`` / ``crypto decrypt``: one message sealed to a
public key with HPKE (RFC 9180, base mode, X-Wing KEM, HKDF-SHA256, ChaCha20-Poly1305 or
AES-256-GCM).

Layout (then standard base64)::

    b"CP2E" | version (1 byte) | AEAD id (u16, HPKE registry) | len(enc) (u16) | enc | ciphertext

The HPKE ``info`` is the header (magic, version, AEAD id) followed by SHA-256 of a label and
the recipient's X-Wing public key: a changed header or an envelope replayed under another key
fails to open. The recipient is not named in the envelope (only its holder can tell it is
theirs), and the opener needs nothing but the 32-byte KEM seed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Union

from ..errors import Invalid
from . import identity, pqc

ENVELOPE_MAGIC = b"CP2E"
ENVELOPE_VERSION = 1
RECIPIENT_LABEL = b"ChatP2P sealed recipient v1\x00"
TAG_LEN = 16
# Refuse absurd input before decoding it (the API itself caps encrypted_data at 1 MiB)
MAX_ENVELOPE_TEXT = 8 << 20

_HEADER = struct.Struct(">4sBHH")


class SealedError(Invalid):
    """An envelope or key that cannot be used; the message is meant for the API's user."""


def _decode_base64(text: str, what: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise SealedError(f"Invalid {what}: not text")
    if len(text) > limit:
        raise SealedError(f"Invalid {what}: too long ({len(text)} characters)")
    compact = "".join(text.split())
    if not compact:
        raise SealedError(f"Invalid {what}: empty")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise SealedError(f"Invalid {what}: not valid base64") from None


def recipient_public(bundle_or_public_b64: str) -> bytes:
    """The X-Wing public key in a public key bundle (base64), or a bare X-Wing key (base64)."""
    data = _decode_base64(bundle_or_public_b64, "public key", identity.MAX_BUNDLE_TEXT)
    if data[:4] == identity.BUNDLE_MAGIC:
        try:
            return identity.Bundle.decode(data).kem_public
        except identity.IdentityError as exc:
            raise SealedError(str(exc)) from None
    if len(data) == pqc.KEM_PUBLIC_LEN:
        try:
            pqc.check_kem_public(data)
        except pqc.CryptoError as exc:
            raise SealedError(str(exc)) from None
        return data
    raise SealedError(
        "Invalid public key: expected a public key bundle (from generate_keypair or a node's identity)"
    )


def _info(header: bytes, kem_public: bytes) -> bytes:
    return header + hashlib.sha256(RECIPIENT_LABEL + kem_public).digest()


def seal(bundle_or_public_b64: str, message: Union[bytes, str], aead: str = "chacha20poly1305") -> str:
    """Encrypt ``message`` (text is UTF-8 encoded) for the holder of the key; base64 envelope."""
    try:
        aead_id = pqc.AEAD_IDS[pqc.normalize_aead(aead)]
    except pqc.CryptoError as exc:
        raise SealedError(str(exc)) from None
    if isinstance(message, str):
        message = message.encode("utf-8")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise SealedError("The message must be text or bytes")
    kem_public = recipient_public(bundle_or_public_b64)
    header = ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION]) + struct.pack(">H", aead_id)
    try:
        enc, ciphertext = pqc.hpke_seal(kem_public, bytes(message), _info(header, kem_public), pqc.aead_name(aead_id))
    except pqc.CryptoError as exc:
        raise SealedError(str(exc)) from None
    envelope = header + struct.pack(">H", len(enc)) + enc + ciphertext
    return base64.b64encode(envelope).decode("ascii")


def open_sealed(encrypted_b64: str, kem_seed: bytes) -> bytes:
    """The message in an envelope made by ``seal()`` for the public key of ``kem_seed``."""
    if not isinstance(kem_seed, (bytes, bytearray)) or len(kem_seed) != pqc.KEM_SEED_LEN:
        got = f"{len(kem_seed)} bytes" if isinstance(kem_seed, (bytes, bytearray)) else type(kem_seed).__name__
        raise SealedError(f"Invalid private key: expected a {pqc.KEM_SEED_LEN}-byte KEM seed, got {got}")
    data = _decode_base64(encrypted_b64, "encrypted data", MAX_ENVELOPE_TEXT)
    if len(data) < 4 or data[:4] != ENVELOPE_MAGIC:
        raise SealedError("Invalid encrypted data: not a ChatP2P envelope (bad magic)")
    if len(data) < 5 or data[4] != ENVELOPE_VERSION:
        version = data[4] if len(data) > 4 else "missing"
        raise SealedError(f"Unsupported envelope version {version} (this program reads {ENVELOPE_VERSION})")
    if len(data) < _HEADER.size:
        raise SealedError("Invalid encrypted data: truncated")
    _, _, aead_id, enc_len = _HEADER.unpack_from(data)
    try:
        aead = pqc.aead_name(aead_id)
    except pqc.CryptoError:
        raise SealedError(f"Invalid encrypted data: unknown cipher id {aead_id:#06x}") from None
    if enc_len != pqc.KEM_CT_LEN:
        raise SealedError(f"Invalid encrypted data: encapsulated key of {enc_len} bytes, expected {pqc.KEM_CT_LEN}")
    body = data[_HEADER.size :]
    if len(body) < enc_len + TAG_LEN:
        raise SealedError("Invalid encrypted data: truncated")
    enc, ciphertext = body[:enc_len], body[enc_len:]
    header = data[: _HEADER.size - 2]
    seed = bytes(kem_seed)
    try:
        return pqc.hpke_open(seed, enc, ciphertext, _info(header, pqc.xwing_public(seed)), aead)
    except pqc.CryptoError:
        raise SealedError("Decryption failed: wrong key or tampered data") from None


def open_sealed_text(encrypted_b64: str, kem_seed: bytes) -> str:
    """``open_sealed()`` for a text message (what `crypto encrypt` seals): UTF-8 or SealedError."""
    try:
        return open_sealed(encrypted_b64, kem_seed).decode("utf-8")
    except UnicodeDecodeError:
        raise SealedError("Decrypted data is not UTF-8 text") from None
