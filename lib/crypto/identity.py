"""A node's identity: its keys, the public bundle others store, and the human-readable ID.

- **Bundle**: the two public keys (X-Wing KEM, ML-DSA-65+Ed25519 signature) in a versioned
  binary form, shared as standard base64 (~4.3 KB of text).
- **Fingerprint**: SHA-256 over a domain label and the two length-prefixed public keys. The
  bundle's magic and version byte are left out on purpose, so a later bundle format carrying
  the same keys keeps the same ID.
- **ID**: the 32-byte fingerprint in RFC 4648 base32 (lowercase, no padding, 52 characters)
  followed by a 6-character BCH checksum (the code of bech32m, BIP-350) computed over the
  5-bit symbols. The code detects every error touching at most 4 characters, so any single
  wrong character and any swap of two characters is caught, not merely made unlikely.
  58 characters, shown in groups of 5 joined by '-'.
- **Private key**: 113 bytes, magic b"CP2K" (with a 4-byte check), stored as ``identity.key`` (mode 0600) and
  exported by ``crypto generate_keypair``.
- **Rollover statement**: magic b"CP2R", signed by an identity's OLD signature key, naming the
  bundle that replaces it, so contacts can follow a key change the old key approved (and
  nothing else). After ``rotate()`` the previous private key stays in ``identity.previous.key``
  and the statement in ``rollover.stmt`` (both 0600); see docs/PROTOCOL.md §4.6.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import pathlib
import stat
import struct
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

from ..errors import Invalid
from . import pqc
from ..codec.fields import encode_prefixed, read_prefixed
from ..util import write_private_file

log = logging.getLogger(__name__)

BUNDLE_MAGIC = b"CP2B"
BUNDLE_VERSION = 1
PRIVATE_MAGIC = b"CP2K"
PRIVATE_VERSION = 1
KEY_FILE = "identity.key"
PREVIOUS_KEY_FILE = "identity.previous.key"
ROLLOVER_FILE = "rollover.stmt"
ROLLOVER_MAGIC = b"CP2R"
ROLLOVER_VERSION = 1
ROLLOVER_LABEL = b"ChatP2P identity rollover v1\x00"
FINGERPRINT_LABEL = b"ChatP2P identity fingerprint v1\x00"
FINGERPRINT_LEN = 32

# base64 text of a bundle is ~4.3 KB; refuse absurd input before decoding it
MAX_BUNDLE_TEXT = 16384

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercase
ID_DATA_CHARS = 52  # ceil(256 / 5)
ID_CHECK_CHARS = 6
ID_CHARS = ID_DATA_CHARS + ID_CHECK_CHARS  # 58
ID_GROUP = 5
SHORT_ID_CHARS = 10
# Characters people type for letters that look alike: base32 has no 0, 1 or 8
ID_CONFUSABLES = {"0": "o", "1": "l", "8": "b"}
ID_SEPARATORS = "- \t\r\n"
# Mixed into the checksum so an ID cannot pass for another kind of base32 string
ID_CHECK_PREFIX = "chatp2p-id"

_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32M_CONST = 0x2BC830A3

_PRIVATE_LAYOUT = struct.Struct(f">4sBd{pqc.KEM_SEED_LEN}s{pqc.SIG_SEED_LEN}s")
_PRIVATE_CHECK_LEN = 4
PRIVATE_KEY_LEN = _PRIVATE_LAYOUT.size + _PRIVATE_CHECK_LEN  # 4+1+8+32+64+4 = 113


class IdentityError(Invalid):
    """A bundle, ID, private key or key file that cannot be used; the message says why."""


# ---------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Bundle:
    """The public half of an identity: what a contact stores and verifies against the ID."""

    kem_public: bytes
    sig_public: bytes
    version: int = BUNDLE_VERSION

    def __post_init__(self) -> None:
        if self.version != BUNDLE_VERSION:
            raise IdentityError(f"Unsupported bundle version {self.version} (this program reads {BUNDLE_VERSION})")
        for name, value, size in (
            ("KEM public key", self.kem_public, pqc.KEM_PUBLIC_LEN),
            ("signature public key", self.sig_public, pqc.SIG_PUBLIC_LEN),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
                raise IdentityError(f"Invalid public key bundle: the {name} must be {size} bytes, got {got}")

    def __repr__(self) -> str:
        return f"Bundle(id={format_id(self.fingerprint())!r}, version={self.version})"

    def _key_material(self) -> bytes:
        return encode_prefixed(self.kem_public) + encode_prefixed(self.sig_public)

    def encode(self) -> bytes:
        """magic, version byte, KEM public key and signature public key (u16 length each)."""
        return BUNDLE_MAGIC + bytes([self.version]) + self._key_material()

    def to_base64(self) -> str:
        return base64.b64encode(self.encode()).decode("ascii")

    def fingerprint(self) -> bytes:
        """SHA-256(label || length-prefixed keys): 32 bytes, the identity's name for machines."""
        return hashlib.sha256(FINGERPRINT_LABEL + self._key_material()).digest()

    def check_keys(self) -> None:
        """Raise IdentityError unless both public keys are usable (valid points, modulus check)."""
        try:
            pqc.check_kem_public(self.kem_public)
            pqc.check_sig_public(self.sig_public)
        except pqc.CryptoError as exc:
            raise IdentityError(f"Invalid public key bundle: {exc}") from None

    @staticmethod
    def decode(data: bytes) -> "Bundle":
        """Parse and check ``encode()``'s output."""
        if not isinstance(data, (bytes, bytearray)):
            raise IdentityError("Invalid public key bundle: not bytes")
        data = bytes(data)
        if len(data) < len(BUNDLE_MAGIC) + 1:
            raise IdentityError("Invalid public key bundle: too short")
        if data[:4] != BUNDLE_MAGIC:
            raise IdentityError("Invalid public key bundle: not a ChatP2P public key (bad magic)")
        version = data[4]
        if version != BUNDLE_VERSION:
            raise IdentityError(f"Unsupported bundle version {version} (this program reads {BUNDLE_VERSION})")
        truncated = "Invalid public key bundle: truncated"
        kem_public, pos = read_prefixed(data, 5, IdentityError, truncated)
        sig_public, pos = read_prefixed(data, pos, IdentityError, truncated)
        if pos != len(data):
            raise IdentityError(f"Invalid public key bundle: {len(data) - pos} unexpected trailing bytes")
        bundle = Bundle(kem_public=kem_public, sig_public=sig_public, version=version)
        bundle.check_keys()
        return bundle

    @staticmethod
    def from_base64(text: str) -> "Bundle":
        """Parse a bundle pasted by a user; whitespace and line breaks inside are ignored."""
        if not isinstance(text, str):
            raise IdentityError("Invalid public key bundle: not text")
        if len(text) > MAX_BUNDLE_TEXT:
            raise IdentityError(f"Invalid public key bundle: too long ({len(text)} characters)")
        compact = "".join(text.split())
        if not compact:
            raise IdentityError("Invalid public key bundle: empty")
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise IdentityError("Invalid public key bundle: not valid base64") from None
        return Bundle.decode(data)


