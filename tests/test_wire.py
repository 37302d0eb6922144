"""wire: demultiplexing, packet codecs, fragmentation and bounded reassembly, records."""

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.codec import filecodec, wire
from chatp2p_core.codec.wire import (
    Ack,
    Close,
    CookiePacket,
    DataHeader,
    Done,
    Fragment,
    HandshakeFragment,
    Hello,
    Kind,
    Msg,
    Padding,
    PacketType,
    Ping,
    Pong,
    RawRecord,
    ReassemblyError,
    Reassembler,
    WireError,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

conn_ids = st.binary(min_size=8, max_size=8)
nonces = st.binary(min_size=16, max_size=16)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------- demultiplexing


@given(st.binary(min_size=1, max_size=40))
def test_classify_by_first_byte(data):
    first = data[0]
    kind = wire.classify(data)
    if first <= 3:
        assert kind is Kind.STUN
    elif 0x40 <= first <= 0x4F:
        assert kind is Kind.TURN_CHANNEL
    elif 0xC0 <= first <= 0xCF:
        assert kind is Kind.CHATP2P
    else:
        assert kind is Kind.UNKNOWN


@given(st.binary(max_size=40))
def test_is_chatp2p_is_classify_saying_chatp2p(data):
    assert wire.is_chatp2p(data) == (wire.classify(data) is Kind.CHATP2P)


def test_classify_empty_and_v1_byte():
    assert wire.classify(b"") is Kind.UNKNOWN
    assert wire.VERSION_BYTE == 0xC1
    assert wire.classify(Hello(b"c" * 8, b"n" * 16).encode()) is Kind.CHATP2P


def test_parse_prefix_rejects_other_versions_and_types():
    good = Done(b"c" * 8, b"x" * 32).encode()
    assert wire.parse_prefix(good) == (PacketType.DONE, b"c" * 8)
    for bad in (b"\xc2" + good[1:], b"\x00" + good[1:], good[:1] + b"\x7f" + good[2:], good[:9], b""):
        with pytest.raises(WireError):
            wire.parse_prefix(bad)
    with pytest.raises(WireError):
        wire.parse_prefix("not bytes")


@given(st.binary(max_size=80))
def test_every_decoder_raises_only_wire_error_on_random_bytes(data):
    for decoder in (
        wire.parse_prefix,
        Hello.decode,
        CookiePacket.decode,
        Done.decode,
        HandshakeFragment.decode,
        DataHeader.decode,
        wire.decode_records,
    ):
        try:
            decoder(data)
        except WireError:
            pass


@given(st.binary(max_size=70))
def test_decoders_with_a_valid_prefix_raise_only_wire_error(tail):
    for ptype in PacketType:
        data = bytes([0xC1, ptype]) + tail
        for decoder in (Hello.decode, CookiePacket.decode, Done.decode, HandshakeFragment.decode, DataHeader.decode):
            try:
                decoder(data)
            except WireError:
                pass


# ---------------------------------------------------------------- HELLO, COOKIE, DONE


@given(conn_ids, nonces, st.integers(wire.HELLO_LEN, 1200))
def test_hello_round_trip_and_padding(conn_id, nonce, size):
    data = Hello(conn_id, nonce).encode(size)
    assert len(data) == size
    assert Hello.decode(data) == Hello(conn_id, nonce)


def test_short_hello_is_refused_and_cookie_is_not_larger():
    data = Hello(b"c" * 8, b"n" * 16).encode()
    assert len(data) == wire.HELLO_LEN == 64
    with pytest.raises(WireError):
        Hello.decode(data[:-1])
    cookie = CookiePacket(b"c" * 8, b"n" * 16, b"k" * 16).encode()
    assert len(cookie) == wire.COOKIE_PACKET_LEN <= len(data)


@given(conn_ids, nonces, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32))
def test_cookie_and_done_round_trip_and_truncation(conn_id, nonce, cookie, confirm):
    packet = CookiePacket(conn_id, nonce, cookie)
    data = packet.encode()
    assert CookiePacket.decode(data) == packet
    done = Done(conn_id, confirm)
    assert Done.decode(done.encode()) == done
    for cut in range(len(data)):
        with pytest.raises(WireError):
            CookiePacket.decode(data[:cut])
        with pytest.raises(WireError):
            Done.decode(done.encode()[:cut])
    with pytest.raises(WireError):
        Done.decode(done.encode() + b"\x00")


