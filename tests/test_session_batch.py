"""Session.seal_payloads: a burst sealed in one pass is exactly the frames seal_payload would
make one by one (same counters, key phases and bytes), also across a rekey. Session.open_many:
a batch of received frames opens to the records `open` gives one by one, and a bad frame in
it is dropped alone, counted with its reason."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from chatp2p_core.codec import wire
from chatp2p_core.codec.wire import Ping
from chatp2p_core.crypto.session import DropReason, FrameDropped, Role, Session, SessionConfig, SessionKeys, Suite


def twins(config, suite=Suite.AES_256_GCM):
    """Two senders with the same keys (their frames must be byte-identical) and a receiver."""
    i2r, r2i = os.urandom(32), os.urandom(32)
    cid_i, cid_r = os.urandom(8), os.urandom(8)
    make = lambda: Session(SessionKeys(Role.INITIATOR, suite, cid_i, cid_r, i2r, r2i), 0.0, config)  # noqa: E731
    return make(), make(), Session(SessionKeys(Role.RESPONDER, suite, cid_r, cid_i, r2i, i2r), 0.0, config)


def payloads(n):
    return [wire.encode_record(Ping(i)) for i in range(n)]


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("rekey_frames", [1 << 20, 5], ids=["no-rekey", "rekey-inside"])
def test_a_batch_is_the_frames_of_one_by_one_sealing(suite, rekey_frames):
    config = SessionConfig(rekey_frames=rekey_frames)
    batch, single, receiver = twins(config, suite)
    for round_ in range(3):  # the second and third batches start where the first ended
        items = payloads(12)
        sealed = batch.seal_payloads(items, 1.0)
        assert sealed == [single.seal_payload(item, 1.0) for item in items]
        assert batch.send_counter == single.send_counter == 12 * (round_ + 1)
        assert batch.send_generation == single.send_generation
        assert [receiver.open(d, 1.0) for d in sealed] == [[Ping(i)] for i in range(12)]
    assert batch.stats["sent"] == single.stats["sent"] == 36
    if rekey_frames == 5:
        assert batch.send_generation == 7  # rekeyed after every 5 frames of the 36


def test_an_empty_batch_seals_nothing():
    batch, _, _ = twins(SessionConfig())
    assert batch.seal_payloads([], 0.0) == [] and batch.send_counter == 0


# -- Session.open_many: a batch of received frames (one GRO buffer) ------------------------------
def pair(config=SessionConfig(), suite=Suite.AES_256_GCM):
    sender, _, receiver = twins(config, suite)
    return sender, receiver


def records_of(frames):
    return [[Ping(i)] for i in frames]


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("rekey_frames", [1 << 20, 5], ids=["no-rekey", "rekey-inside"])
def test_a_batch_opens_to_the_records_of_one_by_one_opening(suite, rekey_frames):
    config = SessionConfig(rekey_frames=rekey_frames)
    sender, batch = pair(config, suite)
    single = Session(batch.keys, 0.0, config)  # the same keys: opens the same frames
    sealed = sender.seal_payloads(payloads(30), 1.0)
    opened = batch.open_many(sealed, 1.0)
    assert opened.records == [r for d in sealed for r in single.open(d, 1.0)] == [Ping(i) for i in range(30)]
    assert opened.frames == 30 and opened.size == sum(map(len, sealed)) and opened.dropped == []
    assert batch.stats == single.stats and batch.recv_generation == single.recv_generation
    if rekey_frames == 5:
        assert batch.recv_generation == 5  # the batch crossed five key generations


def test_a_corrupt_frame_in_the_middle_of_a_batch_is_dropped_alone():
    sender, receiver = pair()
    sealed = sender.seal_payloads(payloads(9), 0.0)
    tampered = bytearray(sealed[4])
    tampered[-1] ^= 0x01  # the AEAD tag
    batch = sealed[:4] + [bytes(tampered)] + sealed[5:]
    opened = receiver.open_many(batch, 0.0)
    assert opened.records == [Ping(i) for i in (0, 1, 2, 3, 5, 6, 7, 8)]
    assert opened.frames == 8 and opened.dropped == [DropReason.AUTH]
    assert receiver.stats["dropped_auth"] == 1 and receiver.stats["received"] == 8
    # the genuine frame 4 still opens later (the forged one did not take its counter)
    assert receiver.open(sealed[4], 0.0) == [Ping(4)]


def test_hostile_frames_inside_a_batch_are_each_dropped_for_their_own_reason():
    sender, receiver = pair()
    sealed = sender.seal_payloads(payloads(6), 0.0)
    other_sender, _ = pair()  # another session: its connection id is not ours
    stranger = other_sender.seal_payloads(payloads(1), 0.0)[0]
    bad_records = sender.seal_payloads([b"\x01\x00\x07" + bytes(7)], 0.0)[0]  # authentic, malformed PING
    batch = [sealed[0], sealed[1], sealed[1], sealed[2][:10], stranger, sealed[3], bad_records, "text", sealed[5]]
    opened = receiver.open_many(batch, 0.0)
    assert opened.records == [Ping(0), Ping(1), Ping(3), Ping(5)]
    assert opened.dropped == [DropReason.REPLAY, DropReason.MALFORMED, DropReason.WRONG_CONN,
                              DropReason.BAD_RECORDS, DropReason.MALFORMED]
    assert receiver.stats["received"] == 4


def test_an_empty_batch_opens_nothing():
    _, receiver = pair()
    opened = receiver.open_many([], 0.0)
    assert opened.records == [] and opened.frames == 0 and opened.dropped == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2200), st.integers(1, 80)), max_size=12),
       st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_batching_of_any_arrival_order_opens_as_one_by_one_opening(runs, cuts):
    """Frames arriving in any order (late, replayed, beyond the 2048-frame window), cut into
    batches anywhere: open_many accepts and drops exactly what `open` does, for the same reasons,
    and leaves the replay window in the same state."""
    sender, batch = pair()
    single = Session(batch.keys, 0.0)
    sealed = sender.seal_payloads(payloads(2201), 0.0)
    # Runs of consecutive frames (a steady flow), starting anywhere: ahead, late, overlapping.
    arrivals = [sealed[i] for start, length in runs for i in range(start, min(start + length, 2201))]
    expected_records, expected_dropped = [], []
    for datagram in arrivals:
        try:
            expected_records += single.open(datagram, 0.0)
        except FrameDropped as exc:
            expected_dropped.append(exc.reason)
    records, dropped, start, i = [], [], 0, 0
    while start < len(arrivals):
        end = start + cuts[i % len(cuts)]
        opened = batch.open_many(arrivals[start:end], 0.0)
        records += opened.records
        dropped += opened.dropped
        start, i = end, i + 1
    assert records == expected_records and dropped == expected_dropped
    assert (batch._window.highest, batch._window._bits) == (single._window.highest, single._window._bits)
