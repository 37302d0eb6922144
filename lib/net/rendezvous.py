"""Rendezvous: introductions between two nodes that cannot reach each other directly.

Any node with a fixed public UDP port can serve as a rendezvous point. Both nodes keep an
ordinary ChatP2P session (§4 handshake) with it: the handshake already gives the cookie,
anti-amplification and mutual authentication by signature (so a registration is made by the
identity that signed the transcript) and, with ``host:port#ID``, the client pins the server's
identity. The messages below are records of type 0x10-0x16 inside that session's DATA frames.

    R (requester)                        S (rendezvous)                       T (target)
                                            <-- REGISTER ttl, nonce ---------------
                                            --- REGISTERED nonce, ttl, T's addr -->
    --- INTRO_REQUEST id, T, blob_R ----->
                                            --- INTRO id, R, R's addr, blob_R ---->  if T is registered
                                            <-- INTRO_ACCEPT id, blob_T -----------  only if R is T's contact
    <-- INTRO_REPLY id, T's addr, blob_T
    then both punch at once (PROTOCOL.md §9.3)

The rendezvous never tells a requester anything about a target unless the target accepted: an
unregistered target, a refusing target and a target over its introduction cap all look the
same (silence, then a timeout). ``blob`` carries the sender's candidates, HPKE-sealed to the
other side's X-Wing key when its bundle is known (clear otherwise): the rendezvous sees IDs and
the addresses it observes, never names, contents or sealed candidates.

A sealed blob is ~1.2 KB, more than one record of a 1200-byte datagram holds, so the four
introduction messages travel as up to 4 "parts" (records of their type, reassembled by
request id like handshake fragments). The requester retransmits; the server and the target
answer repeats idempotently (stored reply, stored accept).

Pure logic, no I/O: ``RendezvousServer`` and ``RendezvousClient`` take records and the
caller's clock (the client's is wall-clock time: blob timestamps cross machines) and return
records to send. Decoders raise ``RendezvousError``; ``on_record`` never raises on hostile
input (it counts and drops). Byte layouts and the privacy argument: docs/PROTOCOL.md §9.1.
"""

from __future__ import annotations

import collections
import enum
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Hashable, NamedTuple, Optional, Sequence, Union

from ..errors import Refused
from ..crypto import identity as ident, pqc
from ..crypto.handshake import host_key
from ..codec import addresses, wire
from ..codec.fields import check_bytes
from ..codec.wire import RawRecord
from ..util import Address, TokenBucket

REQUEST_ID_LEN = 16
NONCE_LEN = 8
FP_LEN = ident.FINGERPRINT_LEN  # 32
ADDRESS_LEN = addresses.ENDPOINT_LEN  # 6: IPv4 (4) + port (2)
IPV6_TAG = addresses.IPV6_TAG
ADDRESS6_LEN = addresses.ENDPOINT6_LEN  # 19: tag + IPv6 (16) + port (2)
CANDIDATE_LEN = 1 + ADDRESS_LEN  # an IPv4 candidate
CANDIDATE6_LEN = 1 + ADDRESS6_LEN  # an IPv6 candidate
MAX_CANDIDATES = 8
MAX_TTL = 3600  # the most a server grants (it clamps longer asks)
DEFAULT_TTL = 600  # what a client asks for: refreshed every 5 minutes
BLOB_VERSION = 1
HPKE_AEAD = "chacha20poly1305"  # fixed in v1: no negotiation to downgrade
BLOB_INFO_LABEL = b"chatp2p v1 rendezvous blob\x00"

_PART_HEADER = struct.Struct(f">{REQUEST_ID_LEN}sBBH")  # request id, index, count, total
MAX_PARTS = 4  # a sealed INTRO is 2 parts at 1200-byte datagrams, 3 at the 576-byte minimum
_REGISTER = struct.Struct(f">H{NONCE_LEN}s")  # ttl, nonce
_REGISTERED = struct.Struct(f">{NONCE_LEN}sH")  # nonce, ttl granted; then the observed address
_FAILED = struct.Struct(f">{REQUEST_ID_LEN}sB")  # request id, code
_CONTENT_HEAD = struct.Struct(f">BB{FP_LEN}s{FP_LEN}sQB")  # version, role, requester, target, ms, n

CLEAR = 0x00
SEALED = 0x01
_ENC_LEN = pqc.KEM_CT_LEN  # 1120
_TAG_LEN = 16
MIN_CONTENT = _CONTENT_HEAD.size  # 75
MAX_CONTENT = MIN_CONTENT + MAX_CANDIDATES * CANDIDATE6_LEN  # 235
MAX_BLOB = 1 + _ENC_LEN + MAX_CONTENT + _TAG_LEN  # 1372
MAX_PAYLOAD = FP_LEN + ADDRESS6_LEN + MAX_BLOB  # INTRO, the largest: 1423
# Every length the candidates of a content can have: i IPv4 and j IPv6 ones, i + j <= 8.
_CANDIDATE_BYTES = frozenset(i * CANDIDATE_LEN + j * CANDIDATE6_LEN
                             for i in range(MAX_CANDIDATES + 1) for j in range(MAX_CANDIDATES + 1 - i))



class RendezvousError(wire.WireError):
    """A rendezvous record or argument that cannot be used; the message says why."""


class RecordType(enum.IntEnum):
    """Record types of the rendezvous protocol (0x17 is reserved for it too)."""

    REGISTER = 0x10  # client -> server
    REGISTERED = 0x11  # server -> client
    INTRO_REQUEST = 0x12  # requester -> server (parts)
    INTRO = 0x13  # server -> target (parts)
    INTRO_ACCEPT = 0x14  # target -> server (parts)
    INTRO_REPLY = 0x15  # server -> requester (parts)
    INTRO_FAILED = 0x16  # server -> requester


RECORD_TYPES = frozenset(int(t) for t in RecordType)
SERVER_BOUND = frozenset({RecordType.REGISTER, RecordType.INTRO_REQUEST, RecordType.INTRO_ACCEPT})
CLIENT_BOUND = frozenset({RecordType.REGISTERED, RecordType.INTRO, RecordType.INTRO_REPLY, RecordType.INTRO_FAILED})