# ---------------------------------------------------------------- human-readable ID


def _polymod(values: list[int]) -> int:
    """The BCH checksum state of BIP-173 over 5-bit values."""
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _prefix_values() -> list[int]:
    prefix = ID_CHECK_PREFIX.encode("ascii")
    return [c >> 5 for c in prefix] + [0] + [c & 31 for c in prefix]


def _checksum(data: list[int]) -> list[int]:
    state = _polymod(_prefix_values() + data + [0] * ID_CHECK_CHARS) ^ _BECH32M_CONST
    return [(state >> 5 * (ID_CHECK_CHARS - 1 - i)) & 31 for i in range(ID_CHECK_CHARS)]


def _checksum_ok(values: list[int]) -> bool:
    return _polymod(_prefix_values() + values) == _BECH32M_CONST


def _fp_chars(fp: bytes) -> str:
    return base64.b32encode(fp).decode("ascii").rstrip("=").lower()


def _group(text: str, size: int = ID_GROUP) -> str:
    return "-".join(text[i : i + size] for i in range(0, len(text), size))


def _check_fingerprint(fp: Any) -> bytes:
    if not isinstance(fp, (bytes, bytearray)) or len(fp) != FINGERPRINT_LEN:
        raise IdentityError(f"A fingerprint is {FINGERPRINT_LEN} bytes")
    return bytes(fp)


