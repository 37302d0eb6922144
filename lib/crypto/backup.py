"""An identity backup: the private key file sealed under a passphrase (pure, no I/O).

Why this shape: a backup leaves the machine (a USB stick, a cloud folder), so it must be
useless without the passphrase and must say clearly when the passphrase is wrong. scrypt
(RFC 7914, pyca `cryptography`; N=2^17, r=8, p=1: 128 MiB and about half a second, OWASP's
recommendation) makes guessing costly; ChaCha20-Poly1305 seals the key and authenticates the
header, so a wrong passphrase or a damaged file fails as one clear error, never as another key.

Layout: MAGIC (8) | log2 N (1) | r (1) | p (1) | salt (16) | nonce (12) | ciphertext + tag (16).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import Invalid

MAGIC = b"CP2PBAK1"
HEADER = struct.Struct("!8sBBB16s12s")
LOG2_N, R, P = 17, 8, 1
MAX_LOG2_N = 20            # a hostile file cannot make us spend more than 1 GiB
MIN_PASSPHRASE = 8
MAX_BACKUP = 64 * 1024


class BackupError(Invalid):
    """Not a backup, a damaged one, or the wrong passphrase."""


def _key(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal(secret: bytes, passphrase: str, log2_n: int = LOG2_N) -> bytes:
    """`secret` (the identity.key bytes) sealed under `passphrase`."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"The passphrase must have at least {MIN_PASSPHRASE} characters")
    header = HEADER.pack(MAGIC, log2_n, R, P, os.urandom(16), os.urandom(12))
    _, _, r, p, salt, nonce = HEADER.unpack(header)
    return header + ChaCha20Poly1305(_key(passphrase, salt, log2_n, r, p)).encrypt(nonce, secret, header)


def open_sealed(blob: bytes, passphrase: str) -> bytes:
    """The secret inside a backup; BackupError for anything else."""
    if len(blob) > MAX_BACKUP or len(blob) < HEADER.size + 16 or not blob.startswith(MAGIC):
        raise BackupError("Not a ChatP2P identity backup")
    magic, log2_n, r, p, salt, nonce = HEADER.unpack_from(blob)
    if not (10 <= log2_n <= MAX_LOG2_N and 1 <= r <= 8 and 1 <= p <= 4):
        raise BackupError("Not a ChatP2P identity backup (unsupported scrypt parameters)")
    header = blob[:HEADER.size]
    try:
        return ChaCha20Poly1305(_key(passphrase, salt, log2_n, r, p)).decrypt(nonce, blob[HEADER.size:], header)
    except InvalidTag:
        raise BackupError("Wrong passphrase (or a damaged backup file)") from None