class FailCode(enum.IntEnum):
    """Why the server refused an INTRO_REQUEST. Only conditions that say nothing about the
    target exist: "unknown target" and "target declined" are deliberately not codes."""

    BAD_REQUEST = 1  # malformed, or a request to oneself
    RATE_LIMITED = 2  # this source sends too much, or has too many requests pending
    BUSY = 3  # the server's request table is full


class CandidateType(enum.IntEnum):
    """Where a candidate address comes from (ICE's names)."""

    HOST = 1  # a local interface address
    SRFLX = 2  # server-reflexive: our address as a STUN server (or a rendezvous) sees it
    RELAY = 3  # a TURN relay address


class Role(enum.IntEnum):
    """Which side sealed a blob: bound into the HPKE info, so one cannot pass for the other."""

    REQUEST = 1
    ACCEPT = 2


# ---------------------------------------------------------------- addresses and candidates


def encode_address(address: Address) -> bytes:
    """``(ip text, port)`` -> 6 or 19 bytes (`addresses.encode_endpoint`, §9.1)."""
    return addresses.encode_endpoint(address, RendezvousError)


def address_length(data: bytes, offset: int = 0) -> int:
    """The length of the encoded address that starts at `offset` (6, or 19 after IPV6_TAG)."""
    return addresses.endpoint_length(data, offset, RendezvousError)


def decode_address(data: bytes) -> Address:
    """6 or 19 bytes -> ``(ip text, port)``, with encode_address's checks."""
    return addresses.decode_endpoint(data, RendezvousError)


def split_address(data: bytes, offset: int = 0) -> tuple[Address, int]:
    """The address at `offset` in `data`, and the offset after it."""
    return addresses.split_endpoint(data, offset, RendezvousError)


@dataclass(frozen=True)
class Candidate:
    """One address a peer may be reachable at, and where it comes from."""

    kind: CandidateType
    address: Address

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", CandidateType(self.kind))
        except ValueError:
            raise RendezvousError(f"unknown candidate type {self.kind!r}") from None
        encode_address(self.address)

    def encode(self) -> bytes:
        return bytes([self.kind]) + encode_address(self.address)

    @staticmethod
    def decode(data: bytes) -> "Candidate":
        if len(data) not in (CANDIDATE_LEN, CANDIDATE6_LEN):
            raise RendezvousError(f"a candidate is {CANDIDATE_LEN} or {CANDIDATE6_LEN} bytes, got {len(data)}")
        return Candidate(data[0], decode_address(data[1:]))  # type: ignore[arg-type]

    @staticmethod
    def split(data: bytes, count: int) -> tuple["Candidate", ...]:
        """`count` candidates filling `data` exactly."""
        found, offset = [], 0
        for _ in range(count):
            if offset + 2 > len(data):
                raise RendezvousError("blob candidate count does not match its length")
            end = offset + 1 + address_length(data, offset + 1)
            found.append(Candidate.decode(data[offset:end]))
            offset = end
        if offset != len(data):
            raise RendezvousError("blob candidate count does not match its length")
        return tuple(found)


def _check_candidates(candidates: Sequence[Candidate]) -> tuple[Candidate, ...]:
    out = tuple(candidates)
    if len(out) > MAX_CANDIDATES:
        raise RendezvousError(f"at most {MAX_CANDIDATES} candidates, got {len(out)}")
    if not all(isinstance(c, Candidate) for c in out):
        raise RendezvousError("candidates must be Candidate objects")
    return out


# ---------------------------------------------------------------- blob: candidates, sealed or clear


@dataclass(frozen=True)
class BlobContent:
    """What one side tells the other through the rendezvous: its candidates, bound to the
    request's two identities and to its role, and when it was made (ms since the epoch)."""

    role: Role
    requester: bytes
    target: bytes
    timestamp_ms: int
    candidates: tuple[Candidate, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise RendezvousError(f"unknown blob role {self.role!r}") from None
        check_bytes(self.requester, "requester fingerprint", RendezvousError, FP_LEN)
        check_bytes(self.target, "target fingerprint", RendezvousError, FP_LEN)
        if not isinstance(self.timestamp_ms, int) or not 0 <= self.timestamp_ms < 1 << 64:
            raise RendezvousError(f"timestamp out of range: {self.timestamp_ms!r}")
        object.__setattr__(self, "candidates", _check_candidates(self.candidates))

    def encode(self) -> bytes:
        head = _CONTENT_HEAD.pack(BLOB_VERSION, self.role, self.requester, self.target,
                                  self.timestamp_ms, len(self.candidates))
        return head + b"".join(c.encode() for c in self.candidates)

    @staticmethod
    def decode(data: bytes) -> "BlobContent":
        if len(data) < MIN_CONTENT:
            raise RendezvousError(f"blob content too short ({len(data)} bytes)")
        version, role, requester, target, stamp, count = _CONTENT_HEAD.unpack_from(data)
        if version != BLOB_VERSION:
            raise RendezvousError(f"unsupported blob version {version}")
        if count > MAX_CANDIDATES:
            raise RendezvousError("blob candidate count does not match its length")
        return BlobContent(role, requester, target, stamp, Candidate.split(data[MIN_CONTENT:], count))


def blob_info(role: Role, request_id: bytes, requester: bytes, target: bytes) -> bytes:
    """HPKE info of a sealed blob: a blob opens only for its own request, pair and role."""
    return BLOB_INFO_LABEL + bytes([role]) + request_id + requester + target


def seal_blob(content: BlobContent, request_id: bytes, recipient: Optional[ident.Bundle]) -> bytes:
    """``content`` sealed to ``recipient``'s X-Wing key, or in clear when its bundle is unknown."""
    check_bytes(request_id, "request id", RendezvousError, REQUEST_ID_LEN)
    if recipient is None:
        return bytes([CLEAR]) + content.encode()
    info = blob_info(content.role, request_id, content.requester, content.target)
    try:
        enc, ciphertext = pqc.hpke_seal(recipient.kem_public, content.encode(), info, HPKE_AEAD)
    except pqc.CryptoError as exc:
        raise RendezvousError(f"cannot seal to this bundle: {exc}") from None
    return bytes([SEALED]) + enc + ciphertext


def check_blob(blob: bytes) -> None:
    """What the server can check of a blob it forwards: the flag and a possible length (and,
    for a clear blob, its whole content)."""
    if not blob:
        raise RendezvousError("empty blob")
    if blob[0] == CLEAR:
        BlobContent.decode(blob[1:])
    elif blob[0] == SEALED:
        size = len(blob) - 1 - _ENC_LEN - _TAG_LEN
        if size - MIN_CONTENT not in _CANDIDATE_BYTES:
            raise RendezvousError(f"sealed blob of impossible length {len(blob)}")
    else:
        raise RendezvousError(f"unknown blob flag {blob[0]:#04x}")


def open_blob(blob: bytes, role: Role, request_id: bytes, requester: bytes, target: bytes,
              kem_seed: bytes) -> tuple[BlobContent, bool]:
    """(content, was sealed) of a blob that must belong to this request, pair and role."""
    check_blob(blob)
    sealed = blob[0] == SEALED
    if sealed:
        info = blob_info(role, request_id, requester, target)
        enc, ciphertext = blob[1:1 + _ENC_LEN], blob[1 + _ENC_LEN:]
        try:
            plain = pqc.hpke_open(kem_seed, enc, ciphertext, info, HPKE_AEAD)
        except (pqc.CryptoError, ValueError):
            raise RendezvousError("sealed blob does not open: not for us, or tampered") from None
    else:
        plain = blob[1:]
    content = BlobContent.decode(plain)
    if content.role != role or content.requester != requester or content.target != target:
        raise RendezvousError("blob is bound to another request, pair or role")
    return content, sealed


# ---------------------------------------------------------------- messages and their records


@dataclass(frozen=True)
class RegisterMsg:
    """Client -> server: keep me registered ``ttl`` seconds (0: forget me). ``nonce`` is echoed."""

    ttl: int
    nonce: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.ttl, int) or not 0 <= self.ttl <= 0xFFFF:
            raise RendezvousError(f"ttl out of range: {self.ttl!r}")
        check_bytes(self.nonce, "nonce", RendezvousError, NONCE_LEN)

    def record(self) -> RawRecord:
        return RawRecord(RecordType.REGISTER, _REGISTER.pack(self.ttl, self.nonce))

    @staticmethod
    def decode(body: bytes) -> "RegisterMsg":
        if len(body) != _REGISTER.size:
            raise RendezvousError(f"REGISTER body must be {_REGISTER.size} bytes, got {len(body)}")
        return RegisterMsg(*_REGISTER.unpack(body))


