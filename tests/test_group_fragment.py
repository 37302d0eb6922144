"""GROUP records (PROTOCOL §13.8): the record codec, cutting frames, bounded reassembly against
hostile fragments (overlaps, oversize totals, too many partials, garbage). Pure: no I/O."""

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.codec import wire
from chatp2p_core.codec.groupfragment import (
    FRAME_TIMEOUT, MAX_FRAME, MAX_PARTIALS, Drop, FrameAssembler, GroupFragment, fragment_capacity,
    fragment_frame,
)
from chatp2p_core.codec.wire import RawRecord, WireError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def roundtrip(record):
    return wire.decode_records(wire.encode_record(record))


# ---------------------------------------------------------------- the record


def test_group_record_round_trips_with_its_type_byte():
    fragment = GroupFragment(7, 100, 40, b"x" * 60)
    encoded = wire.encode_record(fragment)
    assert encoded[0] == 0x08 == wire.RecordType.GROUP
    assert int.from_bytes(encoded[1:3], "big") == 12 + 60
    assert encoded[3:15] == (7).to_bytes(4, "big") + (100).to_bytes(4, "big") + (40).to_bytes(4, "big")
    assert roundtrip(fragment) == [fragment]


@FAST
@given(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=3000), st.integers(1, 1200))
def test_fragments_of_any_frame_decode_and_join_back(frame_id, frame, capacity):
    fragments = fragment_frame(frame_id, frame, capacity)
    assert all(len(f.data) <= capacity and f.total == len(frame) and f.frame_id == frame_id for f in fragments)
    decoded = wire.decode_records(wire.encode_records(fragments))
    assert decoded == fragments
    assert b"".join(f.data for f in decoded) == frame


