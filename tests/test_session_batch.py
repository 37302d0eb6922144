"""Session.seal_payloads: a burst sealed in one pass is exactly the frames seal_payload would
make one by one (same counters, key phases and bytes), also across a rekey."""

import os

import pytest

from chatp2p_core.codec import wire
from chatp2p_core.codec.wire import Ping
from chatp2p_core.crypto.session import Role, Session, SessionConfig, SessionKeys, Suite


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