@dataclass(frozen=True)
class RegisteredMsg:
    """Server -> client: the ttl granted (0: not registered) and the client's address as the
    server sees it (its server-reflexive candidate: the rendezvous doubles as STUN)."""

    nonce: bytes
    ttl: int
    observed: Address

    def __post_init__(self) -> None:
        check_bytes(self.nonce, "nonce", RendezvousError, NONCE_LEN)
        if not isinstance(self.ttl, int) or not 0 <= self.ttl <= 0xFFFF:
            raise RendezvousError(f"ttl out of range: {self.ttl!r}")
        encode_address(self.observed)

    def record(self) -> RawRecord:
        return RawRecord(RecordType.REGISTERED, _REGISTERED.pack(self.nonce, self.ttl) + encode_address(self.observed))

    @staticmethod
    def decode(body: bytes) -> "RegisteredMsg":
        if len(body) not in (_REGISTERED.size + ADDRESS_LEN, _REGISTERED.size + ADDRESS6_LEN):
            raise RendezvousError(f"REGISTERED body must be {_REGISTERED.size + ADDRESS_LEN} or "
                                  f"{_REGISTERED.size + ADDRESS6_LEN} bytes, got {len(body)}")
        nonce, ttl = _REGISTERED.unpack_from(body)
        return RegisteredMsg(nonce, ttl, decode_address(body[_REGISTERED.size:]))


@dataclass(frozen=True)
class IntroFailedMsg:
    """Server -> requester: the request was refused for a reason that says nothing of the target."""

    request_id: bytes
    code: FailCode

    def __post_init__(self) -> None:
        check_bytes(self.request_id, "request id", RendezvousError, REQUEST_ID_LEN)
        try:
            object.__setattr__(self, "code", FailCode(self.code))
        except ValueError:
            raise RendezvousError(f"unknown failure code {self.code!r}") from None

    def record(self) -> RawRecord:
        return RawRecord(RecordType.INTRO_FAILED, _FAILED.pack(self.request_id, self.code))

    @staticmethod
    def decode(body: bytes) -> "IntroFailedMsg":
        if len(body) != _FAILED.size:
            raise RendezvousError(f"INTRO_FAILED body must be {_FAILED.size} bytes, got {len(body)}")
        return IntroFailedMsg(*_FAILED.unpack(body))


class _PartedMessage:
    """An introduction message: a request id and a payload too big for one record (a sealed
    blob is ~1.3 KB), sent as up to MAX_PARTS records of its type."""

    RTYPE: ClassVar[RecordType]
    request_id: bytes

    def payload(self) -> bytes:
        raise NotImplementedError

    def records(self, max_datagram: int = wire.MAX_DATAGRAM) -> list[RawRecord]:
        return split_parts(self.RTYPE, self.request_id, self.payload(), max_datagram)


@dataclass(frozen=True)
class IntroRequestMsg(_PartedMessage):
    """Requester -> server: introduce me to ``target``."""

    RTYPE: ClassVar[RecordType] = RecordType.INTRO_REQUEST
    request_id: bytes
    target: bytes
    blob: bytes

    def __post_init__(self) -> None:
        check_bytes(self.request_id, "request id", RendezvousError, REQUEST_ID_LEN)
        check_bytes(self.target, "target fingerprint", RendezvousError, FP_LEN)
        check_blob(self.blob)

    def payload(self) -> bytes:
        return self.target + self.blob

    @staticmethod
    def from_payload(request_id: bytes, payload: bytes) -> "IntroRequestMsg":
        if len(payload) < FP_LEN + 1:
            raise RendezvousError("INTRO_REQUEST payload too short")
        return IntroRequestMsg(request_id, payload[:FP_LEN], payload[FP_LEN:])


