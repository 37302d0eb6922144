"""Online-mode records (PROTOCOL §12): slots, sealing, and what a reader refuses."""

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chatp2p_core.crypto import dht_record as dr

ALICE = hashlib.sha256(b"alice").digest()
BOB = hashlib.sha256(b"bob").digest()
NOW = 1_796_300_000.0
EPOCH = dr.epoch_of(NOW)
PUBLIC = dr.Candidate(dr.CandidateKind.SRFLX, ("198.51.100.7", 40000))
MAPPED = dr.Candidate(dr.CandidateKind.MAPPED, ("198.51.100.7", 40001))
V6 = dr.Candidate(dr.CandidateKind.HOST, ("2001:db8::7", 40000))
LAN = dr.Candidate(dr.CandidateKind.HOST, ("192.168.1.20", 40000))
RELAY = dr.Candidate(dr.CandidateKind.RELAY, ("203.0.113.5", 50000))


def sealed(slot, candidates, wall=NOW):
    record = dr.new_record(candidates, wall, lan_ok=slot.kind == dr.SlotKind.PAIR)
    return record, dr.seal(slot, record, os.urandom(dr.NONCE_LEN))


def test_a_record_round_trips_at_one_size_within_bep44s_limit():
    slot = dr.id_slot(ALICE, EPOCH)
    record, value = sealed(slot, [PUBLIC, MAPPED, V6, RELAY])
    assert dr.open_record(slot, value, NOW + 60) == record
    assert record.candidates == (PUBLIC, MAPPED, V6, RELAY)
    _, small = sealed(slot, [PUBLIC])
    assert len(value) == len(small) == dr.VALUE_LEN <= dr.MAX_VALUE   # the count does not show


def test_slots_move_every_epoch_and_differ_per_id_and_direction():
    today, tomorrow = dr.id_slot(ALICE, EPOCH), dr.id_slot(ALICE, EPOCH + 1)
    assert today.public_key != tomorrow.public_key and today.salt != tomorrow.salt
    assert dr.id_slot(BOB, EPOCH).public_key != today.public_key
    secret = os.urandom(32)
    to_bob, to_alice = dr.pair_slot(secret, ALICE, BOB, EPOCH), dr.pair_slot(secret, BOB, ALICE, EPOCH)
    assert to_bob.public_key != to_alice.public_key
    assert dr.pair_slot(secret, ALICE, BOB, EPOCH) == to_bob        # both ends derive the same slot
    assert dr.pair_slot(os.urandom(32), ALICE, BOB, EPOCH).public_key != to_bob.public_key


def test_the_signing_secret_is_libtorrents_expanded_key_of_the_slot_key():
    # libtorrent signs with SHA-512(seed) clamped; its public key must be the slot's key.
    seed = os.urandom(32)
    expanded = dr.expanded_secret(seed)
    assert len(expanded) == 64 and expanded[0] & 7 == 0 and expanded[31] & 0xC0 == 0x40
    assert expanded[32:] == hashlib.sha512(seed).digest()[32:]
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert len(public) == 32


@pytest.mark.parametrize("reason, mutate", [
    ("undecryptable", lambda v: v[:-1] + bytes([v[-1] ^ 1])),             # a flipped tag bit
    ("undecryptable", lambda v: v[:1] + (int.from_bytes(v[1:9], "big") + 1).to_bytes(8, "big") + v[9:]),  # seq
    ("malformed", lambda v: v[:-1]),
    ("malformed", lambda v: b"\x02" + v[1:]),
    ("malformed", lambda v: b""),
    ("malformed", lambda v: os.urandom(len(v) + 1)),
    ("undecryptable", lambda v: b"\x01" + os.urandom(len(v) - 1)),    # random bytes of the right shape
])
def test_tampered_or_garbage_values_are_refused_with_a_reason(reason, mutate):
    slot = dr.id_slot(ALICE, EPOCH)
    _, value = sealed(slot, [PUBLIC])
    with pytest.raises(dr.RecordError) as caught:
        dr.open_record(slot, mutate(value), NOW)
    assert caught.value.reason == reason