@pytest.mark.parametrize("body, reason", [
    (b"", "too short"),
    (b"\x00" * 11, "too short"),
    ((1).to_bytes(4, "big") + (10).to_bytes(4, "big") + (0).to_bytes(4, "big"), "empty"),
    ((1).to_bytes(4, "big") + (10).to_bytes(4, "big") + (8).to_bytes(4, "big") + b"abc", "past"),
    ((1).to_bytes(4, "big") + (0).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"a", "past"),
    ((1).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") + b"ab", "past"),
])
def test_malformed_group_bodies_raise_wire_error(body, reason):
    datagram_plaintext = bytes([0x08]) + len(body).to_bytes(2, "big") + body
    with pytest.raises(WireError, match=reason):
        wire.decode_records(datagram_plaintext)


@FAST
@given(st.binary(max_size=200))
def test_garbage_after_a_group_type_byte_raises_only_wire_error(garbage):
    try:
        wire.decode_records(b"\x08" + garbage)
    except WireError:
        pass


def test_0x08_is_no_longer_a_raw_record():
    with pytest.raises(WireError, match="own class"):
        RawRecord(0x08, b"")


def test_one_full_fragment_fills_a_datagram():
    capacity = fragment_capacity(wire.MAX_DATAGRAM)
    fragment = fragment_frame(1, b"z" * (capacity + 1), capacity)[0]
    assert len(wire.encode_record(fragment)) == wire.payload_capacity(wire.MAX_DATAGRAM)


@pytest.mark.parametrize("frame, capacity", [(b"", 100), (b"a" * (MAX_FRAME + 1), 1000), (b"a", 0)])
def test_fragment_frame_refuses_caller_bugs(frame, capacity):
    with pytest.raises(ValueError):
        fragment_frame(1, frame, capacity)


# ---------------------------------------------------------------- reassembly


def feed(assembler, session, fragments, now=0.0):
    frames = []
    for fragment in fragments:
        frame, _ = assembler.add(session, fragment, now)
        if frame is not None:
            frames.append(frame)
    return frames


@FAST
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700), st.randoms(use_true_random=False))
def test_any_order_and_duplicates_give_the_frame_once(frame, capacity, rng):
    fragments = fragment_frame(3, frame, capacity)
    shuffled = fragments + rng.sample(fragments, len(fragments) // 2)
    rng.shuffle(shuffled)
    assembler = FrameAssembler()
    frames = []
    for fragment in shuffled:
        try:
            got, _ = assembler.add("s", fragment, 0.0)
        except Drop as drop:
            assert drop.reason == "group_fragments_duplicate"  # after completion only
            continue
        if got is not None:
            frames.append(got)
    assert frames == [frame]
    assert assembler.partials("s") == 0 and assembler.buffered == 0


def test_overlapping_fragments_with_the_same_bytes_are_accepted():
    frame = bytes(range(256)) * 4
    assembler = FrameAssembler()
    pieces = [GroupFragment(1, len(frame), off, frame[off:off + 300]) for off in (0, 200, 500, 700, 1000)]
    pieces[-1] = GroupFragment(1, len(frame), 1000, frame[1000:])
    assert feed(assembler, "s", pieces) == [frame]


def test_overlapping_fragments_that_disagree_drop_the_frame():
    assembler = FrameAssembler()
    assert feed(assembler, "s", [GroupFragment(1, 100, 0, b"a" * 60)]) == []
    with pytest.raises(Drop, match="conflicting"):
        assembler.add("s", GroupFragment(1, 100, 50, b"b" * 50), 0.0)
    assert assembler.partials("s") == 0 and assembler.buffered == 0
    # the sender's resend starts it afresh
    assert feed(assembler, "s", [GroupFragment(1, 100, 0, b"c" * 60), GroupFragment(1, 100, 60, b"c" * 40)]) == [b"c" * 100]


def test_a_fragment_disagreeing_on_the_total_drops_the_frame():
    assembler = FrameAssembler()
    feed(assembler, "s", [GroupFragment(1, 100, 0, b"a" * 10)])
    with pytest.raises(Drop, match="conflicting"):
        assembler.add("s", GroupFragment(1, 200, 10, b"a" * 10), 0.0)
    assert assembler.buffered == 0


def test_an_oversize_total_is_refused_before_anything_is_reserved():
    assembler = FrameAssembler()
    with pytest.raises(Drop, match="oversize"):
        assembler.add("s", GroupFragment(1, MAX_FRAME + 1, 0, b"a"), 0.0)
    with pytest.raises(Drop, match="oversize"):
        assembler.add("s", GroupFragment(2, 2**32 - 1, 5, b"a"), 0.0)
    assert assembler.buffered == 0 and assembler.partials("s") == 0


def test_too_many_partials_evict_the_sessions_oldest():
    assembler = FrameAssembler()
    for frame_id in range(MAX_PARTIALS):
        assert assembler.add("s", GroupFragment(frame_id, 1000, 0, b"a"), float(frame_id)) == (None, 0)
    assert assembler.partials("s") == MAX_PARTIALS
    assert assembler.add("s", GroupFragment(99, 1000, 0, b"a"), 50.0) == (None, 1)
    assert assembler.partials("s") == MAX_PARTIALS
    # frame 0 was the one evicted: its next fragment starts it anew and cannot complete it
    frame, evicted = assembler.add("s", GroupFragment(0, 1000, 1, b"a" * 999), 51.0)
    assert frame is None and evicted == 1
    # the newest frames are still there
    assert assembler.add("s", GroupFragment(99, 1000, 1, b"b" * 999), 52.0)[0] == b"a" + b"b" * 999


def test_the_total_budget_evicts_the_heaviest_session_not_a_light_one():
    assembler = FrameAssembler(max_buffered=10_000, max_frame=4_000)
    assembler.add("flood", GroupFragment(1, 4000, 0, b"a"), 0.0)
    assembler.add("flood", GroupFragment(2, 4000, 0, b"a"), 1.0)
    assembler.add("honest", GroupFragment(1, 1000, 0, b"h"), 2.0)
    assert assembler.buffered == 9000
    frame, evicted = assembler.add("other", GroupFragment(1, 2000, 0, b"o"), 3.0)
    assert evicted == 1 and assembler.buffered == 7000
    assert assembler.partials("flood") == 1 and assembler.partials("honest") == 1
    # the honest session's frame completes
    assert assembler.add("honest", GroupFragment(1, 1000, 1, b"h" * 999), 4.0)[0] == b"h" * 1000


def test_incomplete_frames_expire_and_free_their_bytes():
    assembler = FrameAssembler()
    assembler.add("s", GroupFragment(1, 5000, 0, b"a" * 10), 100.0)
    assembler.add("t", GroupFragment(1, 5000, 0, b"a" * 10), 105.0)
    assert assembler.expire(100.0 + FRAME_TIMEOUT - 0.01) == 0
    assert assembler.expire(100.0 + FRAME_TIMEOUT) == 1
    assert assembler.partials("s") == 0 and assembler.partials("t") == 1 and assembler.buffered == 5000
    assert assembler.expire(105.0 + FRAME_TIMEOUT) == 1 and assembler.buffered == 0


def test_dropping_a_session_forgets_its_partials_and_ids():
    assembler = FrameAssembler()
    assert feed(assembler, "s", [GroupFragment(5, 1, 0, b"x")]) == [b"x"]
    with pytest.raises(Drop, match="duplicate"):
        assembler.add("s", GroupFragment(5, 1, 0, b"x"), 0.0)
    assembler.add("s", GroupFragment(6, 100, 0, b"x"), 0.0)
    assembler.drop_session("s")
    assert assembler.buffered == 0 and assembler.partials("s") == 0
    assert feed(assembler, "s", [GroupFragment(5, 1, 0, b"y")]) == [b"y"]  # a new session may reuse ids


def test_random_garbage_fragments_never_break_the_bounds():
    rng = random.Random(15)
    assembler = FrameAssembler()
    for step in range(3000):
        total = rng.choice([1, 2, 100, 1000, MAX_FRAME, MAX_FRAME + 1, 2**32 - 1])
        offset = rng.randrange(0, total)
        data = bytes(rng.randrange(3) for _ in range(min(rng.randrange(1, 50), total - offset)))
        try:
            assembler.add(rng.choice("abc"), GroupFragment(rng.randrange(40), total, offset, data), step * 0.01)
        except Drop:
            pass
        assert assembler.buffered <= assembler.max_buffered
        assert all(assembler.partials(s) <= MAX_PARTIALS for s in "abc")
    assembler.expire(1e9)
    assert assembler.buffered == 0
