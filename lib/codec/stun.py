"""STUN messages (RFC 8489), pure: bytes <-> `Message`, no socket, no DNS, no gevent.

`encode`, `decode`, `check_integrity` and `is_stun` turn STUN messages into objects and back,
with the attribute table (`_CODECS`) saying how each attribute's value is written: addresses
(XOR-MAPPED-ADDRESS and the other XOR ones are masked with the magic cookie and transaction
id), text, numbers, ERROR-CODE, MESSAGE-INTEGRITY (HMAC-SHA1 or -SHA256) and FINGERPRINT
(CRC-32). `decode` raises `StunError`, and nothing else, on any malformed input, so the I/O
layer can drop hostile datagrams with one `except`. It also knows the TURN attributes
(RFC 8656) that `net/turn.py` builds on, and parses `stun:` / `turn:` server URLs.

The clients that send these messages (retransmissions, DNS, the shared socket) live in
`net/stun.py`, `net/turn.py` and `net/stun_transaction.py`.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from typing import Callable, Iterator, Optional, Union

from ..errors import Invalid
from .fields import check_bytes
from ..util import Address

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack(">I", MAGIC_COOKIE)
HEADER = struct.Struct(">HHI12s")  # type, body length, magic cookie, transaction id
HEADER_LEN = HEADER.size  # 20
ATTR_HEADER = struct.Struct(">HH")  # type, value length
TRANSACTION_ID_LEN = 12
FINGERPRINT_XOR = 0x5354554E  # "STUN"
FINGERPRINT_ATTR_LEN = 8  # header + 4-byte CRC
SHA1_INTEGRITY_LEN = 20
SHA256_INTEGRITY_LEN = 32
DEFAULT_PORT = 3478

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
CHANGE_IP = 0x04  # CHANGE-REQUEST flags (RFC 5780)
CHANGE_PORT = 0x02

class StunError(Invalid):
    """Malformed STUN bytes or a bad server URL (the clients' failures subclass it); says why."""


class Class(enum.IntEnum):
    """The two class bits of a message type."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(enum.IntEnum):
    """Methods used here: Binding (RFC 8489) and the TURN ones (RFC 8656)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(enum.IntEnum):
    """Attribute types this codec understands. Types below 0x8000 are comprehension-required."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    CHANGED_ADDRESS = 0x0005  # RFC 3489; RFC 5780 renamed it OTHER-ADDRESS
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    XOR_MAPPED_ADDRESS = 0x0020
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


AttrValue = Union[Address, str, bytes, int, bool, tuple]

# Attributes computed by `encode` itself, never taken from `Message.attributes`.
_COMPUTED = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)


@dataclasses.dataclass
class Message:
    """One STUN message. `attributes` keeps the first instance of each known attribute;
    `unknown` lists comprehension-required types that were not understood (a server answers
    those with 420). An RFC 3489 message (decoded with `rfc3489=True`) has a 16-byte id."""

    method: int
    cls: Class
    transaction_id: bytes = dataclasses.field(default_factory=lambda: os.urandom(TRANSACTION_ID_LEN))
    attributes: dict[Attr, AttrValue] = dataclasses.field(default_factory=dict)
    unknown: tuple[int, ...] = ()

    def get(self, attr: Attr, default=None):
        return self.attributes.get(attr, default)

    @property
    def error(self) -> Optional[tuple[int, str]]:
        """(code, reason) of an error response, None otherwise."""
        value = self.attributes.get(Attr.ERROR_CODE)
        return value if isinstance(value, tuple) else None

    def __repr__(self) -> str:
        method = self.method.name if isinstance(self.method, Method) else hex(self.method)
        names = ", ".join(attr.name for attr in self.attributes)
        return f"Message({method} {self.cls.name} id={self.transaction_id.hex()} [{names}])"


# ---------------------------------------------------------------- message type


def message_type(method: int, cls: Class) -> int:
    """The 14-bit type field: the 12 method bits M11..M0 with the class bits C1 C0 interleaved
    at bit positions 8 and 4 (RFC 8489 section 5)."""
    if not 0 <= method <= 0xFFF:
        raise StunError(f"method {method:#x} does not fit in 12 bits")
    return (((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F)
            | ((cls & 0b10) << 7) | ((cls & 0b01) << 4))


def split_message_type(value: int) -> tuple[int, Class]:
    """(method, class) of a type field; the inverse of `message_type`."""
    method = ((value >> 2) & 0xF80) | ((value >> 1) & 0x070) | (value & 0x00F)
    cls = Class(((value >> 7) & 0b10) | ((value >> 4) & 0b01))
    try:
        return Method(method), cls
    except ValueError:
        return method, cls


# ---------------------------------------------------------------- attribute values


def _pad(length: int) -> int:
    """Bytes of padding after a value of this length (attributes are 4-byte aligned)."""
    return -length % 4


def _xor_key(transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES + transaction_id


def _encode_address(value: Address) -> bytes:
    host, port = value
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise StunError(f"not an IP address: {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"port out of range: {port}")
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return struct.pack(">BBH", 0, family, port) + ip.packed


def _decode_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunError("address attribute shorter than 4 bytes")
    _, family, port = struct.unpack_from(">BBH", value)
    raw = value[4:]
    if family == FAMILY_IPV4 and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw)), port
    if family == FAMILY_IPV6 and len(raw) == 16:
        return str(ipaddress.IPv6Address(raw)), port
    raise StunError(f"address attribute with family {family:#04x} and {len(raw)} address bytes")


def _xor(value: bytes, transaction_id: bytes) -> bytes:
    """XOR the port and address bytes of an encoded address with cookie || transaction id."""
    key = _xor_key(transaction_id)
    body = bytes(b ^ k for b, k in zip(value[2:], key[:2] + key))
    return value[:2] + body


def _encode_text(value: str, limit: int) -> bytes:
    data = value.encode("utf-8")
    if len(data) > limit:
        raise StunError(f"text attribute longer than {limit} bytes")
    return data


def _decode_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunError("text attribute is not UTF-8") from None


def _encode_u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise StunError(f"32-bit value out of range: {value}")
    return struct.pack(">I", value)


def _decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise StunError(f"32-bit attribute of {len(value)} bytes")
    return struct.unpack(">I", value)[0]


def _encode_error(value: tuple[int, str]) -> bytes:
    code, reason = value
    if not 300 <= code <= 699:
        raise StunError(f"error code out of range: {code}")
    return struct.pack(">HBB", 0, code // 100, code % 100) + _encode_text(reason, 763)


def _decode_error(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("ERROR-CODE shorter than 4 bytes")
    _, klass, number = struct.unpack_from(">HBB", value)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise StunError(f"ERROR-CODE with class {klass} and number {number}")
    # coturn pads some reason phrases with NUL bytes inside the attribute length: drop them.
    return klass * 100 + number, _decode_text(value[4:]).rstrip("\x00")


def _encode_unknown(value: tuple) -> bytes:
    return b"".join(struct.pack(">H", t) for t in value)


def _decode_unknown(value: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise StunError("UNKNOWN-ATTRIBUTES of odd length")
    return tuple(struct.unpack(f">{len(value) // 2}H", value))


def _encode_channel(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise StunError(f"channel number out of range: {value}")
    return struct.pack(">HH", value, 0)


def _decode_channel(value: bytes) -> int:
    if len(value) != 4:
        raise StunError(f"CHANNEL-NUMBER of {len(value)} bytes")
    return struct.unpack(">HH", value)[0]


def _encode_transport(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise StunError(f"protocol number out of range: {value}")
    return bytes([value, 0, 0, 0])


def _decode_transport(value: bytes) -> int:
    if len(value) != 4:
        raise StunError(f"REQUESTED-TRANSPORT of {len(value)} bytes")
    return value[0]


def _encode_nonce(value: bytes) -> bytes:
    data = bytes(value)
    if len(data) > 763:
        raise StunError("NONCE longer than 763 bytes")
    return data


def _encode_flag(value: bool) -> bytes:
    return b""


def _decode_flag(value: bytes) -> bool:
    if value:
        raise StunError("DONT-FRAGMENT must be empty")
    return True


def _decode_integrity(expected: int) -> Callable[[bytes], bytes]:
    def decode(value: bytes) -> bytes:
        if expected == SHA1_INTEGRITY_LEN and len(value) != SHA1_INTEGRITY_LEN:
            raise StunError(f"MESSAGE-INTEGRITY of {len(value)} bytes")
        if expected == SHA256_INTEGRITY_LEN and not (16 <= len(value) <= 32 and len(value) % 4 == 0):
            raise StunError(f"MESSAGE-INTEGRITY-SHA256 of {len(value)} bytes")
        return bytes(value)
    return decode


@dataclasses.dataclass(frozen=True)
class _Codec:
    encode: Callable[[AttrValue], bytes]
    decode: Callable[[bytes], AttrValue]
    xor: bool = False  # value is an address XORed with cookie || transaction id


# The attribute table: type -> how its value is encoded and decoded.
_CODECS: dict[Attr, _Codec] = {
    Attr.MAPPED_ADDRESS: _Codec(_encode_address, _decode_address),
    Attr.CHANGE_REQUEST: _Codec(_encode_u32, _decode_u32),
    Attr.CHANGED_ADDRESS: _Codec(_encode_address, _decode_address),
    Attr.USERNAME: _Codec(lambda v: _encode_text(v, 512), _decode_text),
    Attr.MESSAGE_INTEGRITY: _Codec(bytes, _decode_integrity(SHA1_INTEGRITY_LEN)),
    Attr.ERROR_CODE: _Codec(_encode_error, _decode_error),
    Attr.UNKNOWN_ATTRIBUTES: _Codec(_encode_unknown, _decode_unknown),
    Attr.CHANNEL_NUMBER: _Codec(_encode_channel, _decode_channel),
    Attr.LIFETIME: _Codec(_encode_u32, _decode_u32),
    Attr.XOR_PEER_ADDRESS: _Codec(_encode_address, _decode_address, xor=True),
    Attr.DATA: _Codec(bytes, bytes),
    Attr.REALM: _Codec(lambda v: _encode_text(v, 763), _decode_text),
    Attr.NONCE: _Codec(_encode_nonce, bytes),
    Attr.XOR_RELAYED_ADDRESS: _Codec(_encode_address, _decode_address, xor=True),
    Attr.REQUESTED_TRANSPORT: _Codec(_encode_transport, _decode_transport),
    Attr.DONT_FRAGMENT: _Codec(_encode_flag, _decode_flag),
    Attr.MESSAGE_INTEGRITY_SHA256: _Codec(bytes, _decode_integrity(SHA256_INTEGRITY_LEN)),
    Attr.XOR_MAPPED_ADDRESS: _Codec(_encode_address, _decode_address, xor=True),
    Attr.SOFTWARE: _Codec(lambda v: _encode_text(v, 763), _decode_text),
    Attr.FINGERPRINT: _Codec(_encode_u32, _decode_u32),
    Attr.RESPONSE_ORIGIN: _Codec(_encode_address, _decode_address),
    Attr.OTHER_ADDRESS: _Codec(_encode_address, _decode_address),
}


# ---------------------------------------------------------------- messages


def _attribute(attr_type: int, value: bytes) -> bytes:
    return ATTR_HEADER.pack(attr_type, len(value)) + value + bytes(_pad(len(value)))


def _with_length(data: bytes, body_length: int) -> bytes:
    """`data` with its header's length field replaced: integrity and fingerprint are computed
    as if the message ended just after the attribute being computed."""
    return data[:2] + struct.pack(">H", body_length) + data[4:]


def _hmac(key: bytes, data: bytes, sha256: bool) -> bytes:
    return hmac.new(key, data, hashlib.sha256 if sha256 else hashlib.sha1).digest()


def fingerprint(data: bytes) -> int:
    """CRC-32 of the message so far, XORed with 0x5354554e (RFC 8489 section 14.7)."""
    return binascii.crc32(data) ^ FINGERPRINT_XOR


def encode(message: Message, integrity_key: Optional[bytes] = None, *, sha256: bool = False,
           add_fingerprint: bool = False) -> bytes:
    """The bytes of `message`. With `integrity_key`, MESSAGE-INTEGRITY (HMAC-SHA1), or
    MESSAGE-INTEGRITY-SHA256 with `sha256=True`, is appended after the other attributes;
    FINGERPRINT, if asked, comes last."""
    if len(message.transaction_id) != TRANSACTION_ID_LEN:
        raise StunError("a transaction id is 12 bytes")
    body = bytearray()
    for attr, value in message.attributes.items():
        if attr in _COMPUTED:
            continue
        codec = _CODECS[attr]
        raw = codec.encode(value)
        if codec.xor:
            raw = _xor(raw, message.transaction_id)
        if len(raw) > 0xFFFF:
            raise StunError(f"{attr.name} too long")
        body += _attribute(attr, raw)
    mtype = message_type(message.method, message.cls)
    data = HEADER.pack(mtype, len(body), MAGIC_COOKIE, message.transaction_id) + bytes(body)
    if integrity_key is not None:
        size = SHA256_INTEGRITY_LEN if sha256 else SHA1_INTEGRITY_LEN
        attr = Attr.MESSAGE_INTEGRITY_SHA256 if sha256 else Attr.MESSAGE_INTEGRITY
        mac = _hmac(integrity_key, _with_length(data, len(data) - HEADER_LEN + 4 + size), sha256)
        data = _with_length(data, len(data) - HEADER_LEN + 4 + size) + _attribute(attr, mac)
    if add_fingerprint:
        data = _with_length(data, len(data) - HEADER_LEN + FINGERPRINT_ATTR_LEN)
        data += _attribute(Attr.FINGERPRINT, _encode_u32(fingerprint(data)))
    if len(data) - HEADER_LEN > 0xFFFF:
        raise StunError("message too long")
    return data


def _header(data: bytes, rfc3489: bool) -> tuple[int, bytes]:
    """(message type, transaction id) after checking the header and overall length."""
    if len(data) < HEADER_LEN:
        raise StunError(f"{len(data)} bytes: shorter than a STUN header")
    mtype, length, cookie, transaction_id = HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise StunError(f"first two bits of a STUN message must be 0 (type {mtype:#06x})")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if HEADER_LEN + length != len(data):
        raise StunError(f"message length {length} does not match the {len(data)}-byte datagram")
    if cookie != MAGIC_COOKIE:
        if not rfc3489:
            raise StunError("no magic cookie: not an RFC 8489 STUN message")
        return mtype, data[4:HEADER_LEN]
    return mtype, transaction_id


def _walk(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, offset, value) of each attribute, checking that each fits in the message."""
    pos = HEADER_LEN
    while pos < len(data):
        if len(data) - pos < ATTR_HEADER.size:
            raise StunError(f"truncated attribute header at offset {pos}")
        attr_type, length = ATTR_HEADER.unpack_from(data, pos)
        end = pos + ATTR_HEADER.size + length
        if end + _pad(length) > len(data):
            raise StunError(f"attribute {attr_type:#06x} of {length} bytes overruns the message")
        yield attr_type, pos, data[pos + ATTR_HEADER.size:end]
        pos = end + _pad(length)


def decode(data: bytes, *, rfc3489: bool = False) -> Message:
    """Parse one STUN message; StunError on anything malformed, including a wrong FINGERPRINT.

    MESSAGE-INTEGRITY is parsed, not checked: the key depends on the transaction, see
    `check_integrity`. Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256
    and FINGERPRINT are ignored (RFC 8489 section 14.5); FINGERPRINT must be last.
    `rfc3489=True` also accepts classic messages without the magic cookie (their XOR
    attributes, meaningless there, are skipped)."""
    data = check_bytes(data, "a STUN message", StunError)
    mtype, transaction_id = _header(data, rfc3489)
    method, cls = split_message_type(mtype)
    classic = len(transaction_id) != TRANSACTION_ID_LEN
    attributes: dict[Attr, AttrValue] = {}
    unknown: list[int] = []
    after_integrity = False
    for attr_type, pos, raw in _walk(data):
        if attr_type == Attr.FINGERPRINT:
            if pos + FINGERPRINT_ATTR_LEN != len(data):
                raise StunError("FINGERPRINT is not the last attribute")
            if _decode_u32(raw) != fingerprint(data[:pos]):
                raise StunError("FINGERPRINT does not match")
            attributes[Attr.FINGERPRINT] = _decode_u32(raw)
            continue
        if after_integrity and attr_type != Attr.MESSAGE_INTEGRITY_SHA256:
            continue
        try:
            attr = Attr(attr_type)
        except ValueError:
            if attr_type < 0x8000 and attr_type not in unknown:
                unknown.append(attr_type)
            continue
        if attr in attributes:
            continue  # the first instance wins
        codec = _CODECS[attr]
        if codec.xor:
            if classic:
                continue
            raw = _xor(raw, transaction_id) if len(raw) >= 4 else raw
        attributes[attr] = codec.decode(raw)
        if attr in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256):
            after_integrity = True
    return Message(method, cls, transaction_id, attributes, tuple(unknown))


