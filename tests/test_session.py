"""session: sealing and opening DATA frames, replay window, rekey, drop accounting."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.codec import wire
from chatp2p_core.crypto.session import (
    DropReason,
    FrameDropped,
    ReplayWindow,
    Role,
    Session,
    SessionConfig,
    SessionError,
    SessionKeys,
    Suite,
)
from chatp2p_core.codec.wire import Close, Msg, Padding, Ping, Pong

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(suite=Suite.AES_256_GCM, config=SessionConfig(), now=0.0):
    """Two sessions wired to each other, as a handshake would leave them."""
    i2r, r2i = os.urandom(32), os.urandom(32)
    cid_i, cid_r = os.urandom(8), os.urandom(8)
    a = Session(SessionKeys(Role.INITIATOR, suite, cid_i, cid_r, i2r, r2i), now, config)
    b = Session(SessionKeys(Role.RESPONDER, suite, cid_r, cid_i, r2i, i2r), now, config)
    return a, b


def dropped(session, datagram, now=0.0):
    with pytest.raises(FrameDropped) as info:
        session.open(datagram, now)
    return info.value.reason


@pytest.mark.parametrize("suite", list(Suite))
def test_round_trip_both_directions(suite):
    a, b = pair(suite)
    records = [Ping(123), Msg(b"m" * 16, 7, 1_700_000_000_000, 5, 0, b"hello"), Pong(9)]
    (datagram,) = a.seal(records, 0.0)
    assert b.open(datagram, 0.0) == records
    (back,) = b.seal([Close(1, "bye")], 0.0)
    assert a.open(back, 0.0) == [Close(1, "bye")]
    assert a.stats["sent"] == 1 and a.stats["received"] == 1 and b.stats["received"] == 1


def test_message_text_is_not_in_clear():
    a, _ = pair()
    text = "Secret rendez-vous at noon".encode()
    for datagram in a.seal([Msg(b"m" * 16, 1, 0, len(text), 0, text)], 0.0):
        assert text not in datagram and b"rendez" not in datagram


def test_packing_respects_max_datagram_and_order():
    a, b = pair()
    text = os.urandom(65536)
    step = wire.payload_capacity() // 3 - wire.RECORD_HEADER_LEN - wire.MSG_HEADER.size  # 3 records a datagram
    records = [Msg(b"m" * 16, 1, 0, len(text), off, text[off : off + step]) for off in range(0, len(text), step)]
    datagrams = a.seal(records, 0.0)
    assert all(len(d) <= wire.MAX_DATAGRAM for d in datagrams)
    assert len(datagrams) == -(-len(records) // 3)
    received = [r for d in datagrams for r in b.open(d, 0.0)]
    assert b"".join(r.data for r in received) == text


def test_larger_max_datagram_and_padding_for_probes():
    a, b = pair()
    (probe,) = a.seal([Ping(1)], 0.0, max_datagram=1400, pad=True)
    assert len(probe) == 1400
    records = b.open(probe, 0.0)
    assert records[0] == Ping(1) and records[1] == Padding(1400 - wire.DATA_OVERHEAD - 11)
    with pytest.raises(SessionError):
        a.seal([Msg(b"m" * 16, 1, 0, 2000, 0, bytes(1200))], 0.0)
    assert len(a.seal([Msg(b"m" * 16, 1, 0, 2000, 0, bytes(1200))], 0.0, max_datagram=1400)[0]) <= 1400
    assert a.seal([], 0.0) != []  # an empty frame is still a frame (keepalive with no records)


def test_counters_never_repeat():
    a, b = pair(config=SessionConfig(rekey_frames=5))
    seen = set()
    for i in range(40):
        (datagram,) = a.seal([Ping(i)], 0.0)
        header = wire.DataHeader.decode(datagram)
        assert (header.key_phase, header.counter) not in seen and header.counter == i
        seen.add((header.key_phase, header.counter))
        assert b.open(datagram, 0.0) == [Ping(i)]
    assert a.send_generation == 7 and b.recv_generation == 7


def test_replay_and_too_old_are_rejected_and_counted():
    a, b = pair()
    datagrams = [a.seal([Ping(i)], 0.0)[0] for i in range(2100)]
    assert b.open(datagrams[5], 0.0) == [Ping(5)]
    assert dropped(b, datagrams[5]) is DropReason.REPLAY
    assert b.open(datagrams[2099], 0.0) == [Ping(2099)]
    assert b.open(datagrams[100], 0.0) == [Ping(100)]  # reordered, inside the window
    assert dropped(b, datagrams[51]) is DropReason.TOO_OLD  # 2099 - 51 = 2048: out of the window
    assert b.open(datagrams[52], 0.0) == [Ping(52)]
    assert dropped(b, datagrams[2099]) is DropReason.REPLAY
    assert b.stats["dropped_replay"] == 2 and b.stats["dropped_too_old"] == 1


@FAST
@given(st.lists(st.integers(0, 5000), max_size=200), st.integers(1, 300))
def test_replay_window_matches_a_model(counters, size):
    window = ReplayWindow(size)
    accepted = set()
    for c in counters:
        verdict = window.check(c)
        highest = max(accepted, default=-1)
        if c in accepted and c > highest - size:
            assert verdict is DropReason.REPLAY
        elif c <= highest - size:
            assert verdict is DropReason.TOO_OLD
        else:
            assert verdict is None
            window.accept(c)
            accepted.add(c)


def test_tampered_frames_are_rejected_at_every_byte():
    a, b = pair()
    (datagram,) = a.seal([Msg(b"m" * 16, 1, 0, 3, 0, b"abc")], 0.0)
    for pos in range(len(datagram)):
        flipped = bytearray(datagram)
        flipped[pos] ^= 0x01
        reason = dropped(b, bytes(flipped))
        if pos < 2:
            assert reason is DropReason.MALFORMED
        elif pos < 10:
            assert reason is DropReason.WRONG_CONN
        elif pos == 10:
            assert reason is DropReason.KEY_PHASE or reason is DropReason.AUTH
        else:
            assert reason is DropReason.AUTH
    assert b.open(datagram, 0.0)[0].data == b"abc"  # the genuine frame still goes through
    assert b.stats["dropped_auth"] >= len(datagram) - 11


@FAST
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_random_bytes_only_raise_frame_dropped(junk, counter):
    a, b = pair()
    header = wire.DataHeader(b.keys.local_conn_id, 0, counter).encode()
    for datagram in (junk, header + junk, b"\xc1\x10" + junk):
        with pytest.raises(FrameDropped):
            b.open(datagram, 0.0)


def test_truncated_frames():
    a, b = pair()
    (datagram,) = a.seal([Ping(1)], 0.0)
    for cut in range(len(datagram)):
        assert dropped(b, datagram[:cut]) in (DropReason.MALFORMED, DropReason.AUTH)


def test_wrong_key_and_wrong_session():
    a, b = pair()
    c, d = pair()
    (datagram,) = a.seal([Ping(1)], 0.0)
    assert dropped(d, datagram) is DropReason.WRONG_CONN
    forged = Session(SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, os.urandom(8), b.keys.local_conn_id,
                                 os.urandom(32), os.urandom(32)), 0.0)
    assert dropped(b, forged.seal([Ping(1)], 0.0)[0]) is DropReason.AUTH
    # the other suite with the same secrets does not authenticate either
    other = Session(SessionKeys(Role.INITIATOR, Suite.CHACHA20_POLY1305, a.keys.local_conn_id,
                                a.keys.peer_conn_id, a.keys.send_secret, a.keys.recv_secret), 0.0)
    assert dropped(b, other.seal([Ping(1)], 0.0)[0]) is DropReason.AUTH
    assert b.stats["dropped_auth"] == 2 and b.open(datagram, 0.0) == [Ping(1)]


def test_authentic_but_malformed_records_are_counted():
    a, b = pair()
    datagram = a.seal_payload(b"\x01\x00\x08\x00", 0.0)
    assert dropped(b, datagram) is DropReason.BAD_RECORDS
    assert dropped(b, datagram) is DropReason.REPLAY  # it did authenticate: its counter is used


def test_rekey_by_frames_both_sides():
    config = SessionConfig(rekey_frames=10)
    a, b = pair(config=config)
    for i in range(35):
        assert b.open(a.seal([Ping(i)], 0.0)[0], 0.0) == [Ping(i)]
        assert a.open(b.seal([Pong(i)], 0.0)[0], 0.0) == [Pong(i)]
    assert a.send_generation == b.recv_generation == 3
    assert b.send_generation == a.recv_generation == 3
    assert a.stats["rekeys_sent"] == 3 and b.stats["rekeys_received"] == 3


def test_rekey_by_time_and_grace_period_for_the_previous_key():
    config = SessionConfig(rekey_seconds=600.0, key_grace_seconds=30.0)
    a, b = pair(config=config)
    late = a.seal([Ping(1)], 599.0)[0]  # generation 0, delayed in the network
    later = a.seal([Ping(2)], 599.5)[0]
    fresh = a.seal([Ping(3)], 600.0)[0]  # generation 1
    assert a.send_generation == 1 and wire.DataHeader.decode(fresh).key_phase == 1
    assert b.open(fresh, 600.0) == [Ping(3)] and b.recv_generation == 1
    assert b.open(late, 610.0) == [Ping(1)]  # previous key still accepted during the grace period
    assert dropped(b, later, 631.0) is DropReason.OLD_KEY  # not after it
    assert b.stats["dropped_old_key"] == 1


def test_receiver_skips_lost_generations_within_limit():
    config = SessionConfig(rekey_frames=1, max_key_skip=3)
    a, b = pair(config=config)
    frames = [a.seal([Ping(i)], 0.0)[0] for i in range(10)]  # one generation per frame
    assert b.open(frames[0], 0.0) == [Ping(0)]
    assert b.open(frames[3], 0.0) == [Ping(3)]  # generations 1 and 2 lost: 3 ahead is allowed
    assert b.recv_generation == 3
    assert b.open(frames[2], 0.0) == [Ping(2)]  # the previous generation, during its grace period
    assert dropped(b, frames[1]) is DropReason.KEY_PHASE  # two generations back
    assert dropped(b, frames[7]) is DropReason.KEY_PHASE  # 4 ahead: over the limit
    assert b.open(frames[6], 0.0) == [Ping(6)] and b.open(frames[7], 0.0) == [Ping(7)]


def test_forged_frame_with_a_future_phase_does_not_move_keys():
    a, b = pair()
    forged = wire.DataHeader(b.keys.local_conn_id, 1, 5).encode() + os.urandom(40)
    assert dropped(b, forged) is DropReason.AUTH
    assert b.recv_generation == 0
    assert b.open(a.seal([Ping(1)], 0.0)[0], 0.0) == [Ping(1)]


def test_counter_exhaustion_never_wraps():
    a, b = pair()
    a._next_counter = wire.MAX_COUNTER
    last = a.seal([Ping(1)], 0.0)[0]
    assert b.open(last, 0.0) == [Ping(1)]
    with pytest.raises(SessionError):
        a.seal([Ping(2)], 0.0)


def test_keys_are_checked_and_hidden_from_repr():
    with pytest.raises(ValueError):
        SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"x" * 7, b"y" * 8, bytes(32), bytes(32))
    keys = SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"x" * 8, b"y" * 8, b"\x07" * 32, b"\x08" * 32)
    assert "\\x07" not in repr(keys) and "send_secret" not in repr(keys)


def test_exported_secret_is_the_same_at_both_ends_and_reveals_no_traffic_key():
    from chatp2p_core.crypto.session import Role, SessionKeys, Suite
    i2r, r2i, h5 = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
    initiator = SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"a" * 8, b"b" * 8, i2r, r2i, transcript_hash=h5)
    responder = SessionKeys(Role.RESPONDER, Suite.AES_256_GCM, b"b" * 8, b"a" * 8, r2i, i2r, transcript_hash=h5)
    label = b"chatp2p v1 lan pair secret"
    secret = initiator.export(label)
    assert secret == responder.export(label) and len(secret) == 32
    assert secret not in (i2r, r2i) and initiator.export(b"another label") != secret
    other = SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"a" * 8, b"b" * 8, i2r, r2i, transcript_hash=bytes(32))
    assert other.export(label) != secret
