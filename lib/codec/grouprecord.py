"""Group chat bytes, pure: records (PROTOCOL §13.2), their bodies, the message plaintext
(§13.4) and the group frames members exchange (§13.6, §13.8). No I/O, no keys.

Every decoder raises ``GroupWireError`` (and nothing else) on malformed input, so the service
can count and drop a hostile record or frame with one ``except``. `decode_record` checks all
of a record's well-formedness that needs no key; the signature is checked by
`crypto.groupcrypto.verify_record`, membership by `services.groups.membership`.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from ..errors import Invalid
from ..util import Address
from . import addresses
from .fields import check_bytes, decode_utf8


class GroupWireError(Invalid):
    """Bytes that are not a well-formed group record, body or frame; the message says why."""


class Kind(enum.IntEnum):
    """A record's kind (§13.2). 1-6 are operations: they make the membership."""

    CREATE = 1
    ADD = 2
    REMOVE = 3
    LEAVE = 4
    PROMOTE = 5
    RENAME = 6
    KEY = 7
    MESSAGE = 8
    CHECKPOINT = 9


OPERATIONS: frozenset[Kind] = frozenset({Kind.CREATE, Kind.ADD, Kind.REMOVE, Kind.LEAVE, Kind.PROMOTE, Kind.RENAME})
SEALED_KINDS: frozenset[Kind] = frozenset({Kind.KEY, Kind.MESSAGE})  # key_epoch >= 1; every other kind 0


class SigKind(enum.IntEnum):
    """Which signature a record carries (§13.5)."""

    ED25519 = 1
    HYBRID = 2  # ML-DSA-65 + Ed25519 (§4)


SIGNATURE_LEN = {SigKind.ED25519: 64, SigKind.HYBRID: 3373}  # pqc.ED25519_SIG_LEN, pqc.SIG_LEN

VERSION = 1
MAX_MEMBERS = 64
MAX_PARENTS = 16
MAX_BODY = 98304
MAX_RECORD = 104 * 1024
RECORD_LABEL = b"chatp2p group record v1"
FILE_LABEL = b"chatp2p group file v1"

GROUP_ID_LEN = 16
FP_LEN = 32
HASH_LEN = 32
PREFIX_LEN = 8  # a connected member in HAVE: the first bytes of its fingerprint
MAX_NAME = 64  # bytes of UTF-8
ENC_LEN = 1120  # X-Wing ciphertext (pqc.KEM_CT_LEN)
SEALED_KEY_LEN = 48  # 32-byte key + 16-byte tag
AEAD_TAG_LEN = 16
MAX_MESSAGE_ID = 255  # bytes of UTF-8 (u8 length)
MAX_TEXT = 65536
MAX_FILE_NAME = 255
MAX_RANGES = 16
MAX_RECORDS_FRAME = 256 * 1024  # a whole frame (any type) is at most this
MAX_HINT_ADDRESSES = 16

# version, kind, group_id, author, seq, prev, depth, created (ms), key_epoch, sig kind, P
_HEADER = struct.Struct(">BB16s32sQ32sQQIBB")  # 112 bytes
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RANGE = struct.Struct(">QQ")
_ZERO_GROUP = bytes(GROUP_ID_LEN)
_ZERO_HASH = bytes(HASH_LEN)
_MAX_U64 = (1 << 64) - 1
_MAX_U32 = (1 << 32) - 1

