"""Online-mode records: where a node's candidates live in the Mainline DHT, and how they are
sealed (PROTOCOL §12). Pure: no I/O; every time is passed in (wall clock, seconds).

A record is a BEP 44 mutable item. Its *slot* (signing key, salt, AEAD key) is derived from a
secret and the day (`epoch`), so it moves every day and nobody without the secret can find,
read or link it:

- the ID slot from the node's ID alone: anyone who has the ID can read it, and also overwrite
  it (whoever derives the signing key can), so what it says is a hint that the handshake proves
  or refutes, never trusted;
- a pairwise slot per direction from the pair secret two contacts exported from a session
  (§8): only those two can read or write it.

The signature on the item is BEP 44's Ed25519 (the DHT nodes check it); a hybrid signature
would not fit in the 1000 bytes a value may hold, and would prove nothing the handshake does
not prove anyway.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..codec.addresses import is_ipv6, scope_or_none
from ..errors import Invalid
from .session import hkdf

EPOCH_SECONDS = 86400          # a slot lives one UTC day
RECORD_LIFETIME = 7200         # seconds a record is valid after publication (DHT nodes keep ~2 h)
CLOCK_SKEW = 300               # seconds of clock difference tolerated between writer and reader
MAX_CANDIDATES = 8
MAX_VALUE = 995                # bytes: BEP 44 caps the bencoded value ("NNN:" + bytes) at 1000
VERSION = 1
ID_SLOT_LABEL = b"chatp2p dht id slot v1"
PAIR_SLOT_LABEL = b"chatp2p dht pair slot v1"
AD_LABEL = b"chatp2p dht record v1\x00"
NONCE_LEN = 12
TAG_LEN = 16
ENTRY = struct.Struct(">BB16sH")    # kind, family (4|6), address (IPv4 in the first 4 bytes), port
HEADER = struct.Struct(">BQI")      # version, seq (ms since 1970), expiry (s since 1970)
PLAIN_LEN = 2 + MAX_CANDIDATES * ENTRY.size   # version, count, then always 8 entries: one size
VALUE_LEN = HEADER.size + NONCE_LEN + PLAIN_LEN + TAG_LEN


class RecordError(Invalid):
    """A value that is not a valid record for its slot; `reason` is the counter's name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SlotKind(enum.IntEnum):
    ID = 1
    PAIR = 2


class CandidateKind(enum.IntEnum):
    """Where the address comes from (ICE's names, plus a router's port mapping)."""

    HOST = 1
    SRFLX = 2
    RELAY = 3
    MAPPED = 4


@dataclasses.dataclass(frozen=True)
class Slot:
    """Everything needed to write or read one record location for one epoch."""

    kind: SlotKind
    epoch: int
    public_key: bytes = dataclasses.field(repr=False)     # BEP 44 key (Ed25519, 32 bytes)
    secret: bytes = dataclasses.field(repr=False)         # libtorrent's expanded Ed25519 secret (64)
    salt: bytes = dataclasses.field(repr=False)           # BEP 44 salt (16)
    aead_key: bytes = dataclasses.field(repr=False)
    context: bytes = dataclasses.field(repr=False)        # bound into every record's associated data


@dataclasses.dataclass(frozen=True)
class Candidate:
    kind: CandidateKind
    address: tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Record:
    seq: int                 # milliseconds since 1970 at publication: a later record is larger
    expiry: int              # seconds since 1970 after which the record is void
    candidates: tuple[Candidate, ...]