def check_integrity(data: bytes, key: bytes) -> bool:
    """True if `data` carries a MESSAGE-INTEGRITY (or, failing that, MESSAGE-INTEGRITY-SHA256)
    that matches `key`; False when it is missing or wrong. Never raises on malformed input."""
    try:
        data = check_bytes(data, "a STUN message", StunError)
        _header(data, False)
        for attr_type, pos, raw in _walk(data):
            if attr_type in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256):
                sha256 = attr_type == Attr.MESSAGE_INTEGRITY_SHA256
                covered = _with_length(data[:pos], pos - HEADER_LEN + 4 + len(raw))
                return hmac.compare_digest(_hmac(key, covered, sha256)[:len(raw)], raw)
    except StunError:
        return False
    return False


def is_stun(datagram: bytes) -> bool:
    """Quick check, no parsing: an RFC 8489 header (top bits 00, magic cookie, consistent length)."""
    return (len(datagram) >= HEADER_LEN and datagram[0] < 0x40
            and datagram[4:8] == MAGIC_COOKIE_BYTES
            and (len(datagram) - HEADER_LEN) % 4 == 0
            and struct.unpack_from(">H", datagram, 2)[0] == len(datagram) - HEADER_LEN)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key MD5(username ":" realm ":" password) (RFC 8489 section 9.2.2).
    The strings are used as given (no SASLprep/OpaqueString profile)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode("utf-8")).digest()