@dataclass(frozen=True)
class IntroMsg(_PartedMessage):
    """Server -> target: ``requester``, seen at ``requester_observed``, asks for an introduction."""

    RTYPE: ClassVar[RecordType] = RecordType.INTRO
    request_id: bytes
    requester: bytes
    requester_observed: Address
    blob: bytes

    def __post_init__(self) -> None:
        check_bytes(self.request_id, "request id", RendezvousError, REQUEST_ID_LEN)
        check_bytes(self.requester, "requester fingerprint", RendezvousError, FP_LEN)
        encode_address(self.requester_observed)
        check_blob(self.blob)

    def payload(self) -> bytes:
        return self.requester + encode_address(self.requester_observed) + self.blob

    @staticmethod
    def from_payload(request_id: bytes, payload: bytes) -> "IntroMsg":
        if len(payload) < FP_LEN + ADDRESS_LEN + 1:
            raise RendezvousError("INTRO payload too short")
        observed, end = split_address(payload, FP_LEN)
        return IntroMsg(request_id, payload[:FP_LEN], observed, payload[end:])


@dataclass(frozen=True)
class IntroAcceptMsg(_PartedMessage):
    """Target -> server: I accept; pass my blob to the requester."""

    RTYPE: ClassVar[RecordType] = RecordType.INTRO_ACCEPT
    request_id: bytes
    blob: bytes

    def __post_init__(self) -> None:
        check_bytes(self.request_id, "request id", RendezvousError, REQUEST_ID_LEN)
        check_blob(self.blob)

    def payload(self) -> bytes:
        return self.blob

    @staticmethod
    def from_payload(request_id: bytes, payload: bytes) -> "IntroAcceptMsg":
        return IntroAcceptMsg(request_id, payload)


@dataclass(frozen=True)
class IntroReplyMsg(_PartedMessage):
    """Server -> requester: the target accepted; it is seen at ``target_observed``."""

    RTYPE: ClassVar[RecordType] = RecordType.INTRO_REPLY
    request_id: bytes
    target_observed: Address
    blob: bytes

    def __post_init__(self) -> None:
        check_bytes(self.request_id, "request id", RendezvousError, REQUEST_ID_LEN)
        encode_address(self.target_observed)
        check_blob(self.blob)

    def payload(self) -> bytes:
        return encode_address(self.target_observed) + self.blob

    @staticmethod
    def from_payload(request_id: bytes, payload: bytes) -> "IntroReplyMsg":
        if len(payload) < ADDRESS_LEN + 1:
            raise RendezvousError("INTRO_REPLY payload too short")
        observed, end = split_address(payload)
        return IntroReplyMsg(request_id, observed, payload[end:])


_PARTED: dict[int, Callable[[bytes, bytes], _PartedMessage]] = {
    RecordType.INTRO_REQUEST: IntroRequestMsg.from_payload,
    RecordType.INTRO: IntroMsg.from_payload,
    RecordType.INTRO_ACCEPT: IntroAcceptMsg.from_payload,
    RecordType.INTRO_REPLY: IntroReplyMsg.from_payload,
}


