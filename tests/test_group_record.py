"""Group record, body, plaintext and frame codecs (PROTOCOL §13.2, §13.4, §13.6): byte layout,
well-formedness, and hostile input that must raise GroupWireError and nothing else."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from chatp2p_core.codec import grouprecord as gr
from chatp2p_core.codec.grouprecord import GroupWireError, Kind, Record, SigKind

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))
GID = bytes.fromhex("00112233445566778899aabbccddeeff")
PARENT_A = b"\x01" * 32
PARENT_B = b"\x02" * 32
BUNDLE = b"CP2B" + b"\x01" * 300
SIG = {SigKind.ED25519: b"\x05" * 64, SigKind.HYBRID: b"\x06" * 3373}


def make(kind: Kind = Kind.MESSAGE, **changes) -> Record:
    """A well-formed signed record of `kind` (fake signature: the codec does not verify)."""
    fields = dict(kind=kind, group_id=GID, author=ALICE, seq=2, prev=b"\x09" * 32, depth=3, created_ms=1_700_000_000_000,
                  key_epoch=1 if kind in (Kind.KEY, Kind.MESSAGE) else 0,
                  sig_kind=SigKind.ED25519 if kind == Kind.MESSAGE else SigKind.HYBRID,
                  parents=(PARENT_A, PARENT_B), body=BODIES[kind])
    if kind == Kind.CREATE:
        fields.update(group_id=bytes(16), seq=1, prev=bytes(32), depth=1, parents=())
    fields.update(changes)
    draft = Record(**fields)
    return draft.with_signature(SIG[draft.sig_kind])


ENVELOPE = gr.KeyEnvelope(BOB, b"\x07" * 1120, b"\x08" * 48)
BODIES = {
    Kind.CREATE: gr.encode_create("family", BUNDLE),
    Kind.ADD: gr.encode_add(0, BUNDLE),
    Kind.REMOVE: gr.encode_remove(BOB, 7),
    Kind.LEAVE: b"",
    Kind.PROMOTE: gr.encode_promote(BOB),
    Kind.RENAME: gr.encode_rename("new name"),
    Kind.KEY: gr.encode_key([ENVELOPE]),
    Kind.MESSAGE: b"\xaa" * 40,
    Kind.CHECKPOINT: b"",
}


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind):
    record = make(kind)
    data = record.encode()
    back = gr.decode_record(data)
    assert back == record
    assert back.encode() == data
    assert back.hash() == record.hash()


def test_layout_matches_the_spec_table():
    record = make(Kind.MESSAGE, seq=5, depth=9, created_ms=1234, key_epoch=3)
    data = record.encode()
    assert data[0] == 1 and data[1] == 8
    assert data[2:18] == GID and data[18:50] == ALICE
    assert struct.unpack(">Q", data[50:58])[0] == 5
    assert data[58:90] == b"\x09" * 32
    assert struct.unpack(">QQI", data[90:110]) == (9, 1234, 3)
    assert data[110] == 1 and data[111] == 2
    assert data[112:176] == PARENT_A + PARENT_B
    assert struct.unpack(">I", data[176:180])[0] == 40
    assert data[180:220] == b"\xaa" * 40 and data[220:] == SIG[SigKind.ED25519]
    assert record.header() == data[:176]  # the AAD: up to, excluding, the body length
    assert record.signed_part() == data[:220]
    assert record.hash() == hashlib.sha256(b"chatp2p group record v1\x00" + data[:220]).digest()


def test_hash_and_header_do_not_depend_on_the_signature_or_body():
    record = make()
    assert record.with_signature(b"\x00" * 64).hash() == record.hash()
    other_body = Record(**{**_fields(record), "body": b"\xbb" * 40})
    assert other_body.header() == record.header()
    assert other_body.hash() != record.hash()


def _fields(record: Record) -> dict:
    return {name: getattr(record, name) for name in ("kind", "group_id", "author", "seq", "prev", "depth",
                                                     "created_ms", "key_epoch", "sig_kind", "parents", "body")}


def test_encode_needs_the_signature_of_its_kind():
    draft = Record(**_fields(make()))
    with pytest.raises(GroupWireError, match="64-byte signature"):
        draft.encode()
    with pytest.raises(GroupWireError):
        draft.with_signature(b"\x01" * 3373).encode()


def _reencode(record: Record, **changes) -> bytes:
    """Bytes of `record` with fields changed, bypassing check_record (as a hostile peer would)."""
    fields = {**_fields(record), **changes}
    draft = Record(**fields)
    return draft.signed_part() + SIG[draft.sig_kind]


@pytest.mark.parametrize("kind, changes, reason", [
    (Kind.MESSAGE, dict(seq=0), "seq must be"),
    (Kind.MESSAGE, dict(seq=1), "prev zero"),  # seq 1 with a non-zero prev
    (Kind.MESSAGE, dict(prev=bytes(32)), "prev zero"),  # seq 2 with a zero prev
    (Kind.MESSAGE, dict(depth=0), "depth"),
    (Kind.MESSAGE, dict(depth=1), "depth >= 2"),
    (Kind.MESSAGE, dict(parents=()), "name a parent"),
    (Kind.MESSAGE, dict(parents=(PARENT_B, PARENT_A)), "ascending"),
    (Kind.MESSAGE, dict(parents=(PARENT_A, PARENT_A)), "distinct"),
    (Kind.MESSAGE, dict(key_epoch=0), "key_epoch"),
    (Kind.KEY, dict(key_epoch=0), "key_epoch"),
    (Kind.CHECKPOINT, dict(key_epoch=4), "key_epoch"),
    (Kind.ADD, dict(sig_kind=SigKind.ED25519), "hybrid"),
    (Kind.KEY, dict(sig_kind=SigKind.ED25519), "hybrid"),
    (Kind.CHECKPOINT, dict(sig_kind=SigKind.ED25519), "hybrid"),
    (Kind.CREATE, dict(group_id=GID), "zero group_id"),
    (Kind.CREATE, dict(depth=2), "depth 1"),
    (Kind.CREATE, dict(parents=(PARENT_A,)), "no parents"),
    (Kind.CREATE, dict(seq=2, prev=b"\x01" * 32), "seq 1"),
    (Kind.LEAVE, dict(body=b"\x00"), "empty body"),
    (Kind.CHECKPOINT, dict(body=b"x"), "empty body"),
    (Kind.MESSAGE, dict(body=b"\x00" * 15), "AEAD tag"),
    (Kind.REMOVE, dict(body=BOB), "REMOVE body"),
    (Kind.ADD, dict(body=b"\x02" + BODIES[Kind.ADD][1:]), "role"),
    (Kind.CREATE, dict(body=BODIES[Kind.CREATE] + b"x"), "bundle length"),
    (Kind.RENAME, dict(body=b"\x00"), "name length"),
    (Kind.RENAME, dict(body=b"\x02\xff\xfe"), "UTF-8"),
    (Kind.KEY, dict(body=BODIES[Kind.KEY][:-1]), "KEY body"),
])
def test_ill_formed_records_are_refused(kind, changes, reason):
    data = _reencode(make(kind), **changes)
    with pytest.raises(GroupWireError, match=reason):
        gr.decode_record(data)


def test_layout_errors_are_refused():
    data = make().encode()
    for bad, reason in [
        (data + b"\x00", "does not match"),
        (data[:-1], "does not match"),
        (data[:100], "too short"),
        (b"\x02" + data[1:], "version"),
        (data[:1] + b"\x0a" + data[2:], "kind"),
        (data[:110] + b"\x03" + data[111:], "signature kind"),
        (data[:111] + b"\x11" + data[112:], "parents"),
        (data[:111] + b"\x0f" + data[112:], "cut short"),
        (b"\x00" * (gr.MAX_RECORD + 1), "too long"),
        (data[:176] + struct.pack(">I", gr.MAX_BODY + 1) + data[180:], "too long"),
        ("text", "bytes"),
    ]:
        with pytest.raises(GroupWireError, match=reason):
            gr.decode_record(bad)


def test_a_message_signed_with_hybrid_is_well_formed():
    record = make(Kind.MESSAGE, sig_kind=SigKind.HYBRID)
    assert gr.decode_record(record.encode()).sig_kind == SigKind.HYBRID


def test_constructor_refuses_what_the_layout_cannot_hold():
    fields = _fields(make())
    for change in (dict(author=b"short"), dict(group_id=b"x" * 17), dict(seq=-1), dict(depth=1 << 64),
                   dict(key_epoch=1 << 32), dict(parents=(PARENT_A,) * 17), dict(body=b"x" * (gr.MAX_BODY + 1)),
                   dict(kind=10), dict(sig_kind=3), dict(seq=True), dict(parents=(b"x",))):
        with pytest.raises(GroupWireError):
            Record(**{**fields, **change})


def test_random_bytes_raise_only_group_wire_errors():
    rng = random.Random(15)
    good = [make(k).encode() for k in Kind]
    for _ in range(3000):
        base = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        data = bytes(base[: rng.randrange(len(base) + 1)]) if rng.random() < 0.3 else bytes(base)
        try:
            gr.decode_record(data)
        except GroupWireError:
            pass


# ---------------------------------------------------------------- bodies


def test_bodies_round_trip():
    assert gr.decode_create(gr.encode_create("Famille ☕", BUNDLE)) == ("Famille ☕", BUNDLE)
    assert gr.decode_add(gr.encode_add(1, BUNDLE)) == (1, BUNDLE)
    assert gr.decode_remove(gr.encode_remove(BOB, 2**64 - 1)) == (BOB, 2**64 - 1)
    assert gr.decode_promote(gr.encode_promote(BOB)) == BOB
    assert gr.decode_rename(gr.encode_rename("x" * 64)) == "x" * 64
    envelopes = [gr.KeyEnvelope(bytes([i]) * 32, bytes([i]) * 1120, bytes([i]) * 48) for i in range(64)]
    assert gr.decode_key(gr.encode_key(envelopes)) == tuple(envelopes)
    assert gr.decode_key(gr.encode_key([])) == ()


def test_bad_bodies_are_refused():
    for call in (lambda: gr.encode_create("", BUNDLE), lambda: gr.encode_create("x" * 65, BUNDLE),
                 lambda: gr.encode_create("é" * 33, BUNDLE), lambda: gr.encode_create("\ud800", BUNDLE),
                 lambda: gr.encode_create(5, BUNDLE), lambda: gr.encode_create("ok", b""),
                 lambda: gr.encode_add(2, BUNDLE), lambda: gr.encode_remove(BOB, -1),
                 lambda: gr.encode_remove(b"x", 1), lambda: gr.encode_promote(b"x" * 31),
                 lambda: gr.encode_key([ENVELOPE, ENVELOPE]),
                 lambda: gr.KeyEnvelope(BOB, b"x" * 1119, b"x" * 48),
                 lambda: gr.decode_key(b""), lambda: gr.decode_key(b"\x41" + b"\x00" * 1200 * 65),
                 lambda: gr.decode_key(gr.encode_key([ENVELOPE]) + ENVELOPE.recipient + ENVELOPE.enc + ENVELOPE.sealed),
                 lambda: gr.decode_add(b""), lambda: gr.decode_create(b"\x02ab\x00"),
                 lambda: gr.decode_create(b"\x02ab\x00\x00"), lambda: gr.decode_rename(b"\x02abc")):
        with pytest.raises(GroupWireError):
            call()


def test_key_body_with_a_recipient_twice_is_refused():
    body = b"\x02" + (ENVELOPE.recipient + ENVELOPE.enc + ENVELOPE.sealed) * 2
    with pytest.raises(GroupWireError, match="twice"):
        gr.decode_key(body)


# ---------------------------------------------------------------- plaintext


def test_plaintext_round_trips_and_layout():
    text = gr.MessagePlain("m1", text="hello ✓")
    data = gr.encode_plain(text)
    assert data == b"\x01\x02m1" + "hello ✓".encode()
    assert gr.decode_plain(data) == text
    assert gr.decode_plain(gr.encode_plain(gr.MessagePlain("m", text=""))) == gr.MessagePlain("m", text="")
    announce = gr.FileAnnounce(b"\x03" * 16, 2**40, "photo.jpg")
    data = gr.encode_plain(gr.MessagePlain("a" * 32, file=announce))
    assert data[:34] == b"\x02\x20" + b"a" * 32 and data[34:50] == b"\x03" * 16
    assert gr.decode_plain(data) == gr.MessagePlain("a" * 32, file=announce)
    big = gr.MessagePlain("m", text="x" * gr.MAX_TEXT)
    assert gr.decode_plain(gr.encode_plain(big)) == big


def test_bad_plaintext_is_refused():
    for plain in (gr.MessagePlain("", text="x"), gr.MessagePlain("x" * 256, text="x"),
                  gr.MessagePlain("m"), gr.MessagePlain("m", text="x", file=gr.FileAnnounce(b"\x00" * 16, 1, "f")),
                  gr.MessagePlain("m", text="x" * (gr.MAX_TEXT + 1)), gr.MessagePlain("m", text="\udcff"),
                  gr.MessagePlain("m", file=gr.FileAnnounce(b"\x00" * 16, 1, "")),
                  gr.MessagePlain("m", file=gr.FileAnnounce(b"\x00" * 16, 1, "f" * 256)),
                  gr.MessagePlain("m", file=gr.FileAnnounce(b"\x00" * 15, 1, "f")),
                  gr.MessagePlain("m", file=gr.FileAnnounce(b"\x00" * 16, -1, "f"))):
        with pytest.raises(GroupWireError):
            gr.encode_plain(plain)
    for data in (b"", b"\x01", b"\x03\x01m", b"\x01\x00", b"\x01\x05ab", b"\x01\x01\xff",
                 b"\x01\x01m\xff\xfe", b"\x01\x01m" + b"x" * (gr.MAX_TEXT + 1),
                 b"\x02\x01m" + b"\x00" * 24, b"\x02\x01m" + b"\x00" * 24 + b"f" * 256):
        with pytest.raises(GroupWireError):
            gr.decode_plain(data)


def test_group_file_transfer_id():
    file_id = b"\x44" * 16
    expected = hashlib.sha256(b"chatp2p group file v1" + file_id + BOB).digest()[:16]
    assert gr.group_file_transfer_id(file_id, BOB) == expected
    assert gr.group_file_transfer_id(file_id, ALICE) != expected
    with pytest.raises(GroupWireError):
        gr.group_file_transfer_id(b"x", BOB)


# ---------------------------------------------------------------- frames


def test_frames_round_trip():
    have = gr.Have(GID, (gr.AuthorRanges(ALICE, 3, ((1, 1), (3, 9), (12, 2**64 - 1))), gr.AuthorRanges(BOB, 0, ())),
                   (ALICE[:8], BOB[:8]))
    data = gr.encode_frame(have)
    assert data[0] == 1 and data[1:17] == GID and data[17] == 2
    assert gr.decode_frame(data) == have
    assert gr.decode_frame(gr.encode_frame(gr.Have(GID, (), ()))) == gr.Have(GID, (), ())
    records = gr.RecordsFrame(GID, (make().encode(), make(Kind.ADD).encode()))
    data = gr.encode_frame(records)
    assert data[0] == 2 and struct.unpack(">HI", data[17:23]) == (2, len(records.records[0]))
    assert gr.decode_frame(data) == records
    hint = gr.Hint(GID, BOB, (("192.0.2.7", 4000), ("2001:db8::7", 9)))
    data = gr.encode_frame(hint)
    assert len(data) == 1 + 16 + 32 + 1 + 6 + 19
    assert gr.decode_frame(data) == hint


def test_records_frames_are_bounded():
    record = make(Kind.MESSAGE, body=b"\x00" * gr.MAX_BODY).encode()
    assert len(gr.encode_frame(gr.RecordsFrame(GID, (record,) * 2))) < gr.MAX_RECORDS_FRAME
    with pytest.raises(GroupWireError, match="too long"):
        gr.encode_frame(gr.RecordsFrame(GID, (record,) * 3))
    with pytest.raises(GroupWireError, match="too long"):
        gr.decode_frame(b"\x02" + GID + b"\x00" * gr.MAX_RECORDS_FRAME)
    with pytest.raises(GroupWireError):
        gr.encode_frame(gr.RecordsFrame(GID, ()))


@pytest.mark.parametrize("data, reason", [
    (b"", "too short"),
    (b"\x04" + GID + b"\x00\x00", "unknown group frame type"),
    (b"\x01" + GID, "cut short"),
    (b"\x01" + GID + b"\x00\x00\x00", "trailing"),
    (b"\x01" + GID + b"\x01" + ALICE + b"\x00" * 8 + b"\x01" + struct.pack(">QQ", 5, 4) + b"\x00", "ascending"),
    (b"\x01" + GID + b"\x01" + ALICE + b"\x00" * 8 + b"\x01" + struct.pack(">QQ", 0, 4) + b"\x00", "first"),
    (b"\x01" + GID + b"\x01" + ALICE + b"\x00" * 8 + b"\x02" + struct.pack(">QQQQ", 1, 4, 4, 5) + b"\x00", "disjoint"),
    (b"\x01" + GID + b"\x01" + ALICE + b"\x00" * 8 + b"\x11" + struct.pack(">QQ", 1, 1) * 17 + b"\x00", "at most 16"),
    (b"\x01" + GID + b"\x02" + (ALICE + b"\x00" * 9) * 2 + b"\x00", "twice"),
    (b"\x01" + GID + b"\x00\x02" + b"\x00" * 8, "cut short"),
    (b"\x02" + GID + b"\x00\x00", "empty"),
    (b"\x02" + GID + b"\x00\x01" + struct.pack(">I", 100) + b"x" * 99, "cut short"),
    (b"\x02" + GID + b"\x00\x01" + struct.pack(">I", gr.MAX_RECORD + 1), "too long"),
    (b"\x03" + GID + BOB + b"\x00", "1-16 addresses"),
    (b"\x03" + GID + BOB + b"\x01" + bytes([192, 0, 2, 1, 0, 0]), "port"),
    (b"\x03" + GID + BOB + b"\x01" + bytes([224, 0, 0, 1, 0, 9]), "unusable"),
    (b"\x03" + GID + BOB + b"\x01" + b"\xf6" + b"\x20\x01" + b"\x00" * 10, "cut short"),
    (b"\x03" + GID + BOB + b"\x01" + bytes([192, 0, 2, 1, 0, 9]) + b"\x00", "trailing"),
])
def test_hostile_frames_are_refused(data, reason):
    with pytest.raises(GroupWireError, match=reason):
        gr.decode_frame(data)


def test_bad_frames_are_not_encoded():
    for frame in (gr.Have(GID, (gr.AuthorRanges(ALICE, 0, ((2, 1),)),), ()),
                  gr.Have(GID, (gr.AuthorRanges(ALICE, 0, ()),) * 2, ()),
                  gr.Have(GID, (), (b"short",)),
                  gr.Have(GID, (gr.AuthorRanges(ALICE, -1, ()),), ()),
                  gr.Hint(GID, BOB, ()), gr.Hint(GID, BOB, (("0.0.0.0", 9),)),
                  gr.Hint(GID, BOB, (("192.0.2.1", 9),) * 17), gr.Have(b"x", (), ()), "not a frame"):
        with pytest.raises(GroupWireError):
            gr.encode_frame(frame)  # type: ignore[arg-type]


def test_random_frames_raise_only_group_wire_errors():
    rng = random.Random(16)
    good = [gr.encode_frame(gr.Have(GID, (gr.AuthorRanges(ALICE, 1, ((1, 5), (7, 8))),), (BOB[:8],))),
            gr.encode_frame(gr.RecordsFrame(GID, (make().encode(),))),
            gr.encode_frame(gr.Hint(GID, BOB, (("192.0.2.7", 4000), ("2001:db8::7", 9))))]
    for _ in range(3000):
        base = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        try:
            gr.decode_frame(bytes(base[: rng.randrange(1, len(base) + 1)]))
        except GroupWireError:
            pass