def format_id(fp: bytes) -> str:
    """The ID people read and compare: 58 characters in groups of 5, e.g. 'abcde-fghij-...-xyz'."""
    chars = _fp_chars(_check_fingerprint(fp))
    check = _checksum([ID_ALPHABET.index(c) for c in chars])
    return _group(chars + "".join(ID_ALPHABET[v] for v in check))


def short_id(fp: bytes) -> str:
    """The first 10 characters of the ID (50 bits), for headers and lists: 'abcde-fghij'."""
    return _group(_fp_chars(_check_fingerprint(fp))[:SHORT_ID_CHARS])


def safety_number(own: bytes, other: bytes) -> str:
    """60 digits both users compare to check their keys; depends only on the two
    fingerprints, in either order, so both sides see the same number."""
    low, high = sorted((own, other))
    digest = hashlib.sha512(b"chatp2p v1 safety number" + low + high).digest()
    return " ".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100000:05d}" for i in range(0, 60, 5))


def _normalize_id(text: str) -> str:
    """Lowercase, without separators, with look-alike digits mapped to their letters."""
    out = []
    for ch in text.lower():
        if ch in ID_SEPARATORS:
            continue
        out.append(ID_CONFUSABLES.get(ch, ch))
    return "".join(out)


def looks_like_id(text: str) -> bool:
    """True when ``text`` has the shape of an ID (length and characters), checksum not checked:
    the caller should then parse_id() it and report that error rather than try another format."""
    if not isinstance(text, str) or len(text) > 4 * ID_CHARS:
        return False
    chars = _normalize_id(text)
    return len(chars) == ID_CHARS and all(c in ID_ALPHABET for c in chars)


def parse_id(text: str) -> bytes:
    """The fingerprint in an ID typed by a person; any case, with or without '-' or spaces."""
    if not isinstance(text, str):
        raise IdentityError("Invalid ID: not text")
    if len(text) > 4 * ID_CHARS:
        raise IdentityError(f"Invalid ID: too long ({len(text)} characters)")
    chars = _normalize_id(text)
    if not chars:
        raise IdentityError("Invalid ID: empty")
    for ch in chars:
        if ch not in ID_ALPHABET:
            raise IdentityError(f"Invalid ID: unexpected character {ch!r}")
    if len(chars) != ID_CHARS:
        raise IdentityError(f"Invalid ID: expected {ID_CHARS} characters (not counting '-'), got {len(chars)}")
    if not _checksum_ok([ID_ALPHABET.index(c) for c in chars]):
        raise IdentityError("Invalid ID: checksum mismatch (a typo?)")
    data = chars[:ID_DATA_CHARS]
    fp = base64.b32decode(data.upper() + "=" * 4)
    if _fp_chars(fp) != data:  # the 4 unused bits of the last character must be 0
        raise IdentityError("Invalid ID: not a canonical encoding")
    return fp


# ---------------------------------------------------------------- private key and identity


@dataclass(frozen=True)
class Identity:
    """A node's key pairs. repr() shows the ID only, never a secret."""

    kem_seed: bytes = field(repr=False)
    kem_public: bytes
    sig_private: bytes = field(repr=False)
    sig_public: bytes
    created: float

    def __repr__(self) -> str:
        return f"Identity(id={self.id!r}, created={self.created!r})"

    @classmethod
    def generate(cls, backend: pqc.Backend) -> "Identity":
        kem_seed, kem_public = backend.kem_generate()
        sig_private, sig_public = backend.sig_generate()
        return cls(kem_seed, kem_public, sig_private, sig_public, time.time())

    @classmethod
    def from_private(cls, backend: pqc.Backend, kem_seed: bytes, sig_private: bytes, created: float) -> "Identity":
        """Rebuild an identity from its private keys (the public ones are derived)."""
        return cls(kem_seed, backend.kem_public(kem_seed), sig_private, backend.sig_public(sig_private), created)

    @cached_property
    def bundle(self) -> Bundle:
        return Bundle(self.kem_public, self.sig_public)

    @cached_property
    def fingerprint(self) -> bytes:
        return self.bundle.fingerprint()

    @cached_property
    def id(self) -> str:
        return format_id(self.fingerprint)

    @property
    def short_id(self) -> str:
        return short_id(self.fingerprint)

    def sign(self, backend: pqc.Backend, message: bytes) -> bytes:
        return backend.sign(self.sig_private, message)