HEADER_LEN = _HEADER.size


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Record:
    """One group record (§13.2). A draft has an empty signature; `with_signature` signs it.

    The constructor checks what the byte layout needs (sizes, integer ranges); `check_record`
    adds the rules of well-formedness (§13.2), which `decode_record` applies."""

    kind: Kind
    group_id: bytes
    author: bytes
    seq: int
    prev: bytes
    depth: int
    created_ms: int
    key_epoch: int
    sig_kind: SigKind
    parents: tuple[bytes, ...]
    body: bytes
    signature: bytes = b""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
            object.__setattr__(self, "sig_kind", SigKind(self.sig_kind))
        except ValueError as exc:
            raise GroupWireError(f"unknown record {exc}") from None
        for name, size in (("group_id", GROUP_ID_LEN), ("author", FP_LEN), ("prev", HASH_LEN)):
            object.__setattr__(self, name, check_bytes(getattr(self, name), name, GroupWireError, size))
        for name, top in (("seq", _MAX_U64), ("depth", _MAX_U64), ("created_ms", _MAX_U64), ("key_epoch", _MAX_U32)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise GroupWireError(f"record {name} out of range: {value!r}")
        if not isinstance(self.parents, (tuple, list)) or len(self.parents) > MAX_PARENTS:
            raise GroupWireError(f"a record names at most {MAX_PARENTS} parents")
        object.__setattr__(self, "parents", tuple(check_bytes(p, "parent", GroupWireError, HASH_LEN) for p in self.parents))
        object.__setattr__(self, "body", check_bytes(self.body, "body", GroupWireError))
        if len(self.body) > MAX_BODY:
            raise GroupWireError(f"record body too long ({len(self.body)} bytes, at most {MAX_BODY})")
        object.__setattr__(self, "signature", check_bytes(self.signature, "signature", GroupWireError))

    def header(self) -> bytes:
        """Bytes 0 up to the body length field, parents included: the AAD of the message
        encryption (§13.4), which does not depend on the body."""
        return _HEADER.pack(VERSION, self.kind, self.group_id, self.author, self.seq, self.prev, self.depth,
                            self.created_ms, self.key_epoch, self.sig_kind, len(self.parents)) + b"".join(self.parents)

    def signed_part(self) -> bytes:
        """Every byte before the signature."""
        cached = self._cache.get("signed")
        if cached is None:
            cached = self._cache["signed"] = self.header() + _U32.pack(len(self.body)) + self.body
        return cached

    def hash(self) -> bytes:
        """SHA-256(label || 0x00 || signed part): the record's name in parents, prev, HAVE."""
        cached = self._cache.get("hash")
        if cached is None:
            cached = self._cache["hash"] = hashlib.sha256(RECORD_LABEL + b"\x00" + self.signed_part()).digest()
        return cached

    def encode(self) -> bytes:
        """The record with its signature (which must have its kind's length)."""
        if len(self.signature) != SIGNATURE_LEN[self.sig_kind]:
            raise GroupWireError(f"a {self.sig_kind.name} record needs a {SIGNATURE_LEN[self.sig_kind]}-byte "
                                 f"signature, has {len(self.signature)} bytes")
        return self.signed_part() + self.signature

    def with_signature(self, signature: bytes) -> "Record":
        """The same record, signed."""
        return Record(self.kind, self.group_id, self.author, self.seq, self.prev, self.depth, self.created_ms,
                      self.key_epoch, self.sig_kind, self.parents, self.body, signature)


def check_record(record: Record) -> None:
    """Raise GroupWireError unless `record` follows §13.2's rules that need no key (its body
    included, for every kind but MESSAGE, whose body is ciphertext)."""
    if (record.seq == 0) or ((record.seq == 1) != (record.prev == _ZERO_HASH)):
        raise GroupWireError("seq must be >= 1, and prev zero exactly when seq is 1")
    if record.depth < 1:
        raise GroupWireError("depth must be >= 1")
    if any(a >= b for a, b in zip(record.parents, record.parents[1:])):
        raise GroupWireError("parents must be distinct and in ascending order")
    if record.kind == Kind.CREATE:
        if record.seq != 1 or record.depth != 1 or record.parents or record.group_id != _ZERO_GROUP:
            raise GroupWireError("CREATE must have seq 1, depth 1, no parents and a zero group_id")
    elif not record.parents or record.depth < 2:
        raise GroupWireError(f"{record.kind.name} must name a parent and have depth >= 2")
    if record.kind != Kind.MESSAGE and record.sig_kind != SigKind.HYBRID:
        raise GroupWireError(f"{record.kind.name} must carry a hybrid signature")
    if (record.key_epoch >= 1) != (record.kind in SEALED_KINDS):
        raise GroupWireError(f"{record.kind.name} must have key_epoch {'>= 1' if record.kind in SEALED_KINDS else '0'}")
    _BODY_CHECKS[record.kind](record.body)


def decode_record(data: bytes) -> Record:
    """Parse an encoded record and check it is well-formed (`check_record`); GroupWireError
    with the reason otherwise. The signature is not verified here."""
    data = check_bytes(data, "record", GroupWireError)
    if len(data) > MAX_RECORD:
        raise GroupWireError(f"record too long ({len(data)} bytes, at most {MAX_RECORD})")
    if len(data) < HEADER_LEN:
        raise GroupWireError(f"record too short ({len(data)} bytes)")
    version, kind, group_id, author, seq, prev, depth, created, epoch, sig_kind, count = _HEADER.unpack_from(data)
    if version != VERSION:
        raise GroupWireError(f"unsupported record version {version}")
    if kind not in Kind._value2member_map_:
        raise GroupWireError(f"unknown record kind {kind}")
    if sig_kind not in SigKind._value2member_map_:
        raise GroupWireError(f"unknown signature kind {sig_kind}")
    if count > MAX_PARENTS:
        raise GroupWireError(f"{count} parents (at most {MAX_PARENTS})")
    pos = HEADER_LEN + count * HASH_LEN
    if pos + _U32.size > len(data):
        raise GroupWireError("record cut short in its parents")
    parents = tuple(data[HEADER_LEN + i * HASH_LEN : HEADER_LEN + (i + 1) * HASH_LEN] for i in range(count))
    (length,) = _U32.unpack_from(data, pos)
    pos += _U32.size
    if length > MAX_BODY:
        raise GroupWireError(f"record body too long ({length} bytes, at most {MAX_BODY})")
    sig_len = SIGNATURE_LEN[SigKind(sig_kind)]
    if pos + length + sig_len != len(data):
        raise GroupWireError(f"record length {len(data)} does not match its body ({length}) and "
                             f"{SigKind(sig_kind).name} signature ({sig_len})")
    record = Record(Kind(kind), group_id, author, seq, prev, depth, created, epoch, SigKind(sig_kind), parents,
                    data[pos : pos + length], data[pos + length :])
    record._cache["signed"] = data[: pos + length]
    check_record(record)
    return record


# ---------------------------------------------------------------- bodies


def _utf8(text: object, what: str) -> bytes:
    """`text` in UTF-8; GroupWireError for a non-string or a lone surrogate (JSON allows them)."""
    if not isinstance(text, str):
        raise GroupWireError(f"{what} must be text")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise GroupWireError(f"{what} is not valid Unicode") from None


def _name_bytes(name: str) -> bytes:
    raw = _utf8(name, "a group name")
    if not 1 <= len(raw) <= MAX_NAME:
        raise GroupWireError(f"a group name is 1-{MAX_NAME} bytes of UTF-8, got {len(raw)}")
    return raw


def _text(raw: bytes, what: str) -> str:
    return decode_utf8(raw, what, GroupWireError)


def _read_name(body: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(body):
        raise GroupWireError("group name missing")
    size = body[pos]
    if not 1 <= size <= MAX_NAME or pos + 1 + size > len(body):
        raise GroupWireError(f"group name length {size} is out of range or cut short")
    return _text(body[pos + 1 : pos + 1 + size], "group name"), pos + 1 + size


def _read_bundle(body: bytes, pos: int) -> bytes:
    if pos + _U16.size > len(body):
        raise GroupWireError("bundle length missing")
    (size,) = _U16.unpack_from(body, pos)
    if size == 0 or pos + _U16.size + size != len(body):
        raise GroupWireError("bundle length does not match the body")
    return body[pos + _U16.size :]


def _bundle_field(bundle: bytes) -> bytes:
    bundle = check_bytes(bundle, "bundle", GroupWireError)
    if not 1 <= len(bundle) <= 0xFFFF:
        raise GroupWireError("a bundle is 1-65535 bytes")
    return _U16.pack(len(bundle)) + bundle


def encode_create(name: str, bundle: bytes) -> bytes:
    """CREATE body: the group's name and the creator's bundle."""
    raw = _name_bytes(name)
    return bytes([len(raw)]) + raw + _bundle_field(bundle)


def decode_create(body: bytes) -> tuple[str, bytes]:
    name, pos = _read_name(body, 0)
    return name, _read_bundle(body, pos)


def encode_add(role: int, bundle: bytes) -> bytes:
    """ADD body: role (0 member, 1 admin) and the new member's bundle."""
    if role not in (0, 1):
        raise GroupWireError(f"role must be 0 (member) or 1 (admin), not {role!r}")
    return bytes([role]) + _bundle_field(bundle)


def decode_add(body: bytes) -> tuple[int, bytes]:
    if not body or body[0] not in (0, 1):
        raise GroupWireError("ADD role must be 0 or 1")
    return body[0], _read_bundle(body, 1)


def encode_remove(target: bytes, final_seq: int) -> bytes:
    """REMOVE body: who, and the highest seq of theirs the remover held."""
    if not isinstance(final_seq, int) or not 0 <= final_seq <= _MAX_U64:
        raise GroupWireError(f"final_seq out of range: {final_seq!r}")
    return check_bytes(target, "target", GroupWireError, FP_LEN) + _U64.pack(final_seq)


def decode_remove(body: bytes) -> tuple[bytes, int]:
    if len(body) != FP_LEN + _U64.size:
        raise GroupWireError(f"REMOVE body must be {FP_LEN + _U64.size} bytes, got {len(body)}")
    return body[:FP_LEN], _U64.unpack_from(body, FP_LEN)[0]


def encode_promote(target: bytes) -> bytes:
    return check_bytes(target, "target", GroupWireError, FP_LEN)


def decode_promote(body: bytes) -> bytes:
    if len(body) != FP_LEN:
        raise GroupWireError(f"PROMOTE body must be {FP_LEN} bytes, got {len(body)}")
    return bytes(body)


def encode_rename(name: str) -> bytes:
    raw = _name_bytes(name)
    return bytes([len(raw)]) + raw


def decode_rename(body: bytes) -> str:
    name, pos = _read_name(body, 0)
    if pos != len(body):
        raise GroupWireError("RENAME body has trailing bytes")
    return name


@dataclass(frozen=True)
class KeyEnvelope:
    """One recipient's copy of a sender key in a KEY record (§13.4)."""

    recipient: bytes
    enc: bytes
    sealed: bytes

    def __post_init__(self) -> None:
        check_bytes(self.recipient, "recipient", GroupWireError, FP_LEN)
        check_bytes(self.enc, "enc", GroupWireError, ENC_LEN)
        check_bytes(self.sealed, "sealed key", GroupWireError, SEALED_KEY_LEN)


_ENVELOPE_LEN = FP_LEN + ENC_LEN + SEALED_KEY_LEN  # 1200


def encode_key(envelopes: Sequence[KeyEnvelope]) -> bytes:
    """KEY body: one envelope per recipient, each recipient once."""
    if len(envelopes) > MAX_MEMBERS or len({e.recipient for e in envelopes}) != len(envelopes):
        raise GroupWireError(f"a KEY names at most {MAX_MEMBERS} distinct recipients")
    return bytes([len(envelopes)]) + b"".join(e.recipient + e.enc + e.sealed for e in envelopes)


def decode_key(body: bytes) -> tuple[KeyEnvelope, ...]:
    if not body or len(body) != 1 + body[0] * _ENVELOPE_LEN or body[0] > MAX_MEMBERS:
        raise GroupWireError("KEY body length does not match its count of envelopes")
    envelopes = []
    for i in range(body[0]):
        at = 1 + i * _ENVELOPE_LEN
        envelopes.append(KeyEnvelope(body[at : at + FP_LEN], body[at + FP_LEN : at + FP_LEN + ENC_LEN],
                                     body[at + FP_LEN + ENC_LEN : at + _ENVELOPE_LEN]))
    if len({e.recipient for e in envelopes}) != len(envelopes):
        raise GroupWireError("KEY names a recipient twice")
    return tuple(envelopes)


def _empty(body: bytes) -> None:
    if body:
        raise GroupWireError("this kind of record has an empty body")


def _ciphertext(body: bytes) -> None:
    if len(body) < AEAD_TAG_LEN:
        raise GroupWireError("MESSAGE body is shorter than its AEAD tag")


_BODY_CHECKS = {
    Kind.CREATE: decode_create, Kind.ADD: decode_add, Kind.REMOVE: decode_remove, Kind.LEAVE: _empty,
    Kind.PROMOTE: decode_promote, Kind.RENAME: decode_rename, Kind.KEY: decode_key, Kind.MESSAGE: _ciphertext,
    Kind.CHECKPOINT: _empty,
}


# ---------------------------------------------------------------- message plaintext

_TEXT = 1
_FILE = 2
_FILE_HEAD = struct.Struct(">16sQ")


@dataclass(frozen=True)
class FileAnnounce:
    """A group file: the author offers it to each member as a transfer (§13.4)."""

    file_id: bytes
    size: int
    name: str


@dataclass(frozen=True)
class MessagePlain:
    """What a MESSAGE record seals: text or a file announcement, never both."""

    message_id: str
    text: Optional[str] = None
    file: Optional[FileAnnounce] = None


def encode_plain(plain: MessagePlain) -> bytes:
    """The message plaintext (§13.4)."""
    mid = _utf8(plain.message_id, "message_id")
    if not 1 <= len(mid) <= MAX_MESSAGE_ID:
        raise GroupWireError(f"message_id is 1-{MAX_MESSAGE_ID} bytes of UTF-8, got {len(mid)}")
    if (plain.text is None) == (plain.file is None):
        raise GroupWireError("a message is text or a file, exactly one")
    if plain.text is not None:
        content = _utf8(plain.text, "message text")
        if len(content) > MAX_TEXT:
            raise GroupWireError(f"message text is at most {MAX_TEXT} bytes of UTF-8, got {len(content)}")
        return bytes([_TEXT, len(mid)]) + mid + content
    announce = plain.file
    assert announce is not None
    name = _utf8(announce.name, "a file name")
    if not 1 <= len(name) <= MAX_FILE_NAME:
        raise GroupWireError(f"a file name is 1-{MAX_FILE_NAME} bytes of UTF-8")
    if not isinstance(announce.size, int) or not 0 <= announce.size <= _MAX_U64:
        raise GroupWireError(f"file size out of range: {announce.size!r}")
    file_id = check_bytes(announce.file_id, "file_id", GroupWireError, 16)
    return bytes([_FILE, len(mid)]) + mid + _FILE_HEAD.pack(file_id, announce.size) + name


def decode_plain(data: bytes) -> MessagePlain:
    data = check_bytes(data, "message", GroupWireError)
    if len(data) < 2 or data[0] not in (_TEXT, _FILE):
        raise GroupWireError("message plaintext has no known kind")
    end = 2 + data[1]
    if data[1] == 0 or end > len(data):
        raise GroupWireError("message_id missing or cut short")
    mid = _text(data[2:end], "message_id")
    if data[0] == _TEXT:
        if len(data) - end > MAX_TEXT:
            raise GroupWireError(f"message text longer than {MAX_TEXT} bytes")
        return MessagePlain(mid, text=_text(data[end:], "message text"))
    if len(data) < end + _FILE_HEAD.size + 1 or len(data) - end - _FILE_HEAD.size > MAX_FILE_NAME:
        raise GroupWireError("file announcement has a bad length")
    file_id, size = _FILE_HEAD.unpack_from(data, end)
    return MessagePlain(mid, file=FileAnnounce(file_id, size, _text(data[end + _FILE_HEAD.size :], "file name")))


def group_file_transfer_id(file_id: bytes, recipient: bytes) -> bytes:
    """The transfer id of a group file offered to one member (§13.4): 16 bytes."""
    file_id = check_bytes(file_id, "file_id", GroupWireError, 16)
    recipient = check_bytes(recipient, "recipient", GroupWireError, FP_LEN)
    return hashlib.sha256(FILE_LABEL + file_id + recipient).digest()[:16]


# ---------------------------------------------------------------- frames


class FrameType(enum.IntEnum):
    HAVE = 1
    RECORDS = 2
    HINT = 3


@dataclass(frozen=True)
class AuthorRanges:
    """What a HAVE says of one author: the seq ranges held (first, last inclusive, ascending,
    disjoint, at most 16) and the floor (the lowest non-operation seq still kept)."""

    author: bytes
    floor: int
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Have:
    group_id: bytes
    authors: tuple[AuthorRanges, ...]
    connected: tuple[bytes, ...]  # 8-byte fingerprint prefixes


@dataclass(frozen=True)
class RecordsFrame:
    group_id: bytes
    records: tuple[bytes, ...]  # encoded records, decoded one by one by the receiver


@dataclass(frozen=True)
class Hint:
    group_id: bytes
    member: bytes
    addresses: tuple[Address, ...]


Frame = Union[Have, RecordsFrame, Hint]


def _check_ranges(ranges: Sequence[tuple[int, int]]) -> None:
    if len(ranges) > MAX_RANGES:
        raise GroupWireError(f"at most {MAX_RANGES} ranges per author")
    last = 0
    for first, end in ranges:
        if not (isinstance(first, int) and isinstance(end, int)) or not last < first <= end <= _MAX_U64:
            raise GroupWireError("seq ranges must be ascending, disjoint, with 1 <= first <= last")
        last = end


def _encode_have(frame: Have) -> bytes:
    if len(frame.authors) > 255 or len(frame.connected) > 255:
        raise GroupWireError("a HAVE lists at most 255 authors and 255 connected members")
    if len({a.author for a in frame.authors}) != len(frame.authors):
        raise GroupWireError("a HAVE lists each author once")
    out = [bytes([len(frame.authors)])]
    for entry in frame.authors:
        _check_ranges(entry.ranges)
        if not isinstance(entry.floor, int) or not 0 <= entry.floor <= _MAX_U64:
            raise GroupWireError(f"floor out of range: {entry.floor!r}")
        out.append(check_bytes(entry.author, "author", GroupWireError, FP_LEN) + _U64.pack(entry.floor)
                   + bytes([len(entry.ranges)]) + b"".join(_RANGE.pack(a, b) for a, b in entry.ranges))
    out.append(bytes([len(frame.connected)]))
    out.extend(check_bytes(p, "connected prefix", GroupWireError, PREFIX_LEN) for p in frame.connected)
    return b"".join(out)


def _encode_records(frame: RecordsFrame) -> bytes:
    if not 1 <= len(frame.records) <= 0xFFFF:
        raise GroupWireError("a RECORDS frame carries 1-65535 records")
    parts = [_U16.pack(len(frame.records))]
    for record in frame.records:
        record = check_bytes(record, "record", GroupWireError)
        if len(record) > MAX_RECORD:
            raise GroupWireError(f"record too long ({len(record)} bytes)")
        parts.append(_U32.pack(len(record)) + record)
    return b"".join(parts)


def _encode_hint(frame: Hint) -> bytes:
    if not 1 <= len(frame.addresses) <= MAX_HINT_ADDRESSES:
        raise GroupWireError(f"a HINT carries 1-{MAX_HINT_ADDRESSES} addresses")
    return (check_bytes(frame.member, "member", GroupWireError, FP_LEN) + bytes([len(frame.addresses)])
            + b"".join(addresses.encode_endpoint(a, GroupWireError) for a in frame.addresses))


def encode_frame(frame: Frame) -> bytes:
    """type · group_id · body (§13.6, §13.8); at most MAX_RECORDS_FRAME bytes."""
    if isinstance(frame, Have):
        kind, body = FrameType.HAVE, _encode_have(frame)
    elif isinstance(frame, RecordsFrame):
        kind, body = FrameType.RECORDS, _encode_records(frame)
    elif isinstance(frame, Hint):
        kind, body = FrameType.HINT, _encode_hint(frame)
    else:
        raise GroupWireError(f"not a group frame: {type(frame).__name__}")
    data = bytes([kind]) + check_bytes(frame.group_id, "group_id", GroupWireError, GROUP_ID_LEN) + body
    if len(data) > MAX_RECORDS_FRAME:
        raise GroupWireError(f"group frame too long ({len(data)} bytes, at most {MAX_RECORDS_FRAME})")
    return data


class _Reader:
    """Reads fields off a frame body, raising GroupWireError when it runs out."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise GroupWireError("group frame cut short")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def unpack(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.take(layout.size))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise GroupWireError(f"group frame has {len(self.data) - self.pos} trailing bytes")


def _decode_have(group_id: bytes, reader: _Reader) -> Have:
    authors = []
    for _ in range(reader.unpack(_U8)[0]):
        author = reader.take(FP_LEN)
        (floor,) = reader.unpack(_U64)
        ranges = tuple(reader.unpack(_RANGE) for _ in range(reader.unpack(_U8)[0]))
        _check_ranges(ranges)
        authors.append(AuthorRanges(author, floor, ranges))
    if len({a.author for a in authors}) != len(authors):
        raise GroupWireError("HAVE lists an author twice")
    connected = tuple(reader.take(PREFIX_LEN) for _ in range(reader.unpack(_U8)[0]))
    reader.end()
    return Have(group_id, tuple(authors), connected)


def _decode_records(group_id: bytes, reader: _Reader) -> RecordsFrame:
    (count,) = reader.unpack(_U16)
    if count == 0:
        raise GroupWireError("empty RECORDS frame")
    records = []
    for _ in range(count):
        (size,) = reader.unpack(_U32)
        if size > MAX_RECORD:
            raise GroupWireError(f"record too long ({size} bytes)")
        records.append(reader.take(size))
    reader.end()
    return RecordsFrame(group_id, tuple(records))


def _decode_hint(group_id: bytes, reader: _Reader) -> Hint:
    member = reader.take(FP_LEN)
    (count,) = reader.unpack(_U8)
    if not 1 <= count <= MAX_HINT_ADDRESSES:
        raise GroupWireError(f"a HINT carries 1-{MAX_HINT_ADDRESSES} addresses, not {count}")
    found = []
    for _ in range(count):
        address, reader.pos = addresses.split_endpoint(reader.data, reader.pos, GroupWireError)
        found.append(address)
    reader.end()
    return Hint(group_id, member, tuple(found))


_FRAME_DECODERS = {FrameType.HAVE: _decode_have, FrameType.RECORDS: _decode_records, FrameType.HINT: _decode_hint}


def decode_frame(data: bytes) -> Frame:
    """Parse a group frame; GroupWireError with the reason if it is not exactly one."""
    data = check_bytes(data, "group frame", GroupWireError)
    if len(data) > MAX_RECORDS_FRAME:
        raise GroupWireError(f"group frame too long ({len(data)} bytes)")
    if len(data) < 1 + GROUP_ID_LEN:
        raise GroupWireError("group frame too short")
    if data[0] not in FrameType._value2member_map_:
        raise GroupWireError(f"unknown group frame type {data[0]}")
    return _FRAME_DECODERS[FrameType(data[0])](data[1 : 1 + GROUP_ID_LEN], _Reader(data, 1 + GROUP_ID_LEN))