def test_a_record_from_another_slot_does_not_open():
    # Copied from Bob's slot into Alice's, or from yesterday into today: the key and the
    # associated data differ.
    _, bobs = sealed(dr.id_slot(BOB, EPOCH), [PUBLIC])
    _, yesterdays = sealed(dr.id_slot(ALICE, EPOCH - 1), [PUBLIC])
    for value in (bobs, yesterdays):
        with pytest.raises(dr.RecordError) as caught:
            dr.open_record(dr.id_slot(ALICE, EPOCH), value, NOW)
        assert caught.value.reason == "undecryptable"


def test_expired_and_future_records_are_refused():
    slot = dr.id_slot(ALICE, EPOCH)
    _, value = sealed(slot, [PUBLIC], wall=NOW)
    assert dr.open_record(slot, value, NOW + dr.RECORD_LIFETIME)          # skew allowance
    with pytest.raises(dr.RecordError) as caught:
        dr.open_record(slot, value, NOW + dr.RECORD_LIFETIME + dr.CLOCK_SKEW + 1)
    assert caught.value.reason == "expired"
    with pytest.raises(dr.RecordError) as caught:
        dr.open_record(slot, value, NOW - dr.CLOCK_SKEW - 10)             # written "in the future"
    assert caught.value.reason == "future"


def test_only_usable_candidates_are_published_or_accepted():
    slot = dr.id_slot(ALICE, EPOCH)
    bad = [dr.Candidate(dr.CandidateKind.HOST, (host, 4000)) for host in (
        "127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "169.254.1.1", "fe80::1",
        "255.255.255.255", "240.0.0.1", "::ffff:198.51.100.7")]
    record, value = sealed(slot, bad + [LAN, PUBLIC, PUBLIC])
    assert record.candidates == (PUBLIC,)                     # no LAN address in the ID slot, no duplicate
    assert dr.open_record(slot, value, NOW).candidates == (PUBLIC,)
    pair = dr.pair_slot(os.urandom(32), ALICE, BOB, EPOCH)
    record, _ = sealed(pair, bad + [LAN, PUBLIC])
    assert record.candidates == (LAN, PUBLIC)                 # a pairwise slot may carry LAN addresses
    many = [dr.Candidate(dr.CandidateKind.SRFLX, ("198.51.100.7", 1000 + i)) for i in range(20)]
    record, value = sealed(slot, many)
    assert len(dr.open_record(slot, value, NOW).candidates) == dr.MAX_CANDIDATES


def test_a_forged_record_with_lan_or_loopback_entries_keeps_only_the_usable_ones():
    # Anyone with Alice's ID can write her ID slot: a reader must not be sent to probe
    # loopback or LAN hosts. Seal by hand, bypassing the writer's filter.
    slot = dr.id_slot(ALICE, EPOCH)
    entries = [dr._encode_entry(c) for c in (dr.Candidate(dr.CandidateKind.HOST, ("127.0.0.1", 22)), LAN, PUBLIC)]
    plain = (bytes([dr.VERSION, len(entries)]) + b"".join(entries)).ljust(dr.PLAIN_LEN, b"\0")
    seq, expiry, nonce = int(NOW * 1000), int(NOW) + 60, os.urandom(12)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    value = dr.HEADER.pack(dr.VERSION, seq, expiry) + nonce + ChaCha20Poly1305(slot.aead_key).encrypt(
        nonce, plain, dr._associated(slot, seq, expiry))
    assert dr.open_record(slot, value, NOW).candidates == (PUBLIC,)


def test_yesterdays_slot_is_read_only_early_in_the_day():
    start = EPOCH * dr.EPOCH_SECONDS
    assert dr.epochs_to_read(start + 10) == [EPOCH, EPOCH - 1]
    assert dr.epochs_to_read(start + 12 * 3600) == [EPOCH]