# ---------------------------------------------------------------- server URLs


def parse_server_url(url: str, scheme: str = "stun") -> Address:
    """(host, port) of `stun:host[:port]` (RFC 7064; IPv6 as `[addr]`), default port 3478."""
    if not isinstance(url, str) or not url.strip():
        raise StunError(f"empty {scheme} server URL")
    text = url.strip()
    prefix = scheme + ":"
    if not text.lower().startswith(prefix):
        raise StunError(f"{scheme} server URL must start with '{prefix}': {url!r}")
    rest = text[len(prefix):]
    if rest.startswith("//"):
        raise StunError(f"{scheme} URLs have no '//': write '{prefix}host:port', not {url!r}")
    if "?" in rest or "/" in rest or "@" in rest:
        raise StunError(f"unexpected '?', '/' or '@' in {scheme} server URL {url!r}")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise StunError(f"unterminated '[' in {scheme} server URL {url!r}")
        host, tail = rest[1:close], rest[close + 1:]
        if tail and not tail.startswith(":"):
            raise StunError(f"unexpected text after ']' in {scheme} server URL {url!r}")
        port_text = tail[1:] if tail else None
    elif rest.count(":") > 1:
        raise StunError(f"IPv6 address in {scheme} server URL must be in brackets: {url!r}")
    else:
        host, _, port_text = rest.partition(":")
        port_text = port_text if ":" in rest else None
    if not host:
        raise StunError(f"no host in {scheme} server URL {url!r}")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise StunError(f"bad port {port_text!r} in {scheme} server URL {url!r}")
    return host, int(port_text)


def format_address(address: Address) -> str:
    """host:port, with IPv6 hosts in brackets, for messages."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