def split_parts(rtype: int, request_id: bytes, payload: bytes,
                max_datagram: int = wire.MAX_DATAGRAM) -> list[RawRecord]:
    """``payload`` as near-equal parts, each record small enough for one DATA frame of
    ``max_datagram`` bytes by itself."""
    check_bytes(request_id, "request id", RendezvousError, REQUEST_ID_LEN)
    room = wire.payload_capacity(max_datagram) - wire.RECORD_HEADER_LEN - _PART_HEADER.size
    count = max(1, -(-len(payload) // room))
    if not 1 <= len(payload) <= MAX_PAYLOAD or count > MAX_PARTS:
        raise RendezvousError(f"a {len(payload)}-byte payload does not fit in {MAX_PARTS} parts")
    base, extra = divmod(len(payload), count)
    records, pos = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        head = _PART_HEADER.pack(request_id, index, count, len(payload))
        records.append(RawRecord(rtype, head + payload[pos:pos + size]))
        pos += size
    return records


def decode_part(body: bytes) -> tuple[bytes, wire.Fragment]:
    """(request id, fragment) of one part record's body."""
    if len(body) <= _PART_HEADER.size:
        raise RendezvousError(f"part too short ({len(body)} bytes)")
    request_id, index, count, total = _PART_HEADER.unpack_from(body)
    if count > MAX_PARTS or total > MAX_PAYLOAD:
        raise RendezvousError(f"part of {count} parts / {total} bytes exceeds the limits")
    try:
        return request_id, wire.Fragment(index, count, total, bytes(body[_PART_HEADER.size:]))
    except wire.WireError as exc:
        raise RendezvousError(str(exc)) from None


def decode_message(rtype: int, request_id: bytes, payload: bytes) -> _PartedMessage:
    """The introduction message of type ``rtype`` reassembled from its parts."""
    parse = _PARTED.get(rtype)
    if parse is None:
        raise RendezvousError(f"record type {rtype:#04x} is not a parted rendezvous message")
    return parse(request_id, payload)


def _parts_buffer(max_messages: int, max_peer_messages: int, timeout: float) -> wire.Reassembler:
    return wire.Reassembler(max_fragments=MAX_PARTS, max_message_bytes=MAX_PAYLOAD,
                            max_peer_bytes=max_peer_messages * MAX_PAYLOAD, max_peer_messages=max_peer_messages,
                            max_messages=max_messages, timeout=timeout)


class PartRefused(Refused, RendezvousError):
    """A part the reassembly buffers refuse: over a limit, or contradicting earlier parts."""


def _take(body: bytes, parts: wire.Reassembler, peer: Hashable, rtype: int, now: float) -> Optional[_PartedMessage]:
    """Feed one part record; the whole message once its last part arrived."""
    request_id, fragment = decode_part(body)
    try:
        payload = parts.add(peer, (rtype, request_id), fragment, now)
    except wire.ReassemblyError as exc:
        raise PartRefused(f"part refused: {exc}") from None
    return None if payload is None else decode_message(rtype, request_id, payload)


# ---------------------------------------------------------------- server


class Delivery(NamedTuple):
    """A record the server sends, on its session with ``fingerprint``."""

    fingerprint: bytes
    record: RawRecord


@dataclass(frozen=True)
class ServerConfig:
    max_registrations: int = 10_000
    min_ttl: int = 60  # shorter asks are raised to this: refreshes cost the server
    max_ttl: int = MAX_TTL
    max_pending: int = 4096  # live request ids, answered or not
    max_pending_per_requester: int = 8
    request_timeout: float = 10.0  # a request id lives this long, answered or not
    max_forwards: int = 3  # INTRO copies per request (the requester retransmits)
    # Introductions are charged to who asks for them, never to the target (a throwaway
    # identity spending a target's allowance would starve every real introduction to it).
    requester_intros_per_minute: float = 20.0  # per requesting identity; also the burst
    source_intros_per_minute: float = 60.0  # per requesting IP address (throwaway identities)
    source_rate: float = 10.0  # rendezvous records per second from one source IP
    source_burst: float = 40.0
    max_sources: int = 4096  # rate-limit buckets kept (least recently used dropped)
    max_datagram: int = wire.MAX_DATAGRAM  # parts are cut to fit the sessions' datagrams


@dataclass
class _Registration:
    expires: float


@dataclass
class _Pending:
    request_id: bytes
    requester: bytes
    target: bytes
    created: float
    forwards: int = 0
    reply: Optional[list[RawRecord]] = None  # kept to answer a retransmitted request


class RendezvousServer:
    """The introduction service of a rendezvous node: registrations and pending requests.

    Every record comes from an authenticated session: ``peer`` is its fingerprint and
    ``observed`` the address its datagrams come from (verified by the handshake). Output:
    which record to send on which session (the caller drops those whose session is gone)."""

    def __init__(self, config: ServerConfig = ServerConfig()) -> None:
        self.config = config
        self.counters: collections.Counter[str] = collections.Counter()
        self._registrations: dict[bytes, _Registration] = {}
        self._pending: collections.OrderedDict[bytes, _Pending] = collections.OrderedDict()  # oldest first
        self._per_requester: collections.Counter[bytes] = collections.Counter()
        self._sources: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()  # LRU first
        # Introduction allowances, by requester fingerprint and by requester IP (LRU first).
        self._requester_intros: collections.OrderedDict[bytes, TokenBucket] = collections.OrderedDict()
        self._source_intros: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._parts = _parts_buffer(max_messages=1024, max_peer_messages=8, timeout=config.request_timeout)

    # -- queries
    def registered(self, fingerprint: bytes, now: float) -> bool:
        reg = self._registrations.get(fingerprint)
        return reg is not None and reg.expires > now

    @property
    def registrations(self) -> int:
        return len(self._registrations)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- input
    def on_record(self, peer: bytes, observed: Address, rtype: int, body: bytes, now: float) -> list[Delivery]:
        """Handle one rendezvous record received on ``peer``'s session; never raises on bad input."""
        if rtype not in SERVER_BOUND:
            return self._drop("unexpected_type")
        try:
            encode_address(observed)
        except RendezvousError:
            return self._drop("unsupported_address")
        body = bytes(body)
        if not self._source_bucket(host_key(observed), now).take(now):
            self.counters["rate_limited"] += 1
            first_part = len(body) > _PART_HEADER.size and body[REQUEST_ID_LEN] == 0
            if rtype == RecordType.INTRO_REQUEST and first_part:
                return self._fail(peer, body[:REQUEST_ID_LEN], FailCode.RATE_LIMITED)
            return []
        if rtype == RecordType.INTRO_ACCEPT and not self._expects_accept(peer, body[:REQUEST_ID_LEN], now):
            return self._drop("unknown_request")  # before buffering any part
        try:
            if rtype == RecordType.REGISTER:
                return self._register(peer, observed, RegisterMsg.decode(body), now)
            message = _take(body, self._parts, peer, rtype, now)
        except RendezvousError as exc:
            busy = isinstance(exc, PartRefused)
            self.counters["dropped_parts_refused" if busy else "dropped_malformed"] += 1
            if rtype == RecordType.INTRO_REQUEST and len(body) >= REQUEST_ID_LEN:
                return self._fail(peer, body[:REQUEST_ID_LEN], FailCode.BUSY if busy else FailCode.BAD_REQUEST)
            return []
        if message is None:
            return []  # more parts to come
        if isinstance(message, IntroRequestMsg):
            return self._intro_request(peer, observed, message, now)
        assert isinstance(message, IntroAcceptMsg)
        return self._intro_accept(peer, observed, message, now)

    def forget(self, peer: bytes) -> None:
        """``peer``'s session ended: it can no longer be reached, so it is no longer registered.
        (Its own requests keep their slots until they time out.)"""
        self._registrations.pop(peer, None)

    def expire(self, now: float) -> None:
        """Forget expired registrations and requests, stale parts and idle rate limits."""
        for fp in [fp for fp, reg in self._registrations.items() if reg.expires <= now]:
            del self._registrations[fp]
        self._expire_pending(now)
        self._parts.expire(now)
        for table in (self._sources, self._requester_intros, self._source_intros):
            while table:
                key, bucket = next(iter(table.items()))
                if not bucket.idle_full(now):
                    break
                del table[key]

    # -- internals
    def _drop(self, reason: str) -> list[Delivery]:
        self.counters["dropped_" + reason] += 1
        return []

    def _fail(self, peer: bytes, request_id: bytes, code: FailCode) -> list[Delivery]:
        self.counters[f"failed_{code.name.lower()}"] += 1
        return [Delivery(peer, IntroFailedMsg(request_id, code).record())]

    def _source_bucket(self, source: str, now: float) -> TokenBucket:
        return self._bucket(self._sources, source, self.config.source_rate, self.config.source_burst, now)

    def _bucket(self, table: collections.OrderedDict, key: Hashable, rate: float, burst: float,
                now: float) -> TokenBucket:
        """The bucket of `key` in an LRU table of at most `max_sources` buckets."""
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= self.config.max_sources:
                table.popitem(last=False)
            bucket = TokenBucket(rate, burst, now)
            table[key] = bucket
        else:
            table.move_to_end(key)
        return bucket

    def _charge_intro(self, requester: bytes, source: str, now: float) -> bool:
        """Spend one introduction of the requester's allowance and of its IP's (both or
        neither; an IPv6 source counts by its /64, which one subscriber gets whole)."""
        per_requester = self.config.requester_intros_per_minute
        per_source = self.config.source_intros_per_minute
        mine = self._bucket(self._requester_intros, requester, per_requester / 60.0, per_requester, now)
        ip = self._bucket(self._source_intros, source, per_source / 60.0, per_source, now)
        if not mine.take(now):
            return False
        if not ip.take(now):
            mine.tokens += 1.0  # refunded: neither allowance is spent
            return False
        return True

    def _register(self, peer: bytes, observed: Address, msg: RegisterMsg, now: float) -> list[Delivery]:
        if msg.ttl == 0:
            self._registrations.pop(peer, None)
            self.counters["unregistered"] += 1
            return [Delivery(peer, RegisteredMsg(msg.nonce, 0, observed).record())]
        ttl = max(self.config.min_ttl, min(self.config.max_ttl, msg.ttl))
        reg = self._registrations.get(peer)
        if reg is None:
            if len(self._registrations) >= self.config.max_registrations:
                self.expire(now)
            if len(self._registrations) >= self.config.max_registrations:
                self.counters["register_refused_full"] += 1
                return [Delivery(peer, RegisteredMsg(msg.nonce, 0, observed).record())]
            reg = _Registration(now)
            self._registrations[peer] = reg
        reg.expires = now + ttl
        self.counters["registered"] += 1
        return [Delivery(peer, RegisteredMsg(msg.nonce, ttl, observed).record())]

    def _live_registration(self, fingerprint: bytes, now: float) -> Optional[_Registration]:
        reg = self._registrations.get(fingerprint)
        if reg is not None and reg.expires <= now:
            del self._registrations[fingerprint]
            return None
        return reg

    def _expire_pending(self, now: float) -> None:
        while self._pending:
            entry = next(iter(self._pending.values()))
            if now - entry.created < self.config.request_timeout:
                break
            self._remove_pending(entry)

    def _remove_pending(self, entry: _Pending) -> None:
        del self._pending[entry.request_id]
        self._per_requester[entry.requester] -= 1
        if self._per_requester[entry.requester] <= 0:
            del self._per_requester[entry.requester]

    def _intro_request(self, peer: bytes, observed: Address, msg: IntroRequestMsg, now: float) -> list[Delivery]:
        self._expire_pending(now)
        entry = self._pending.get(msg.request_id)
        if entry is not None:  # a retransmission, or someone else's id (dropped: ids are random)
            if entry.requester != peer or entry.target != msg.target:
                return self._drop("request_id_in_use")
            if entry.reply is not None:
                self.counters["reply_repeated"] += 1
                return [Delivery(peer, record) for record in entry.reply]
            return self._forward(entry, observed, msg.blob, now)
        if msg.target == peer:
            return self._fail(peer, msg.request_id, FailCode.BAD_REQUEST)
        if len(self._pending) >= self.config.max_pending:
            return self._fail(peer, msg.request_id, FailCode.BUSY)
        if self._per_requester[peer] >= self.config.max_pending_per_requester:
            return self._fail(peer, msg.request_id, FailCode.RATE_LIMITED)
        # The slot is taken whatever becomes of the request, so that the requester's limits
        # cannot tell a registered target from an unknown one.
        entry = _Pending(msg.request_id, peer, msg.target, now)
        self._pending[msg.request_id] = entry
        self._per_requester[peer] += 1
        self.counters["intro_requests"] += 1
        return self._forward(entry, observed, msg.blob, now)

    def _forward(self, entry: _Pending, observed: Address, blob: bytes, now: float) -> list[Delivery]:
        """Pass the request on to its target, if registered and under its cap; else silence."""
        if entry.forwards >= self.config.max_forwards:
            return self._drop("intro_forwards_exhausted")
        reg = self._live_registration(entry.target, now)
        if reg is None:
            return self._drop("intro_unknown_target")
        if entry.forwards == 0 and not self._charge_intro(entry.requester, host_key(observed), now):
            return self._drop("intro_requester_capped")
        entry.forwards += 1
        self.counters["intros_forwarded"] += 1
        intro = IntroMsg(entry.request_id, entry.requester, observed, blob)
        return [Delivery(entry.target, record) for record in intro.records(self.config.max_datagram)]

    def _expects_accept(self, peer: bytes, request_id: bytes, now: float) -> bool:
        self._expire_pending(now)
        entry = self._pending.get(request_id)
        return entry is not None and entry.target == peer and entry.reply is None

    def _intro_accept(self, peer: bytes, observed: Address, msg: IntroAcceptMsg, now: float) -> list[Delivery]:
        self._expire_pending(now)
        entry = self._pending.get(msg.request_id)
        if entry is None or entry.target != peer:
            return self._drop("unknown_request")
        if entry.reply is not None:
            return self._drop("duplicate_accept")
        reply = IntroReplyMsg(entry.request_id, observed, msg.blob)
        entry.reply = reply.records(self.config.max_datagram)
        self.counters["intros_answered"] += 1
        return [Delivery(entry.requester, record) for record in entry.reply]


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class Registered:
    """Event: the server answered our REGISTER. ``ttl`` 0 means not registered (refused or
    unregistered); ``observed`` is our address as the server sees it (a srflx candidate)."""

    ttl: int
    observed: Address


@dataclass(frozen=True)
class IntroReceived:
    """Event: ``requester`` wants to reach us. Accept (``accept_intro``) only if it is a
    contact; otherwise do nothing: the requester cannot tell a refusal from an absence."""

    request_id: bytes
    requester: bytes
    requester_observed: Address
    candidates: tuple[Candidate, ...]
    sealed: bool
    timestamp_ms: int


@dataclass(frozen=True)
class IntroAnswered:
    """Event: ``target`` accepted our request; punch to its observed address and candidates."""

    request_id: bytes
    target: bytes
    target_observed: Address
    candidates: tuple[Candidate, ...]
    sealed: bool


@dataclass(frozen=True)
class IntroFailed:
    """Event: the server refused our request (never because of the target)."""

    request_id: bytes
    target: bytes
    code: FailCode


@dataclass(frozen=True)
class IntroTimedOut:
    """Event: no answer in time: the target is unknown, offline, over its cap, or declined."""

    request_id: bytes
    target: bytes


Event = Union[Registered, IntroReceived, IntroAnswered, IntroFailed, IntroTimedOut]


@dataclass
class Output:
    """Records to send on the session with the server, and events for the node."""

    send: list[RawRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class ClientConfig:
    request_timeout: float = 10.0  # the server forgets a request after as long
    retransmit_at: tuple[float, ...] = (1.0, 3.0)  # resend a request at these ages
    register_retry: float = 5.0  # REGISTER unanswered: send again after this
    refused_retry: float = 60.0  # REGISTER refused (server full): try again after this
    max_requests: int = 16
    max_intros: int = 64  # introductions remembered (to answer repeats, not re-report them)
    intro_memory: float = 15.0
    max_clock_skew: Optional[float] = 600.0  # blob timestamps further off are refused; None: no check
    max_datagram: int = wire.MAX_DATAGRAM


@dataclass
class _Request:
    target: bytes
    records: list[RawRecord]
    created: float
    sends: int = 1


@dataclass
class _Seen:
    created: float
    requester: bytes
    answer: Optional[list[RawRecord]] = None  # our INTRO_ACCEPT, resent when the INTRO repeats


class RendezvousClient:
    """Our side of one rendezvous server: registration, our requests, introductions to us.

    ``now`` is wall-clock time (seconds since the epoch): blob timestamps are compared across
    machines. Timers only compare differences, and a clock that steps back makes them due."""

    _SERVER = "server"  # the reassembly peer key: everything comes from the one server session

    def __init__(self, identity: ident.Identity, config: ClientConfig = ClientConfig(),
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.identity = identity
        self.config = config
        self.random_bytes = random_bytes
        self.counters: collections.Counter[str] = collections.Counter()
        self.observed: Optional[Address] = None  # our address as the server last saw it
        self.ttl = 0  # granted by the last REGISTERED (0: not registered)
        self.wanted = True  # False after unregister_record: no more refreshes
        self._granted_at: Optional[float] = None
        self._register_nonce: Optional[bytes] = None  # of the REGISTER awaiting its answer
        self._register_sent: Optional[float] = None
        self._requests: collections.OrderedDict[bytes, _Request] = collections.OrderedDict()
        self._seen: collections.OrderedDict[bytes, _Seen] = collections.OrderedDict()
        buffers = 2 * config.max_requests + config.max_intros
        self._parts = _parts_buffer(max_messages=buffers, max_peer_messages=buffers, timeout=config.request_timeout)

    # -- registration
    def register_record(self, ttl: int, now: float) -> RawRecord:
        """A REGISTER asking for ``ttl`` seconds (DEFAULT_TTL normally; the server clamps it)."""
        if not isinstance(ttl, int) or not 1 <= ttl <= 0xFFFF:
            raise RendezvousError(f"ttl must be 1..65535 seconds, got {ttl!r}")
        self.wanted = True
        return self._register(ttl, now)

    def unregister_record(self, now: float) -> RawRecord:
        """A REGISTER with ttl 0: the server forgets us at once."""
        self.ttl, self._granted_at, self.wanted = 0, None, False
        return self._register(0, now)

    def _register(self, ttl: int, now: float) -> RawRecord:
        self._register_nonce, self._register_sent = self.random_bytes(NONCE_LEN), now
        return RegisterMsg(ttl, self._register_nonce).record()

    def registered(self, now: float) -> bool:
        return self.ttl > 0 and self._granted_at is not None and self._granted_at <= now < self._granted_at + self.ttl

    def next_refresh(self, now: float) -> float:
        """When to send the next REGISTER: now if never sent, half-way through the granted ttl,
        or a retry delay after an unanswered or refused one; never after unregister_record."""
        if not self.wanted:
            return math.inf
        if self._register_nonce is not None and self._register_sent is not None:
            due = self._register_sent + self.config.register_retry
            start = self._register_sent
        elif self._granted_at is None:
            return now
        elif self.ttl > 0:
            due, start = self._granted_at + self.ttl / 2, self._granted_at
        else:
            due, start = self._granted_at + self.config.refused_retry, self._granted_at
        return now if now < start else due

    # -- introductions
    def request_intro(self, target: bytes, target_bundle: Optional[ident.Bundle],
                      candidates: Sequence[Candidate], now: float) -> tuple[bytes, list[RawRecord]]:
        """Ask the server to introduce us to ``target``: (request id, records to send). Our
        candidates are sealed to ``target_bundle`` if given, else sent in clear."""
        target = check_bytes(target, "target fingerprint", RendezvousError, FP_LEN)
        if target == self.identity.fingerprint:
            raise RendezvousError("cannot request an introduction to oneself")
        if target_bundle is not None and target_bundle.fingerprint() != target:
            raise RendezvousError("the bundle given is not the target's")
        if len(self._requests) >= self.config.max_requests:
            raise RendezvousError(f"already {len(self._requests)} introduction requests pending")
        request_id = self.random_bytes(REQUEST_ID_LEN)
        content = BlobContent(Role.REQUEST, self.identity.fingerprint, target, int(now * 1000), tuple(candidates))
        blob = seal_blob(content, request_id, target_bundle)
        records = IntroRequestMsg(request_id, target, blob).records(self.config.max_datagram)
        self._requests[request_id] = _Request(target, records, now)
        return request_id, list(records)

    def accept_intro(self, intro: IntroReceived, candidates: Sequence[Candidate],
                     requester_bundle: Optional[ident.Bundle], now: float) -> list[RawRecord]:
        """Our INTRO_ACCEPT for ``intro``: our candidates, sealed to ``requester_bundle`` if
        given. Only for a requester the node accepts (a contact)."""
        seen = self._seen.get(intro.request_id)
        if seen is None or seen.requester != intro.requester:
            raise RendezvousError("unknown or expired introduction")
        if requester_bundle is not None and requester_bundle.fingerprint() != intro.requester:
            raise RendezvousError("the bundle given is not the requester's")
        content = BlobContent(Role.ACCEPT, intro.requester, self.identity.fingerprint, int(now * 1000),
                              tuple(candidates))
        blob = seal_blob(content, intro.request_id, requester_bundle)
        seen.answer = IntroAcceptMsg(intro.request_id, blob).records(self.config.max_datagram)
        return list(seen.answer)

    # -- input
    def on_record(self, rtype: int, body: bytes, now: float) -> Output:
        """Handle one rendezvous record from the server's session; never raises on bad input."""
        body = bytes(body)
        try:
            if rtype == RecordType.REGISTERED:
                return self._on_registered(RegisteredMsg.decode(body), now)
            if rtype == RecordType.INTRO_FAILED:
                return self._on_failed(IntroFailedMsg.decode(body))
            if rtype == RecordType.INTRO_REPLY and body[:REQUEST_ID_LEN] not in self._requests:
                return self._drop("unknown_request")
            if rtype in (RecordType.INTRO, RecordType.INTRO_REPLY):
                message = _take(body, self._parts, self._SERVER, rtype, now)
                if message is None:
                    return Output()
                if isinstance(message, IntroMsg):
                    return self._on_intro(message, now)
                assert isinstance(message, IntroReplyMsg)
                return self._on_reply(message, now)
        except RendezvousError:
            return self._drop("malformed")
        return self._drop("unexpected_type")

    def tick(self, now: float) -> Output:
        """Retransmit requests that are due; report those that timed out; forget old intros."""
        out = Output()
        schedule = self.config.retransmit_at
        for request_id, request in list(self._requests.items()):
            age = now - request.created
            if age >= self.config.request_timeout or age < 0:
                del self._requests[request_id]
                out.events.append(IntroTimedOut(request_id, request.target))
            elif request.sends <= len(schedule) and age >= schedule[request.sends - 1]:
                request.sends += 1
                self.counters["retransmitted"] += 1
                out.send.extend(request.records)
        while self._seen:
            request_id, seen = next(iter(self._seen.items()))
            if 0 <= now - seen.created < self.config.intro_memory:
                break
            del self._seen[request_id]
        self._parts.expire(now)
        return out

    # -- internals
    def _drop(self, reason: str) -> Output:
        self.counters["dropped_" + reason] += 1
        return Output()

    def _on_registered(self, msg: RegisteredMsg, now: float) -> Output:
        if self._register_nonce is None or msg.nonce != self._register_nonce:
            return self._drop("stale_registered")
        self._register_nonce = self._register_sent = None
        self.ttl, self._granted_at, self.observed = msg.ttl, now, msg.observed
        return Output(events=[Registered(msg.ttl, msg.observed)])

    def _on_failed(self, msg: IntroFailedMsg) -> Output:
        request = self._requests.pop(msg.request_id, None)
        if request is None:
            return self._drop("unknown_request")
        return Output(events=[IntroFailed(msg.request_id, request.target, msg.code)])

    def _on_intro(self, msg: IntroMsg, now: float) -> Output:
        own = self.identity.fingerprint
        if msg.requester == own:
            return self._drop("intro_from_self")
        seen = self._seen.get(msg.request_id)
        if seen is not None:  # a repeat: answer again if we accepted, never report it twice
            if seen.requester != msg.requester:
                return self._drop("request_id_reused")
            self.counters["intro_repeated"] += 1
            return Output(send=list(seen.answer or []))
        try:
            content, sealed = open_blob(msg.blob, Role.REQUEST, msg.request_id, msg.requester, own,
                                        self.identity.kem_seed)
        except RendezvousError:
            return self._drop("bad_blob")
        if not self._fresh(content, now):
            return self._drop("stale_blob")
        if len(self._seen) >= self.config.max_intros:
            self._seen.popitem(last=False)
        self._seen[msg.request_id] = _Seen(now, msg.requester)
        return Output(events=[IntroReceived(msg.request_id, msg.requester, msg.requester_observed,
                                            content.candidates, sealed, content.timestamp_ms)])

    def _on_reply(self, msg: IntroReplyMsg, now: float) -> Output:
        request = self._requests.get(msg.request_id)
        if request is None:
            return self._drop("unknown_request")
        try:
            content, sealed = open_blob(msg.blob, Role.ACCEPT, msg.request_id, self.identity.fingerprint,
                                        request.target, self.identity.kem_seed)
        except RendezvousError:
            return self._drop("bad_blob")
        if not self._fresh(content, now):
            return self._drop("stale_blob")
        del self._requests[msg.request_id]
        return Output(events=[IntroAnswered(msg.request_id, request.target, msg.target_observed,
                                            content.candidates, sealed)])

    def _fresh(self, content: BlobContent, now: float) -> bool:
        skew = self.config.max_clock_skew
        return skew is None or abs(content.timestamp_ms / 1000.0 - now) <= skew


# ---------------------------------------------------------------- configuration


class ServerSpec(NamedTuple):
    """A rendezvous server from the configuration: ``host:port`` or ``host:port#ID``."""

    host: str
    port: int
    fingerprint: Optional[bytes]  # with #ID: the handshake's expected fingerprint


def parse_server(text: str) -> ServerSpec:
    """Parse ``host:port`` or ``host:port#ID`` (ID as ``format_id`` writes it)."""
    if not isinstance(text, str):
        raise RendezvousError("a rendezvous server is text: host:port or host:port#ID")
    address, _, id_text = text.strip().partition("#")
    fingerprint = None
    if id_text.strip():
        try:
            fingerprint = ident.parse_id(id_text)
        except ident.IdentityError as exc:
            raise RendezvousError(f"invalid rendezvous server ID in {text!r}: {exc}") from None
    elif "#" in text:
        raise RendezvousError(f"empty ID after '#' in {text!r}")
    host, _, port_text = address.strip().rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise RendezvousError(f"expected host:port or host:port#ID, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return ServerSpec(host, int(port_text), fingerprint)