def encode_private(identity: Identity) -> bytes:
    """magic, version, created (float64), KEM seed, signature seeds, 4-byte SHA-256 check.

    The check catches a damaged file or a mistyped key before it silently becomes another
    identity."""
    body = _PRIVATE_LAYOUT.pack(PRIVATE_MAGIC, PRIVATE_VERSION, identity.created, identity.kem_seed, identity.sig_private)
    return body + hashlib.sha256(body).digest()[:_PRIVATE_CHECK_LEN]


def decode_private(data: bytes, backend: Optional[pqc.Backend] = None) -> Identity:
    """Parse ``encode_private()``'s output; public keys are derived with ``backend``."""
    if not isinstance(data, (bytes, bytearray)):
        raise IdentityError("Invalid private key: not bytes")
    data = bytes(data)
    if data[:4] != PRIVATE_MAGIC:
        raise IdentityError("Invalid private key: not a ChatP2P private key (bad magic)")
    if len(data) > 4 and data[4] != PRIVATE_VERSION:
        raise IdentityError(f"Unsupported private key version {data[4]} (this program reads {PRIVATE_VERSION})")
    if len(data) != PRIVATE_KEY_LEN:
        raise IdentityError(f"Invalid private key: expected {PRIVATE_KEY_LEN} bytes, got {len(data)}")
    body, check = data[:-_PRIVATE_CHECK_LEN], data[-_PRIVATE_CHECK_LEN:]
    if hashlib.sha256(body).digest()[:_PRIVATE_CHECK_LEN] != check:
        raise IdentityError("Invalid private key: checksum mismatch (damaged or mistyped)")
    _, _, created, kem_seed, sig_private = _PRIVATE_LAYOUT.unpack(body)
    try:
        return Identity.from_private(backend or pqc.PycryptodomeBackend(), kem_seed, sig_private, created)
    except pqc.CryptoError as exc:
        raise IdentityError(f"Invalid private key: {exc}") from None


def private_key_to_base64(identity: Identity) -> str:
    return base64.b64encode(encode_private(identity)).decode("ascii")


def private_key_from_base64(text: str, backend: Optional[pqc.Backend] = None) -> Identity:
    """An identity from a ``generate_keypair`` private key (base64), IdentityError if unusable."""
    if not isinstance(text, str):
        raise IdentityError("Invalid private key: not text")
    compact = "".join(text.split())
    if not compact or len(compact) > 4 * PRIVATE_KEY_LEN:
        raise IdentityError("Invalid private key: wrong size")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError("Invalid private key: not valid base64") from None
    return decode_private(data, backend)


def generate_keypair_export(backend: pqc.Backend) -> dict:
    """A fresh key pair for the API's ``crypto generate_keypair`` (never the node's identity)."""
    fresh = Identity.generate(backend)
    return {
        "public_key": fresh.bundle.to_base64(),
        "private_key": private_key_to_base64(fresh),
        "algorithm": pqc.ALGORITHM,
        "fingerprint": fresh.id,
    }


# ---------------------------------------------------------------- rollover statement

_ROLLOVER_HEAD = struct.Struct(f">4sB{FINGERPRINT_LEN}s")  # magic, version, old fingerprint
# A statement is ~6.6 KB (bundle 3209 + signature 3373); refuse anything far larger unread
MAX_ROLLOVER_LEN = 8192


