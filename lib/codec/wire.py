"""ChatP2P's UDP wire formats: packet headers, handshake fragments, data-frame headers, records.

Pure codecs and one bounded state object (``Reassembler``); no I/O, no module-level mutable
state. Every decoder raises ``WireError`` (and nothing else) on malformed input, so the I/O
layer can count and drop hostile datagrams with one ``except``. Byte layouts: docs/PROTOCOL.md.

Every ChatP2P datagram starts with ``0xC0 | version`` (0xC1 for v1), a packet type byte and an
8-byte connection id, so the one UDP socket can be shared with STUN (first byte 0x00-0x03) and
TURN ChannelData (0x40-0x4F), RFC 7983 style.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence, Union

from ..errors import Invalid
from .fields import check_bytes
from ..util import Address

VERSION = 1
VERSION_BYTE = 0xC0 | VERSION  # 0xC1
MAGIC_MASK = 0xF0  # 0xC0-0xCF: reserved for ChatP2P, low nibble = version
MAGIC = 0xC0

MAX_DATAGRAM = 1200  # default ceiling: NATs drop IP fragments, 1200 fits every sane path
MIN_DATAGRAM = 576  # smallest max_datagram the codecs accept (the handshake needs room)
MAX_UDP_PAYLOAD = 65507  # IPv4 ceiling, for probed paths

CONN_ID_LEN = 8
NONCE_LEN = 16
COOKIE_LEN = 16
CONFIRM_LEN = 32
AEAD_TAG_LEN = 16

PREFIX = struct.Struct(">BB8s")  # version byte, packet type, connection id
PREFIX_LEN = PREFIX.size  # 10

HELLO_LEN = 64  # minimum HELLO size: the COOKIE reply (42 bytes) is never larger than the request
COOKIE_PACKET_LEN = PREFIX_LEN + NONCE_LEN + COOKIE_LEN  # 42
DONE_LEN = PREFIX_LEN + CONFIRM_LEN  # 42

FRAGMENT_HEADER = struct.Struct(">BBH")  # index, count, total message length
MAX_FRAGMENTS = 255

DATA_HEADER = struct.Struct(">BB8sBQ")  # version byte, type, conn id, key phase, counter
DATA_HEADER_LEN = DATA_HEADER.size  # 19
DATA_OVERHEAD = DATA_HEADER_LEN + AEAD_TAG_LEN  # 35
KEY_PHASES = 256  # the key phase byte is the key generation mod 256
MAX_COUNTER = (1 << 64) - 1


class WireError(Invalid):
    """Bytes that are not a well-formed ChatP2P datagram or record; the message says why."""


class ReassemblyError(WireError):
    """A fragment the reassembler refuses: over a limit, or inconsistent with its message."""


class Kind(enum.Enum):
    """Which protocol a datagram on the shared UDP socket belongs to (RFC 7983 style)."""

    STUN = "stun"
    TURN_CHANNEL = "turn-channel"
    CHATP2P = "chatp2p"
    UNKNOWN = "unknown"


class PacketType(enum.IntEnum):
    """Second byte of every ChatP2P datagram."""

    HELLO = 0x01  # I -> R: ask for a cookie
    COOKIE = 0x02  # R -> I: stateless cookie
    INIT = 0x03  # I -> R: M1 fragment (carries the cookie)
    RESP = 0x04  # R -> I: M2 fragment
    AUTH = 0x05  # I -> R: M3 fragment
    DONE = 0x06  # R -> I: M4 key confirmation
    DATA = 0x10  # either way: encrypted records


HANDSHAKE_FRAGMENT_TYPES = frozenset({PacketType.INIT, PacketType.RESP, PacketType.AUTH})

def check_max_datagram(max_datagram: int) -> int:
    """``max_datagram`` if usable (MIN_DATAGRAM..MAX_UDP_PAYLOAD), else ValueError: a caller bug."""
    if not isinstance(max_datagram, int) or not MIN_DATAGRAM <= max_datagram <= MAX_UDP_PAYLOAD:
        raise ValueError(f"max_datagram must be an int in {MIN_DATAGRAM}..{MAX_UDP_PAYLOAD}, got {max_datagram!r}")
    return max_datagram


def address_bytes(address: Union[Address, tuple[bytes, int]]) -> bytes:
    """A canonical byte form of ``(host, port)`` for MACs: u8 host length, host, u16 port.
    The host may also be given packed (bytes)."""
    try:
        host, port = address
    except (TypeError, ValueError):
        raise WireError("an address is a (host, port) pair") from None
    host_b = host.encode("utf-8") if isinstance(host, str) else check_bytes(host, "host", WireError)
    if len(host_b) > 255 or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise WireError(f"invalid address {address!r}")
    return bytes([len(host_b)]) + host_b + port.to_bytes(2, "big")


# ---------------------------------------------------------------- demultiplexing and prefix


def classify(datagram: bytes) -> Kind:
    """The protocol of a datagram, from its first byte (never raises)."""
    if not datagram:
        return Kind.UNKNOWN
    first = datagram[0]
    if first <= 0x03:
        return Kind.STUN
    if 0x40 <= first <= 0x4F:
        return Kind.TURN_CHANNEL
    if first & MAGIC_MASK == MAGIC:
        return Kind.CHATP2P
    return Kind.UNKNOWN


def is_chatp2p(datagram: bytes) -> bool:
    """`classify(datagram) == Kind.CHATP2P`, in one test of the first byte: it is asked of
    every datagram received (a third of classify's cost, which returns an enum member)."""
    return len(datagram) > 0 and datagram[0] & MAGIC_MASK == MAGIC


def parse_prefix(datagram: bytes) -> tuple[PacketType, bytes]:
    """(packet type, connection id) of a ChatP2P datagram, for routing.

    The connection id is the initiator's for HELLO, COOKIE, INIT, RESP and DONE, the responder's
    for AUTH and the receiver's for DATA: in every case the key of the table that must handle it."""
    data = check_bytes(datagram, "datagram", WireError)
    if len(data) < PREFIX_LEN:
        raise WireError(f"datagram too short ({len(data)} bytes)")
    version_byte, ptype, conn_id = PREFIX.unpack_from(data)
    if version_byte & MAGIC_MASK != MAGIC:
        raise WireError(f"not a ChatP2P datagram (first byte {version_byte:#04x})")
    if version_byte != VERSION_BYTE:
        raise WireError(f"unsupported ChatP2P version {version_byte & 0x0F}")
    try:
        return PacketType(ptype), conn_id
    except ValueError:
        raise WireError(f"unknown packet type {ptype:#04x}") from None


def _expect(datagram: bytes, ptype: PacketType) -> tuple[bytes, bytes]:
    data = check_bytes(datagram, "datagram", WireError)
    got, conn_id = parse_prefix(data)
    if got != ptype:
        raise WireError(f"expected a {ptype.name} packet, got {got.name}")
    return data, conn_id


# ---------------------------------------------------------------- HELLO, COOKIE, DONE


@dataclass(frozen=True)
class Hello:
    """I -> R: the initiator's connection id and nonce, zero-padded to at least HELLO_LEN."""

    conn_id: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        check_bytes(self.conn_id, "connection id", WireError, CONN_ID_LEN)
        check_bytes(self.nonce, "nonce", WireError, NONCE_LEN)

    def encode(self, size: int = HELLO_LEN) -> bytes:
        if not HELLO_LEN <= size <= MAX_UDP_PAYLOAD:
            raise ValueError(f"a HELLO is {HELLO_LEN}..{MAX_UDP_PAYLOAD} bytes")
        body = PREFIX.pack(VERSION_BYTE, PacketType.HELLO, self.conn_id) + self.nonce
        return body + bytes(size - len(body))

    @staticmethod
    def decode(datagram: bytes) -> "Hello":
        """Padding content is ignored; a HELLO shorter than HELLO_LEN is refused (amplification)."""
        data, conn_id = _expect(datagram, PacketType.HELLO)
        if len(data) < HELLO_LEN:
            raise WireError(f"HELLO too short ({len(data)} bytes, minimum {HELLO_LEN})")
        return Hello(conn_id, data[PREFIX_LEN : PREFIX_LEN + NONCE_LEN])


@dataclass(frozen=True)
class CookiePacket:
    """R -> I: the initiator's connection id and nonce echoed, and the cookie."""

    conn_id: bytes
    nonce: bytes
    cookie: bytes

    def __post_init__(self) -> None:
        check_bytes(self.conn_id, "connection id", WireError, CONN_ID_LEN)
        check_bytes(self.nonce, "nonce", WireError, NONCE_LEN)
        check_bytes(self.cookie, "cookie", WireError, COOKIE_LEN)

    def encode(self) -> bytes:
        return PREFIX.pack(VERSION_BYTE, PacketType.COOKIE, self.conn_id) + self.nonce + self.cookie

    @staticmethod
    def decode(datagram: bytes) -> "CookiePacket":
        data, conn_id = _expect(datagram, PacketType.COOKIE)
        if len(data) != COOKIE_PACKET_LEN:
            raise WireError(f"COOKIE must be {COOKIE_PACKET_LEN} bytes, got {len(data)}")
        nonce = data[PREFIX_LEN : PREFIX_LEN + NONCE_LEN]
        return CookiePacket(conn_id, nonce, data[PREFIX_LEN + NONCE_LEN :])


@dataclass(frozen=True)
class Done:
    """R -> I: key confirmation (a value derived from the final handshake secret)."""

    conn_id: bytes
    confirm: bytes

    def __post_init__(self) -> None:
        check_bytes(self.conn_id, "connection id", WireError, CONN_ID_LEN)
        check_bytes(self.confirm, "confirmation", WireError, CONFIRM_LEN)

    def encode(self) -> bytes:
        return PREFIX.pack(VERSION_BYTE, PacketType.DONE, self.conn_id) + self.confirm

    @staticmethod
    def decode(datagram: bytes) -> "Done":
        data, conn_id = _expect(datagram, PacketType.DONE)
        if len(data) != DONE_LEN:
            raise WireError(f"DONE must be {DONE_LEN} bytes, got {len(data)}")
        return Done(conn_id, data[PREFIX_LEN:])


# ---------------------------------------------------------------- handshake fragments


@dataclass(frozen=True)
class Fragment:
    """One piece of a handshake message: ``data`` is piece ``index`` of ``count``."""

    index: int
    count: int
    total: int  # length of the whole message
    data: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_FRAGMENTS:
            raise WireError(f"fragment count {self.count} out of range 1..{MAX_FRAGMENTS}")
        if not 0 <= self.index < self.count:
            raise WireError(f"fragment index {self.index} out of range (count {self.count})")
        if not 1 <= self.total <= 0xFFFF:
            raise WireError(f"message length {self.total} out of range 1..65535")
        if not self.data or len(self.data) > self.total:
            raise WireError(f"fragment of {len(self.data)} bytes for a {self.total}-byte message")


@dataclass(frozen=True)
class HandshakeFragment:
    """An INIT, RESP or AUTH datagram. ``cookie`` is present on INIT fragments only."""

    ptype: PacketType
    conn_id: bytes
    fragment: Fragment
    cookie: bytes = b""

    def __post_init__(self) -> None:
        if self.ptype not in HANDSHAKE_FRAGMENT_TYPES:
            raise WireError(f"{self.ptype!r} is not a fragmented handshake message")
        check_bytes(self.conn_id, "connection id", WireError, CONN_ID_LEN)
        check_bytes(self.cookie, "cookie", WireError, COOKIE_LEN if self.ptype == PacketType.INIT else 0)

    def encode(self) -> bytes:
        frag = self.fragment
        return (
            PREFIX.pack(VERSION_BYTE, self.ptype, self.conn_id)
            + self.cookie
            + FRAGMENT_HEADER.pack(frag.index, frag.count, frag.total)
            + frag.data
        )

    @staticmethod
    def decode(datagram: bytes) -> "HandshakeFragment":
        data = check_bytes(datagram, "datagram", WireError)
        ptype, conn_id = parse_prefix(data)
        if ptype not in HANDSHAKE_FRAGMENT_TYPES:
            raise WireError(f"{ptype.name} is not a fragmented handshake message")
        pos = PREFIX_LEN
        cookie = b""
        if ptype == PacketType.INIT:
            cookie = data[pos : pos + COOKIE_LEN]
            pos += COOKIE_LEN
        if len(data) < pos + FRAGMENT_HEADER.size + 1:
            raise WireError(f"{ptype.name} fragment too short ({len(data)} bytes)")
        index, count, total = FRAGMENT_HEADER.unpack_from(data, pos)
        pos += FRAGMENT_HEADER.size
        return HandshakeFragment(ptype, conn_id, Fragment(index, count, total, data[pos:]), cookie)


def fragment_overhead(ptype: PacketType) -> int:
    """Header bytes of one fragment datagram of type ``ptype``."""
    cookie = COOKIE_LEN if ptype == PacketType.INIT else 0
    return PREFIX_LEN + cookie + FRAGMENT_HEADER.size


def fragment_message(
    ptype: PacketType, conn_id: bytes, message: bytes, max_datagram: int = MAX_DATAGRAM, cookie: bytes = b""
) -> list[bytes]:
    """Split ``message`` into as few datagrams of at most ``max_datagram`` bytes as possible,
    of near-equal sizes (so no tiny trailing datagram stands out)."""
    check_max_datagram(max_datagram)
    message = check_bytes(message, "message", WireError)
    room = max_datagram - fragment_overhead(ptype)
    count = max(1, -(-len(message) // room))
    if count > MAX_FRAGMENTS or not 1 <= len(message) <= 0xFFFF:
        raise ValueError(f"a {len(message)}-byte message cannot be fragmented into {max_datagram}-byte datagrams")
    base, extra = divmod(len(message), count)
    out = []
    pos = 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        frag = Fragment(index, count, len(message), message[pos : pos + size])
        out.append(HandshakeFragment(ptype, conn_id, frag, cookie).encode())
        pos += size
    return out


class _Partial:
    """The fragments received so far of one message."""

    __slots__ = ("peer", "count", "total", "parts", "received", "created")

    def __init__(self, peer: Hashable, count: int, total: int, created: float) -> None:
        self.peer = peer
        self.count = count
        self.total = total
        self.parts: dict[int, bytes] = {}
        self.received = 0
        self.created = created


class Reassembler:
    """Bounded reassembly of fragmented messages, keyed by (peer, message key).

    Every bound is checked before anything is stored: fragments per message, bytes per message,
    bytes and messages per peer, messages overall. Memory is accounted by each message's declared
    total, reserved on its first fragment. Buffers older than ``timeout`` (on the caller's clock)
    are dropped. Duplicate fragments are ignored (the first copy wins), so replays are idempotent.
    A fragment that disagrees on count or length with a lone earlier fragment replaces it; one
    that disagrees with two or more agreeing fragments is refused.
    """

    def __init__(
        self,
        *,
        max_fragments: int = 32,
        max_message_bytes: int = 16384,
        max_peer_bytes: int = 32768,
        max_peer_messages: int = 4,
        max_messages: int = 128,
        timeout: float = 10.0,
    ) -> None:
        self.max_fragments = max_fragments
        self.max_message_bytes = max_message_bytes
        self.max_peer_bytes = max_peer_bytes
        self.max_peer_messages = max_peer_messages
        self.max_messages = max_messages
        self.timeout = timeout
        self._partials: OrderedDict[tuple[Hashable, Hashable], _Partial] = OrderedDict()  # oldest first
        self._peer_bytes: dict[Hashable, int] = {}
        self._peer_messages: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._partials)

    def __contains__(self, item: tuple[Hashable, Hashable]) -> bool:
        return item in self._partials

    def buffered_bytes(self, peer: Optional[Hashable] = None) -> int:
        """Bytes reserved, for one peer or overall."""
        if peer is None:
            return sum(self._peer_bytes.values())
        return self._peer_bytes.get(peer, 0)

    def add(self, peer: Hashable, key: Hashable, fragment: Fragment, now: float) -> Optional[bytes]:
        """Store ``fragment``; the whole message once its last missing fragment arrived, else None.

        Raises ReassemblyError (nothing stored) if a limit is hit or the fragment contradicts the
        fragments already received."""
        self.expire(now)
        ident = (peer, key)
        partial = self._partials.get(ident)
        if partial is None:
            partial = self._allocate(peer, ident, fragment, now)
        elif fragment.count != partial.count or fragment.total != partial.total:
            if len(partial.parts) > 1:
                # Two or more fragments agree: a reassembly in progress is never evicted.
                raise ReassemblyError("fragment disagrees with earlier fragments on count or length")
            # A lone fragment proves nothing (anyone on the path can inject one first): the
            # newcomer replaces it, so a forged first fragment cannot block the real message.
            self._remove(ident)
            partial = self._allocate(peer, ident, fragment, now)
        if fragment.index in partial.parts:
            return None  # duplicate
        if partial.received + len(fragment.data) > partial.total:
            raise ReassemblyError("fragments exceed the declared message length")
        partial.parts[fragment.index] = fragment.data
        partial.received += len(fragment.data)
        if len(partial.parts) < partial.count:
            return None
        self._remove(ident)
        if partial.received != partial.total:
            raise ReassemblyError("reassembled message is shorter than declared")
        return b"".join(partial.parts[i] for i in range(partial.count))

    def _allocate(self, peer: Hashable, ident: tuple[Hashable, Hashable], fragment: Fragment, now: float) -> _Partial:
        if fragment.count > self.max_fragments:
            raise ReassemblyError(f"{fragment.count} fragments exceed the limit of {self.max_fragments}")
        if fragment.total > self.max_message_bytes:
            raise ReassemblyError(f"{fragment.total}-byte message exceeds the limit of {self.max_message_bytes}")
        if len(self._partials) >= self.max_messages:
            raise ReassemblyError("too many messages being reassembled")
        if self._peer_messages.get(peer, 0) >= self.max_peer_messages:
            raise ReassemblyError("too many messages being reassembled for this peer")
        if self._peer_bytes.get(peer, 0) + fragment.total > self.max_peer_bytes:
            raise ReassemblyError("too many bytes being reassembled for this peer")
        partial = _Partial(peer, fragment.count, fragment.total, now)
        self._partials[ident] = partial
        self._peer_messages[peer] = self._peer_messages.get(peer, 0) + 1
        self._peer_bytes[peer] = self._peer_bytes.get(peer, 0) + fragment.total
        return partial

    def _remove(self, ident: tuple[Hashable, Hashable]) -> None:
        partial = self._partials.pop(ident)
        peer = partial.peer
        self._peer_messages[peer] -= 1
        self._peer_bytes[peer] -= partial.total
        if not self._peer_messages[peer]:
            del self._peer_messages[peer]
            del self._peer_bytes[peer]

    def discard(self, peer: Hashable, key: Hashable) -> None:
        """Forget a message in progress (e.g. it reassembled into garbage: wait for a resend)."""
        if (peer, key) in self._partials:
            self._remove((peer, key))

    def expire(self, now: float) -> int:
        """Drop buffers older than the timeout; how many were dropped."""
        dropped = 0
        while self._partials:
            ident, partial = next(iter(self._partials.items()))
            if now - partial.created < self.timeout:
                break
            self._remove(ident)
            dropped += 1
        return dropped


# ---------------------------------------------------------------- data frame header


@dataclass(frozen=True)
class DataHeader:
    """The clear header of a DATA frame, authenticated as the AEAD's associated data."""

    conn_id: bytes  # the receiver's
    key_phase: int  # the sender's key generation mod 256
    counter: int  # 0..2^64-1, never reused by a sender

    def __post_init__(self) -> None:
        check_bytes(self.conn_id, "connection id", WireError, CONN_ID_LEN)
        if not isinstance(self.key_phase, int) or not 0 <= self.key_phase < KEY_PHASES:
            raise WireError(f"key phase must be 0..{KEY_PHASES - 1}, got {self.key_phase!r}")
        if not isinstance(self.counter, int) or not 0 <= self.counter <= MAX_COUNTER:
            raise WireError(f"counter out of range: {self.counter!r}")

    def encode(self) -> bytes:
        return DATA_HEADER.pack(VERSION_BYTE, PacketType.DATA, self.conn_id, self.key_phase, self.counter)

    @staticmethod
    def decode(datagram: bytes) -> "DataHeader":
        """The header of a DATA datagram; the datagram must also have room for the AEAD tag."""
        data, _ = _expect(datagram, PacketType.DATA)
        if len(data) < DATA_OVERHEAD:
            raise WireError(f"DATA frame too short ({len(data)} bytes)")
        _, _, conn_id, phase, counter = DATA_HEADER.unpack_from(data)
        return DataHeader(conn_id, phase, counter)


def payload_capacity(max_datagram: int = MAX_DATAGRAM) -> int:
    """Plaintext bytes (records) one DATA datagram of ``max_datagram`` bytes can carry."""
    return check_max_datagram(max_datagram) - DATA_OVERHEAD


# ---------------------------------------------------------------- records


class RecordType(enum.IntEnum):
    """Type byte of a record inside a DATA frame's plaintext."""

    PADDING = 0x00  # bare zero bytes, no length: any run of 0x00 is padding
    PING = 0x01
    PONG = 0x02
    MSG = 0x03
    ACK = 0x04
    CLOSE = 0x05
    PATH_CHALLENGE = 0x06
    PATH_RESPONSE = 0x07
    GROUP = 0x08  # a fragment of a group frame (PROTOCOL §13.8)


# The rest of the type space (PROTOCOL §6), without overlaps: 0x08-0x0F and 0x18-0x1F for
# messaging and control, 0x10-0x17 for the rendezvous (net/rendezvous.py), 0x20-0x3F for the
# file protocol (codec/filecodec.py), 0x40-0xFF reserved. A receiver returns these as RawRecord
# and ignores what it does not know.
RENDEZVOUS_RECORD_TYPES = range(0x10, 0x18)
FILE_RECORD_TYPES = range(0x20, 0x40)
_RECORD_TYPE_VALUES = frozenset(int(t) for t in RecordType)  # built once: RawRecord is on the file hot path

RECORD_HEADER = struct.Struct(">BH")  # type, body length
RECORD_HEADER_LEN = RECORD_HEADER.size
MESSAGE_ID_LEN = 16
MSG_HEADER = struct.Struct(">16sQQII")  # message id, seq, created (ms), total, offset
GROUP_HEADER = struct.Struct(">III")  # frame id, total length, offset
MAX_ACK_ITEMS = 255
MAX_CLOSE_REASON = 255
PATH_TOKEN_LEN = 8
_U32 = 0xFFFFFFFF
_U64 = MAX_COUNTER


def _check_int(value: object, limit: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise WireError(f"{what} out of range: {value!r}")
    return value


def _check_span(total: object, offset: object, data: object, piece: str, whole: str) -> None:
    """A piece (MSG segment, GROUP fragment) of a whole of `total` bytes: bytes `offset`..
    `offset+len(data)`, at least one (an empty piece would fill nothing and never complete)."""
    _check_int(total, _U32, f"{whole} length")
    _check_int(offset, _U32, f"{piece} offset")
    check_bytes(data, f"{piece} data", WireError)
    if not data:
        raise WireError(f"empty {piece}")
    if offset + len(data) > total:  # type: ignore[operator]
        raise WireError(f"{piece} extends past the {whole} length")


@dataclass(frozen=True)
class Padding:
    """``length`` zero bytes: fills a datagram (MTU probes, length hiding)."""

    length: int

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 1:
            raise WireError(f"padding length must be >= 1, got {self.length!r}")


@dataclass(frozen=True)
class Ping:
    """Keepalive; ``timestamp`` is the sender's clock (µs, opaque to the peer), echoed in PONG."""

    timestamp: int

    def __post_init__(self) -> None:
        _check_int(self.timestamp, _U64, "ping timestamp")


@dataclass(frozen=True)
class Pong:
    """Answer to a PING: ``echo`` is the PING's timestamp, so the sender measures the RTT."""

    echo: int

    def __post_init__(self) -> None:
        _check_int(self.echo, _U64, "pong echo")


@dataclass(frozen=True)
class Msg:
    """A segment of a chat message: bytes ``offset``..``offset+len(data)`` of ``total``."""

    message_id: bytes  # 16 bytes
    seq: int  # the sender's sequence number for this contact (u64)
    created: int  # ms since the Unix epoch, on the sender's clock
    total: int  # the whole message's length in bytes (u32)
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        check_bytes(self.message_id, "message id", WireError, MESSAGE_ID_LEN)
        _check_int(self.seq, _U64, "message seq")
        _check_int(self.created, _U64, "message timestamp")
        _check_span(self.total, self.offset, self.data, "message segment", "message")


@dataclass(frozen=True)
class GroupFragment:
    """Bytes ``offset``..``offset+len(data)`` of group frame ``frame_id`` (``total`` bytes long).
    Unacknowledged: a frame with a lost fragment is lost (anti-entropy sends it again)."""

    frame_id: int  # the sender's (u32), unique among its frames in flight on this session
    total: int  # the whole frame's length in bytes (u32)
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _check_int(self.frame_id, _U32, "group frame id")
        _check_span(self.total, self.offset, self.data, "group fragment", "frame")


@dataclass(frozen=True)
class Ack:
    """Acknowledgements: complete messages as inclusive seq ranges, and received byte ranges
    (seq, offset, length) of messages still incomplete."""

    ranges: tuple[tuple[int, int], ...] = ()
    segments: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.ranges) > MAX_ACK_ITEMS or len(self.segments) > MAX_ACK_ITEMS:
            raise WireError(f"an ACK holds at most {MAX_ACK_ITEMS} ranges and segments")
        for first, last in self.ranges:
            _check_int(first, _U64, "ack first")
            _check_int(last, _U64, "ack last")
            if first > last:
                raise WireError(f"ack range {first}..{last} is reversed")
        for seq, offset, length in self.segments:
            _check_int(seq, _U64, "ack seq")
            _check_int(offset, _U32, "ack offset")
            _check_int(length, _U32, "ack length")


@dataclass(frozen=True)
class Close:
    """The sender ends the session: a code and a short UTF-8 reason (for logs)."""

    code: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        _check_int(self.code, 0xFFFF, "close code")
        if not isinstance(self.reason, str) or len(self.reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise WireError(f"close reason must be text of at most {MAX_CLOSE_REASON} UTF-8 bytes")


@dataclass(frozen=True)
class RawRecord:
    """A record of a reserved type (file protocol, later versions): carried, not interpreted."""

    rtype: int
    body: bytes = field(default=b"")

    def __post_init__(self) -> None:
        _check_int(self.rtype, 0xFF, "record type")
        if self.rtype in _RECORD_TYPE_VALUES:
            raise WireError(f"record type {self.rtype:#04x} has its own class")
        if not isinstance(self.body, (bytes, bytearray, memoryview)):  # no copy of a 64 KiB body
            raise WireError(f"record body must be bytes, not {type(self.body).__name__}")
        if len(self.body) > 0xFFFF:
            raise WireError("record body too long")


@dataclass(frozen=True)
class PathChallenge:
    """Does the peer receive at the address this comes from? 8 random bytes to echo."""

    data: bytes

    def __post_init__(self) -> None:
        check_bytes(self.data, "path challenge", WireError, PATH_TOKEN_LEN)


@dataclass(frozen=True)
class PathResponse:
    """The echo of a PATH_CHALLENGE, sent to the address the challenge came from."""

    data: bytes

    def __post_init__(self) -> None:
        check_bytes(self.data, "path response", WireError, PATH_TOKEN_LEN)


Record = Union[Padding, Ping, Pong, Msg, Ack, Close, PathChallenge, PathResponse, GroupFragment, RawRecord]


def _body(record: Record) -> tuple[int, bytes]:
    """(type, body) of a non-padding record."""
    if isinstance(record, Ping):
        return RecordType.PING, record.timestamp.to_bytes(8, "big")
    if isinstance(record, Pong):
        return RecordType.PONG, record.echo.to_bytes(8, "big")
    if isinstance(record, Msg):
        head = MSG_HEADER.pack(record.message_id, record.seq, record.created, record.total, record.offset)
        return RecordType.MSG, head + bytes(record.data)
    if isinstance(record, GroupFragment):
        return RecordType.GROUP, GROUP_HEADER.pack(record.frame_id, record.total, record.offset) + bytes(record.data)
    if isinstance(record, Ack):
        parts = [bytes([len(record.ranges)])]
        parts += [struct.pack(">QQ", first, last) for first, last in record.ranges]
        parts.append(bytes([len(record.segments)]))
        parts += [struct.pack(">QII", seq, off, length) for seq, off, length in record.segments]
        return RecordType.ACK, b"".join(parts)
    if isinstance(record, Close):
        reason = record.reason.encode("utf-8")
        return RecordType.CLOSE, struct.pack(">HB", record.code, len(reason)) + reason
    if isinstance(record, PathChallenge):
        return RecordType.PATH_CHALLENGE, bytes(record.data)
    if isinstance(record, PathResponse):
        return RecordType.PATH_RESPONSE, bytes(record.data)
    if isinstance(record, RawRecord):
        return record.rtype, bytes(record.body)
    raise WireError(f"not a record: {type(record).__name__}")


def encode_record(record: Record) -> bytes:
    """One record: ``type u8, length u16, body``; PADDING is ``length`` bare zero bytes."""
    if isinstance(record, Padding):
        return bytes(record.length)
    rtype, body = _body(record)
    if len(body) > 0xFFFF:
        raise WireError("record body too long")
    return RECORD_HEADER.pack(rtype, len(body)) + body


def record_size(record: Record) -> int:
    """Encoded size of ``record`` in bytes."""
    return len(encode_record(record))


def encode_records(records: Sequence[Record]) -> bytes:
    return b"".join(encode_record(r) for r in records)


def _decode_body(rtype: int, body: bytes) -> Record:
    if rtype == RecordType.PING or rtype == RecordType.PONG:
        if len(body) != 8:
            raise WireError(f"{RecordType(rtype).name} body must be 8 bytes, got {len(body)}")
        value = int.from_bytes(body, "big")
        return Ping(value) if rtype == RecordType.PING else Pong(value)
    if rtype == RecordType.MSG:
        if len(body) < MSG_HEADER.size:
            raise WireError(f"MSG body too short ({len(body)} bytes)")
        mid, seq, created, total, offset = MSG_HEADER.unpack_from(body)
        return Msg(mid, seq, created, total, offset, body[MSG_HEADER.size :])
    if rtype == RecordType.GROUP:
        if len(body) < GROUP_HEADER.size:
            raise WireError(f"GROUP body too short ({len(body)} bytes)")
        frame_id, total, offset = GROUP_HEADER.unpack_from(body)
        return GroupFragment(frame_id, total, offset, body[GROUP_HEADER.size :])
    if rtype == RecordType.ACK:
        return _decode_ack(body)
    if rtype == RecordType.CLOSE:
        if len(body) < 3:
            raise WireError("CLOSE body too short")
        code, size = struct.unpack_from(">HB", body)
        if len(body) != 3 + size:
            raise WireError("CLOSE reason length mismatch")
        try:
            reason = body[3:].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("CLOSE reason is not UTF-8") from None
        return Close(code, reason)
    if rtype == RecordType.PATH_CHALLENGE or rtype == RecordType.PATH_RESPONSE:
        if len(body) != PATH_TOKEN_LEN:
            raise WireError(f"{RecordType(rtype).name} body must be {PATH_TOKEN_LEN} bytes, got {len(body)}")
        return PathChallenge(bytes(body)) if rtype == RecordType.PATH_CHALLENGE else PathResponse(bytes(body))
    return RawRecord(rtype, body)


def _decode_ack(body: bytes) -> Ack:
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(body):
            raise WireError("ACK body truncated")
        chunk = body[pos : pos + size]
        pos += size
        return chunk

    ranges = tuple(struct.unpack(">QQ", take(16)) for _ in range(take(1)[0]))
    segments = tuple(struct.unpack(">QII", take(16)) for _ in range(take(1)[0]))
    if pos != len(body):
        raise WireError(f"ACK body has {len(body) - pos} trailing bytes")
    return Ack(ranges, segments)  # type: ignore[arg-type]


def decode_records(payload: bytes) -> list[Record]:
    """Every record of a DATA frame's plaintext, in order (runs of zero bytes become Padding)."""
    data = check_bytes(payload, "payload", WireError)
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        if data[pos] == RecordType.PADDING:
            end = pos
            while end < len(data) and data[end] == 0:
                end += 1
            records.append(Padding(end - pos))
            pos = end
            continue
        if pos + RECORD_HEADER_LEN > len(data):
            raise WireError("record header truncated")
        rtype, size = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER_LEN
        if pos + size > len(data):
            raise WireError(f"record of type {rtype:#04x} truncated ({size} bytes declared)")
        if size >= 16384 and rtype in FILE_RECORD_TYPES:
            # A large file-protocol record (DATA): a view, not a 64 KiB copy. Other layers'
            # records (rendezvous...) stay bytes whatever their size.
            records.append(RawRecord(rtype, memoryview(data)[pos : pos + size]))
        else:
            records.append(_decode_body(rtype, data[pos : pos + size]))
        pos += size
    return records


def is_lone_file_record(payload: bytes) -> bool:
    """Whether a frame's plaintext is one file-protocol record and nothing else: what every
    DATA datagram of a transfer holds."""
    return (len(payload) > RECORD_HEADER_LEN and payload[0] in FILE_RECORD_TYPES
            and RECORD_HEADER_LEN + (payload[1] << 8 | payload[2]) == len(payload))


def frame_records(payload: bytes) -> list[Union[Record, bytes]]:
    """The records of a received frame's plaintext, as `decode_records` gives them, except
    that a file-protocol record filling the frame alone (`is_lone_file_record`: every DATA
    datagram of a transfer) stays encoded: its `bytes`, record header included, for the file
    layer to decode in one step (`filecodec.decode_data_runs`). Building a record object
    for each datagram here, and reading it again there, was a fifth of the receive path."""
    if type(payload) is bytes and is_lone_file_record(payload):
        return [payload]
    return decode_records(payload)


def msg_capacity(max_datagram: int = MAX_DATAGRAM) -> int:
    """Chat bytes one MSG record can carry when it fills a DATA datagram alone."""
    return payload_capacity(max_datagram) - RECORD_HEADER_LEN - MSG_HEADER.size