def epoch_of(wall: float) -> int:
    return int(wall // EPOCH_SECONDS)


def epochs_to_read(wall: float) -> list[int]:
    """Today's slot, and yesterday's while a record written before midnight may still be valid
    (or the writer's clock lags ours)."""
    epoch = epoch_of(wall)
    since = wall - epoch * EPOCH_SECONDS
    return [epoch, epoch - 1] if since < RECORD_LIFETIME + CLOCK_SKEW else [epoch]


def id_slot(fingerprint: bytes, epoch: int) -> Slot:
    """The slot anyone who has `fingerprint` (an ID) can find, read and write."""
    return _slot(SlotKind.ID, epoch, ID_SLOT_LABEL, fingerprint, fingerprint)


def pair_slot(pair_secret: bytes, writer: bytes, reader: bytes, epoch: int) -> Slot:
    """The slot `writer` publishes for `reader` alone (both hold `pair_secret`)."""
    return _slot(SlotKind.PAIR, epoch, PAIR_SLOT_LABEL, pair_secret, writer + reader)


def _slot(kind: SlotKind, epoch: int, label: bytes, secret: bytes, who: bytes) -> Slot:
    if not 0 <= epoch < 2 ** 32:
        raise ValueError("epoch out of range")
    context = bytes([kind]) + struct.pack(">I", epoch) + who
    okm = hkdf(label, secret, context, 32 + 32 + 16)
    seed, aead_key, salt = okm[:32], okm[32:64], okm[64:]
    public_key = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return Slot(kind, epoch, public_key, expanded_secret(seed), salt, aead_key, context)


def expanded_secret(seed: bytes) -> bytes:
    """The 64-byte Ed25519 secret libtorrent signs with: SHA-512 of the seed, clamped (RFC 8032)."""
    digest = bytearray(hashlib.sha512(seed).digest())
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


# -- candidates -----------------------------------------------------------------------------
def usable(host: str, lan_ok: bool) -> bool:
    """May this address be published (and be probed by a reader)? Only global addresses, and
    private ones (RFC 1918, CGNAT, ULA) where LAN addresses are allowed (pairwise slots); never
    loopback, link-local, multicast, unspecified, reserved or IPv4-mapped (codec.addresses;
    documentation prefixes count as global: tests stand for the internet with them)."""
    if is_ipv6(host) and "." in host:
        return False
    scope = scope_or_none(host)
    return scope == "global" or (lan_ok and scope == "private")


def keep_usable(candidates: list[Candidate], lan_ok: bool) -> tuple[Candidate, ...]:
    """The candidates a record may carry: usable, distinct, at most MAX_CANDIDATES, in order."""
    kept: list[Candidate] = []
    for candidate in candidates:
        host, port = candidate.address
        if 0 < port < 65536 and usable(host, lan_ok) and all(c.address != candidate.address for c in kept):
            kept.append(candidate)
    return tuple(kept[:MAX_CANDIDATES])


def _encode_entry(candidate: Candidate) -> bytes:
    ip = ipaddress.ip_address(candidate.address[0])
    return ENTRY.pack(candidate.kind, ip.version, ip.packed.ljust(16, b"\0"), candidate.address[1])


def _decode_entry(raw: bytes) -> Candidate:
    kind, family, packed, port = ENTRY.unpack(raw)
    if family == 4 and packed[4:] == bytes(12):
        host = str(ipaddress.IPv4Address(packed[:4]))
    elif family == 6:
        host = str(ipaddress.IPv6Address(packed))
    else:
        raise RecordError("malformed", f"address family {family}")
    try:
        return Candidate(CandidateKind(kind), (host, port))
    except ValueError:
        raise RecordError("malformed", f"candidate kind {kind}") from None


# -- sealing --------------------------------------------------------------------------------
def _associated(slot: Slot, seq: int, expiry: int) -> bytes:
    return AD_LABEL + slot.context + HEADER.pack(VERSION, seq, expiry)


def seal(slot: Slot, record: Record, nonce: bytes) -> bytes:
    """The BEP 44 value for `record` in `slot` (always VALUE_LEN bytes: the number of
    candidates does not show). `nonce`: 12 fresh random bytes."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("the nonce is 12 bytes")
    candidates = keep_usable(list(record.candidates), lan_ok=slot.kind == SlotKind.PAIR)
    plain = bytes([VERSION, len(candidates)]) + b"".join(_encode_entry(c) for c in candidates)
    plain = plain.ljust(PLAIN_LEN, b"\0")
    sealed = ChaCha20Poly1305(slot.aead_key).encrypt(nonce, plain, _associated(slot, record.seq, record.expiry))
    value = HEADER.pack(VERSION, record.seq, record.expiry) + nonce + sealed
    assert len(value) == VALUE_LEN <= MAX_VALUE
    return value


def open_record(slot: Slot, value: bytes, wall: float) -> Record:
    """The record in `value`, read from `slot` at time `wall`. RecordError (reason: malformed,
    undecryptable, expired, future) when it is not a valid, current record for this slot; its
    candidates are only those a record of this slot may carry (the others are left out)."""
    if not isinstance(value, (bytes, bytearray)) or len(value) != VALUE_LEN:
        raise RecordError("malformed", f"{len(value) if isinstance(value, (bytes, bytearray)) else '?'} bytes")
    version, seq, expiry = HEADER.unpack_from(value)
    if version != VERSION:
        raise RecordError("malformed", f"version {version}")
    nonce = bytes(value[HEADER.size:HEADER.size + NONCE_LEN])
    try:
        plain = ChaCha20Poly1305(slot.aead_key).decrypt(nonce, bytes(value[HEADER.size + NONCE_LEN:]),
                                                        _associated(slot, seq, expiry))
    except InvalidTag:
        raise RecordError("undecryptable") from None
    if plain[0] != VERSION or plain[1] > MAX_CANDIDATES:
        raise RecordError("malformed", "bad inner header")
    if expiry + CLOCK_SKEW < wall:
        raise RecordError("expired")
    if seq / 1000 > wall + CLOCK_SKEW or expiry > wall + RECORD_LIFETIME + CLOCK_SKEW:
        raise RecordError("future")
    entries = [_decode_entry(plain[2 + i * ENTRY.size:2 + (i + 1) * ENTRY.size]) for i in range(plain[1])]
    return Record(seq, expiry, keep_usable(entries, lan_ok=slot.kind == SlotKind.PAIR))


def new_record(candidates: list[Candidate], wall: float, lan_ok: bool) -> Record:
    """A record published at `wall`, valid RECORD_LIFETIME seconds."""
    return Record(int(wall * 1000), int(wall) + RECORD_LIFETIME, keep_usable(candidates, lan_ok))