@dataclass(frozen=True)
class Rollover:
    """"The identity ``old_fingerprint`` is replaced by ``new_bundle``", signed by the old key.

    Layout: magic "CP2R", version (1), old fingerprint (32), u16 length + new bundle,
    created (u64, ms since the Unix epoch), u16 length + signature. The signature is the old
    hybrid key's over ROLLOVER_LABEL || everything before the signature field. ``decode`` only
    parses: ``verify_rollover`` decides whether the statement is genuine."""

    old_fingerprint: bytes
    new_bundle: Bundle
    created_ms: int
    signature: bytes
    version: int = ROLLOVER_VERSION

    def __repr__(self) -> str:
        return (f"Rollover(old={format_id(self.old_fingerprint)!r}, "
                f"new={format_id(self.new_fingerprint)!r}, created_ms={self.created_ms})")

    @cached_property
    def new_fingerprint(self) -> bytes:
        return self.new_bundle.fingerprint()

    def signed_part(self) -> bytes:
        """What the old key signs (after ROLLOVER_LABEL): every field but the signature."""
        return (_ROLLOVER_HEAD.pack(ROLLOVER_MAGIC, self.version, self.old_fingerprint)
                + encode_prefixed(self.new_bundle.encode()) + struct.pack(">Q", self.created_ms))

    def encode(self) -> bytes:
        return self.signed_part() + encode_prefixed(self.signature)

    @staticmethod
    def decode(data: bytes) -> "Rollover":
        """Parse ``encode()``'s output (IdentityError if malformed); the signature is NOT checked."""
        if not isinstance(data, (bytes, bytearray)):
            raise IdentityError("Invalid rollover statement: not bytes")
        data = bytes(data)
        if len(data) > MAX_ROLLOVER_LEN:
            raise IdentityError("Invalid rollover statement: too long")
        if len(data) < _ROLLOVER_HEAD.size:
            raise IdentityError("Invalid rollover statement: truncated")
        magic, version, old_fingerprint = _ROLLOVER_HEAD.unpack_from(data)
        if magic != ROLLOVER_MAGIC:
            raise IdentityError("Invalid rollover statement: bad magic")
        if version != ROLLOVER_VERSION:
            raise IdentityError(f"Unsupported rollover statement version {version}")
        pos = _ROLLOVER_HEAD.size
        if pos + 2 > len(data):
            raise IdentityError("Invalid rollover statement: truncated")
        (size,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + size + 8 + 2 > len(data):
            raise IdentityError("Invalid rollover statement: truncated")
        new_bundle = Bundle.decode(data[pos : pos + size])
        pos += size
        (created_ms,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        (size,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + size != len(data):
            raise IdentityError("Invalid rollover statement: wrong length")
        return Rollover(old_fingerprint, new_bundle, created_ms, data[pos:], version)


def make_rollover(old_identity: Identity, new_identity: Identity, backend: pqc.Backend, now: float) -> Rollover:
    """The statement by which ``old_identity`` hands over to ``new_identity`` (signed by the old key)."""
    if old_identity.fingerprint == new_identity.fingerprint:
        raise IdentityError("A rollover needs a new identity, not the same one")
    unsigned = Rollover(old_identity.fingerprint, new_identity.bundle, int(now * 1000), b"")
    signature = old_identity.sign(backend, ROLLOVER_LABEL + unsigned.signed_part())
    return Rollover(old_identity.fingerprint, new_identity.bundle, unsigned.created_ms, signature)


def verify_rollover(statement: Rollover, old_bundle: Bundle, backend: pqc.Backend) -> bool:
    """True only if ``statement`` is signed by ``old_bundle``'s key (both signature halves), names
    that bundle as the old identity, and hands over to a different bundle."""
    if not isinstance(statement, Rollover) or not isinstance(old_bundle, Bundle):
        return False
    if statement.old_fingerprint != old_bundle.fingerprint():
        return False
    if statement.new_fingerprint == statement.old_fingerprint:
        return False
    return backend.verify(old_bundle.sig_public, ROLLOVER_LABEL + statement.signed_part(), statement.signature)


# ---------------------------------------------------------------- key file


def _ensure_private_dir(path: pathlib.Path) -> None:
    """Create ``path`` 0700 when missing; an existing directory is left as it is."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise IdentityError(f"{path} exists and is not a directory") from None
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def load(path: pathlib.Path, backend: pqc.Backend) -> Identity:
    """Read a key file. One readable by group or others is put back to 0600 with a warning:
    refusing to start would not undo the exposure, and the owner gets told either way."""
    path = pathlib.Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning(
                "%s had mode %04o (readable by others); changed to 0600. If someone else could "
                "read it, consider creating a new identity.",
                path,
                mode,
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"Cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_private(data, backend)
    except IdentityError as exc:
        raise IdentityError(
            f"{path} is unusable ({exc}); move it away to create a new identity "
            "(contacts will then see a new ID)"
        ) from None


def load_or_create(data_dir: pathlib.Path, backend: pqc.Backend) -> Identity:
    """The identity in ``data_dir``/identity.key, created on first use.

    A damaged key file raises IdentityError: it is never replaced silently."""
    data_dir = pathlib.Path(data_dir)
    _ensure_private_dir(data_dir)
    path = data_dir / KEY_FILE
    try:
        return load(path, backend)
    except FileNotFoundError:
        pass
    identity = Identity.generate(backend)
    try:
        created = write_private_file(path, encode_private(identity), replace=False)
    except OSError as exc:
        raise IdentityError(f"Cannot write {path}: {exc.strerror or exc}") from None
    if created:
        log.info("Created identity %s in %s", identity.id, path)
        return identity
    return load(path, backend)  # another process created it first


def rotate(data_dir: pathlib.Path, old_identity: Identity, backend: pqc.Backend, now: float) -> tuple[Identity, Rollover]:
    """Replace the identity in ``data_dir`` by a new one and write the statement contacts follow.

    The previous private key and the statement are written first, ``identity.key`` replaced
    last: a crash in between leaves the old identity in place with a statement that does not
    name it, which ``load_rollover`` ignores. Only the latest rotation is kept: rotating again
    overwrites both files, so contacts that missed the first rotation cannot follow the second
    (they see a key mismatch and must re-add the contact). The files are kept until the user
    deletes them; they are needed for as long as some contact may not have reconnected."""
    data_dir = pathlib.Path(data_dir)
    new_identity = Identity.generate(backend)
    statement = make_rollover(old_identity, new_identity, backend, now)
    try:
        write_private_file(data_dir / ROLLOVER_FILE, statement.encode())
        write_private_file(data_dir / PREVIOUS_KEY_FILE, encode_private(old_identity))
        write_private_file(data_dir / KEY_FILE, encode_private(new_identity))
    except OSError as exc:
        raise IdentityError(f"Cannot write the new identity in {data_dir}: {exc.strerror or exc}") from None
    log.info("Rotated identity %s -> %s", old_identity.id, new_identity.id)
    return new_identity, statement


def load_rollover(data_dir: pathlib.Path, identity: Identity, backend: pqc.Backend) -> Optional[Rollover]:
    """The statement announcing ``identity`` (from ``rollover.stmt``), or None when there is none
    or it does not hand over to this identity with a valid signature (a warning is logged)."""
    path = pathlib.Path(data_dir) / ROLLOVER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("Cannot read %s: %s", path, exc.strerror or exc)
        return None
    try:
        statement = Rollover.decode(data)
    except IdentityError as exc:
        log.warning("%s is unusable (%s): contacts cannot follow the last key rotation", path, exc)
        return None
    if statement.new_fingerprint != identity.fingerprint:
        log.warning("%s announces %s, not this identity: ignored", path, format_id(statement.new_fingerprint))
        return None
    try:
        previous = load(pathlib.Path(data_dir) / PREVIOUS_KEY_FILE, backend)
    except (FileNotFoundError, IdentityError) as exc:
        log.warning("%s: the previous key is unusable (%s); the statement is used as it is", path, exc)
        return statement
    if not verify_rollover(statement, previous.bundle, backend):
        log.warning("%s is not signed by the previous key: ignored", path)
        return None
    return statement