def test_field_sizes_are_checked():
    with pytest.raises(WireError):
        Hello(b"short", b"n" * 16)
    with pytest.raises(WireError):
        CookiePacket(b"c" * 8, b"n" * 16, b"k" * 15)
    with pytest.raises(WireError):
        HandshakeFragment(PacketType.RESP, b"c" * 8, Fragment(0, 1, 1, b"x"), cookie=b"k" * 16)
    with pytest.raises(WireError):
        HandshakeFragment(PacketType.INIT, b"c" * 8, Fragment(0, 1, 1, b"x"))
    with pytest.raises(WireError):
        HandshakeFragment(PacketType.DATA, b"c" * 8, Fragment(0, 1, 1, b"x"))


# ---------------------------------------------------------------- fragments


@FAST
@given(
    st.sampled_from([PacketType.INIT, PacketType.RESP, PacketType.AUTH]),
    conn_ids,
    st.binary(min_size=1, max_size=9000),
    st.integers(wire.MIN_DATAGRAM, 1500),
    st.randoms(use_true_random=False),
)
def test_fragment_round_trip_any_order_with_duplicates(ptype, conn_id, message, max_datagram, rnd):
    cookie = b"k" * 16 if ptype == PacketType.INIT else b""
    datagrams = wire.fragment_message(ptype, conn_id, message, max_datagram, cookie)
    assert all(len(d) <= max_datagram for d in datagrams)
    sizes = [len(d) for d in datagrams]
    assert max(sizes) - min(sizes) <= 1  # near-equal pieces
    shuffled = datagrams + rnd.sample(datagrams, len(datagrams) // 2)
    rnd.shuffle(shuffled)
    reassembler = Reassembler(max_message_bytes=10000, max_peer_bytes=10000)
    results = []
    for data in shuffled:
        frag = HandshakeFragment.decode(data)
        assert (frag.ptype, frag.conn_id, frag.cookie) == (ptype, conn_id, cookie)
        out = reassembler.add("peer", conn_id, frag.fragment, now=0.0)
        if out is not None:
            results.append(out)
    assert results == [message]
    assert len(reassembler) == 0 and reassembler.buffered_bytes() == 0


def test_fragment_message_limits():
    with pytest.raises(ValueError):
        wire.fragment_message(PacketType.RESP, b"c" * 8, b"x" * 100, max_datagram=100)
    with pytest.raises(ValueError):
        wire.fragment_message(PacketType.RESP, b"c" * 8, b"")
    with pytest.raises(ValueError):
        wire.fragment_message(PacketType.RESP, b"c" * 8, b"x" * 70000)


def test_default_datagram_limit():
    datagrams = wire.fragment_message(PacketType.RESP, b"c" * 8, bytes(7730))
    assert len(datagrams) == 7 and all(len(d) <= wire.MAX_DATAGRAM == 1200 for d in datagrams)


@given(st.binary(min_size=1, max_size=3000))
def test_fragment_truncations_and_bit_flips_raise_only_wire_error(message):
    data = wire.fragment_message(PacketType.AUTH, b"c" * 8, message)[0]
    for cut in range(wire.PREFIX_LEN + 5):
        with pytest.raises(WireError):
            HandshakeFragment.decode(data[:cut])
    for pos in range(min(len(data), 20)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        try:
            HandshakeFragment.decode(bytes(flipped))
        except WireError:
            pass


def frag(index, count, total, size=None):
    return Fragment(index, count, total, b"x" * (size if size is not None else max(1, total // count)))


def test_fragment_field_checks():
    for args in ((0, 0, 10), (2, 2, 10), (0, 1, 0), (0, 256, 10), (0, 1, 70000)):
        with pytest.raises(WireError):
            Fragment(*args, data=b"x")
    with pytest.raises(WireError):
        Fragment(0, 1, 2, b"xyz")  # more data than the message
    with pytest.raises(WireError):
        Fragment(0, 1, 2, b"")


def test_reassembler_limits_are_checked_before_storing():
    r = Reassembler(max_fragments=4, max_message_bytes=100, max_peer_bytes=150, max_peer_messages=2, max_messages=3)
    with pytest.raises(ReassemblyError):
        r.add("a", 1, frag(0, 5, 50), 0.0)  # too many fragments
    with pytest.raises(ReassemblyError):
        r.add("a", 1, frag(0, 2, 101), 0.0)  # message too large
    assert len(r) == 0 and r.buffered_bytes() == 0
    assert r.add("a", 1, frag(0, 2, 100), 0.0) is None
    with pytest.raises(ReassemblyError):
        r.add("a", 2, frag(0, 2, 60), 0.0)  # peer bytes: 100 + 60 > 150
    assert r.add("a", 2, frag(0, 2, 50), 0.0) is None
    with pytest.raises(ReassemblyError):
        r.add("a", 3, frag(0, 2, 10), 0.0)  # peer messages
    assert r.add("b", 1, frag(0, 2, 10), 0.0) is None
    with pytest.raises(ReassemblyError):
        r.add("c", 1, frag(0, 2, 10), 0.0)  # messages overall
    assert r.buffered_bytes("a") == 150 and r.buffered_bytes() == 160 and len(r) == 3
    r.discard("a", 1)
    assert r.buffered_bytes("a") == 50 and ("a", 1) not in r and ("a", 2) in r


def test_reassembler_inconsistent_fragments():
    r = Reassembler()
    r.add("p", "k", Fragment(0, 3, 30, b"a" * 10), 0.0)
    r.add("p", "k", Fragment(1, 3, 30, b"b" * 10), 0.0)
    with pytest.raises(ReassemblyError):                     # two agreeing fragments hold
        r.add("p", "k", Fragment(2, 4, 30, b"c" * 10), 0.0)
    with pytest.raises(ReassemblyError):
        r.add("p", "k", Fragment(2, 3, 31, b"c" * 10), 0.0)
    with pytest.raises(ReassemblyError):
        r.add("p", "k", Fragment(2, 3, 30, b"c" * 11), 0.0)  # more than the declared length
    assert r.add("p", "k", Fragment(0, 3, 30, b"z" * 10), 0.0) is None  # duplicate: first copy wins
    with pytest.raises(ReassemblyError):
        r.add("p", "k", Fragment(2, 3, 30, b"c" * 5), 0.0)  # complete but short: dropped
    assert len(r) == 0 and r.buffered_bytes() == 0


def test_a_forged_first_fragment_cannot_block_the_real_message():
    """Anyone on the path can send a first fragment with another count or length; it must not
    hold the key until the timeout: the real fragments replace a lone disagreeing one."""
    r = Reassembler(max_peer_messages=1)
    message = bytes(range(30))
    assert r.add("p", "k", Fragment(0, 5, 9000, b"forged"), 0.0) is None
    assert r.add("p", "k", Fragment(0, 3, 30, message[:10]), 0.0) is None
    assert r.add("p", "k", Fragment(1, 3, 30, message[10:20]), 0.0) is None
    with pytest.raises(ReassemblyError):                     # ... and cannot evict them
        r.add("p", "k", Fragment(3, 5, 9000, b"forged"), 0.0)
    assert r.add("p", "k", Fragment(2, 3, 30, message[20:]), 0.0) == message
    assert len(r) == 0 and r.buffered_bytes() == 0


def test_reassembler_timeout_on_caller_clock():
    r = Reassembler(timeout=5.0)
    r.add("p", 1, frag(0, 2, 20), 0.0)
    r.add("p", 2, frag(0, 2, 20), 3.0)
    assert r.expire(4.9) == 0
    assert r.expire(5.0) == 1 and ("p", 1) not in r and ("p", 2) in r
    assert r.add("p", 1, frag(1, 2, 20), 6.0) is None  # a late fragment starts over
    assert r.add("p", 2, frag(1, 2, 20), 8.1) is None  # expired on add
    assert ("p", 2) in r and len(r) == 2


@FAST
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(0, 5), st.integers(1, 200)), max_size=60))
def test_reassembler_never_exceeds_its_bounds(ops):
    r = Reassembler(max_fragments=4, max_message_bytes=150, max_peer_bytes=300, max_peer_messages=2, max_messages=5)
    for peer, count, index, total in ops:
        try:
            f = Fragment(index % count, count, total, b"x" * max(1, total // count))
        except WireError:
            continue
        try:
            r.add(peer, total % 3, f, 0.0)
        except ReassemblyError:
            pass
        assert len(r) <= 5
        for p in range(4):
            assert r.buffered_bytes(p) <= 300


# ---------------------------------------------------------------- data header


@given(conn_ids, st.integers(0, 255), u64)
def test_data_header_round_trip(conn_id, phase, counter):
    header = DataHeader(conn_id, phase, counter)
    data = header.encode()
    assert len(data) == wire.DATA_HEADER_LEN == 19
    assert DataHeader.decode(data + bytes(16)) == header
    with pytest.raises(WireError):
        DataHeader.decode(data + bytes(15))  # no room for the tag


def test_data_header_checks():
    with pytest.raises(WireError):
        DataHeader(b"c" * 8, 256, 0)
    with pytest.raises(WireError):
        DataHeader(b"c" * 8, 0, 2**64)


def test_capacities():
    assert wire.payload_capacity() == 1200 - 35
    record = Msg(b"m" * 16, 1, 2, 10**6, 0, b"x" * wire.msg_capacity())
    assert wire.DATA_OVERHEAD + wire.record_size(record) == 1200
    with pytest.raises(ValueError):
        wire.payload_capacity(100)


# ---------------------------------------------------------------- records


@st.composite
def msgs(draw):
    total = draw(st.integers(1, 70000))
    offset = draw(st.integers(0, total - 1))
    data = draw(st.binary(min_size=1, max_size=min(300, total - offset)))
    return Msg(draw(st.binary(min_size=16, max_size=16)), draw(u64), draw(u64), total, offset, data)


@st.composite
def group_fragments(draw):
    total = draw(st.integers(1, 2**32 - 1))
    offset = draw(st.integers(0, total - 1))
    data = draw(st.binary(min_size=1, max_size=min(300, total - offset)))
    return wire.GroupFragment(draw(u32), total, offset, data)


records = st.one_of(
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    msgs(),
    st.builds(
        Ack,
        st.lists(st.tuples(u64, u64).map(lambda t: (min(t), max(t))), max_size=5).map(tuple),
        st.lists(st.tuples(u64, u32, u32), max_size=5).map(tuple),
    ),
    st.builds(Close, st.integers(0, 0xFFFF), st.text(max_size=40)),
    st.builds(wire.PathChallenge, st.binary(min_size=8, max_size=8)),
    st.builds(wire.PathResponse, st.binary(min_size=8, max_size=8)),
    group_fragments(),
    st.builds(RawRecord, st.integers(0x09, 0xFF), st.binary(max_size=100)),
    st.builds(Padding, st.integers(1, 50)),
)


def merge_padding(items):
    """Adjacent Padding records decode as one run."""
    out = []
    for item in items:
        if isinstance(item, Padding) and out and isinstance(out[-1], Padding):
            out[-1] = Padding(out[-1].length + item.length)
        else:
            out.append(item)
    return out


@FAST
@given(st.lists(records, max_size=8))
def test_records_round_trip(items):
    encoded = wire.encode_records(items)
    assert len(encoded) == sum(wire.record_size(r) for r in items)
    assert wire.decode_records(encoded) == merge_padding(items)


@FAST
@given(st.lists(records.filter(lambda r: not isinstance(r, Padding)), min_size=1, max_size=5), st.data())
def test_record_truncation_inside_a_record_raises(items, data):
    encoded = [wire.encode_record(r) for r in items]
    boundaries = {sum(len(e) for e in encoded[:i]) for i in range(len(encoded) + 1)}
    cut = data.draw(st.integers(0, len(b"".join(encoded))))
    payload = b"".join(encoded)[:cut]
    if cut in boundaries:
        assert wire.decode_records(payload) == items[: sorted(boundaries).index(cut)]
    else:
        with pytest.raises(WireError):
            wire.decode_records(payload)


@FAST
@given(st.lists(records, max_size=4), st.integers(0, 10**6), st.integers(1, 255))
def test_record_bit_flips_raise_only_wire_error(items, where, mask):
    encoded = bytearray(wire.encode_records(items) or b"\x00")
    encoded[where % len(encoded)] ^= mask
    try:
        wire.decode_records(bytes(encoded))
    except WireError:
        pass


def test_malformed_record_bodies():
    bad = [
        b"\x01\x00\x07" + bytes(7),  # PING of 7 bytes
        b"\x02\x00\x09" + bytes(9),  # PONG of 9 bytes
        b"\x03\x00\x05" + bytes(5),  # MSG shorter than its header
        b"\x04\x00\x00",  # ACK without counts
        b"\x04\x00\x02\x01\x00",  # ACK announcing a range it does not hold
        b"\x04\x00\x03\x00\x00\x00",  # ACK with a trailing byte
        b"\x05\x00\x03\x00\x01\x05",  # CLOSE reason length mismatch
        b"\x05\x00\x05\x00\x01\x02\xff\xfe",  # CLOSE reason not UTF-8
        b"\x01\x00",  # truncated header
    ]
    for payload in bad:
        with pytest.raises(WireError):
            wire.decode_records(payload)
    # an ACK range whose first > last
    ack = b"\x04\x00\x12\x01" + (5).to_bytes(8, "big") + (4).to_bytes(8, "big") + b"\x00"
    with pytest.raises(WireError):
        wire.decode_records(ack)
    # a MSG segment past the message end
    head = wire.MSG_HEADER.pack(b"m" * 16, 1, 2, 10, 8) + b"abc"
    with pytest.raises(WireError):
        wire.decode_records(b"\x03" + len(head).to_bytes(2, "big") + head)


def test_record_constructors_check_fields():
    with pytest.raises(WireError):
        Msg(b"m" * 15, 0, 0, 1, 0, b"")
    with pytest.raises(WireError):
        Msg(b"m" * 16, 0, 0, 2, 1, b"xy")
    with pytest.raises(WireError):                 # an empty segment fills nothing, ever
        Msg(b"m" * 16, 0, 0, 2, 1, b"")
    with pytest.raises(WireError):
        Ack(((3, 2),))
    with pytest.raises(WireError):
        Ping(-1)
    with pytest.raises(WireError):
        Close(0, "x" * 256)
    with pytest.raises(WireError):
        RawRecord(int(wire.RecordType.MSG), b"")
    with pytest.raises(WireError):
        Padding(0)
    with pytest.raises(WireError):
        wire.encode_record("not a record")


def test_reserved_ranges_and_unknown_records_are_carried():
    assert list(wire.FILE_RECORD_TYPES) == list(range(0x20, 0x40))
    file_record = RawRecord(0x21, b"chunk")
    payload = wire.encode_records([Ping(1), file_record, Padding(3)])
    assert wire.decode_records(payload) == [Ping(1), file_record, Padding(3)]


def test_padding_runs():
    assert wire.decode_records(bytes(5)) == [Padding(5)]
    assert wire.decode_records(bytes(2) + wire.encode_record(Pong(7)) + bytes(1)) == [Padding(2), Pong(7), Padding(1)]


def test_address_bytes():
    assert wire.address_bytes(("192.0.2.1", 4000)) == b"\x09192.0.2.1\x0f\xa0"
    assert wire.address_bytes((b"\xc0\x00\x02\x01", 1)) == b"\x04\xc0\x00\x02\x01\x00\x01"
    for bad in (("h", 70000), ("h", -1), "host", ("h" * 300, 1), ("h", "1")):
        with pytest.raises(WireError):
            wire.address_bytes(bad)


def test_random_reassembly_order_sanity():
    rnd = random.Random(7)
    message = bytes(rnd.randrange(256) for _ in range(5000))
    datagrams = wire.fragment_message(PacketType.RESP, b"c" * 8, message, 700)
    rnd.shuffle(datagrams)
    r = Reassembler()
    out = [r.add("p", 1, HandshakeFragment.decode(d).fragment, 0.0) for d in datagrams]
    assert out[-1] == message and all(o is None for o in out[:-1])


def test_a_file_record_filling_the_payload_stays_encoded_and_decodes_in_one_step():
    # Every DATA frame of a file holds one file record and nothing else: frame_records hands
    # it on still encoded, and filecodec decodes DATA from it with one unpack, as a view.
    for body in (b"x", bytes(1400), bytes(range(256)) * 100):
        payload = wire.encode_record(RawRecord(0x22, body))
        assert wire.is_lone_file_record(payload) and wire.frame_records(payload) == [payload]
        assert filecodec.as_raw_record(payload) == RawRecord(0x22, body) == wire.decode_records(payload)[0]
        # followed by anything, or a length that does not fill it: decoded the general way
        assert wire.frame_records(payload + bytes(2)) == [RawRecord(0x22, body), Padding(2)]
        with pytest.raises(WireError):
            wire.frame_records(payload[:-1])
    assert wire.frame_records(wire.encode_record(RawRecord(0x40, b"later"))) == [RawRecord(0x40, b"later")]
    assert wire.frame_records(wire.encode_record(Ping(3))) == [Ping(3)]
    assert not wire.is_lone_file_record(b"") and not wire.is_lone_file_record(b"\x21\x00")
    data = filecodec.Data(b"t" * 16, 7, 4096, b"file bytes")
    encoded = filecodec.data_record_header(data.tid, data.pn, data.offset, len(data.data)) + data.data
    [(tid, start, end, pieces, pns)] = filecodec.decode_data_runs([encoded])
    assert (tid, start, end, [bytes(p) for p in pieces], pns) == (data.tid, 4096, 4096 + 10, [data.data], [7])
    large = filecodec.data_record_header(data.tid, 8, 0, 60000) + bytes(60000)  # loopback-sized: a view
    assert isinstance(filecodec.decode_data_runs([large])[0][3][0], memoryview)
    for bad in (encoded[:-1], encoded[:20], b"\x23" + encoded[1:], encoded + b"x"):  # 0x23: an ACK
        with pytest.raises(WireError):
            filecodec.decode_data_runs([encoded, bad])


def test_data_records_make_runs_of_consecutive_bytes_of_one_transfer():
    def record(tid, pn, offset, length):
        return filecodec.data_record_header(tid, pn, offset, length) + bytes([pn]) * length
    one, two = b"1" * 16, b"2" * 16
    batch = [record(one, 0, 0, 100), record(one, 1, 100, 100), record(one, 2, 200, 50),  # a flow
             record(two, 3, 250, 100),                                                    # another transfer
             record(one, 4, 250, 100),                                                    # back: a new run
             record(one, 5, 500, 100), record(one, 6, 600, 0), record(one, 7, 600, 10),   # after a gap
             record(one, 8, 0, 100)]                                                      # a resend, behind
    runs = filecodec.decode_data_runs(batch)
    assert [(tid, start, end, [len(p) for p in pieces], pns) for tid, start, end, pieces, pns in runs] == [
        (one, 0, 250, [100, 100, 50], [0, 1, 2]), (two, 250, 350, [100], [3]), (one, 250, 350, [100], [4]),
        (one, 500, 610, [100, 0, 10], [5, 6, 7]), (one, 0, 100, [100], [8])]
    assert all(bytes(piece) == bytes([pn]) * len(piece) for *_, pieces, pns in runs for piece, pn in zip(pieces, pns))
    assert filecodec.decode_data_runs([]) == []