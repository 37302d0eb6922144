"""LAN discovery: ID tags and pair tags (PROTOCOL §8), and nodes on one segment finding each other."""

import os
import shutil
import tempfile

import pytest
from hypothesis import given, strategies as st

from chatp2p_core.net import lan
from clock import FakeClock
from poll import wait_for
from netns import NsDaemon, lan_segment, netns_available

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))


CAROL = bytes(range(2, 34))
SECRET = bytes(range(100, 132))
NOW = 1_700_000_000.0


def _announce(own, contacts, now=NOW, cursor=0):
    tags, cursor = lan.announce_tags(own, contacts, lan.epoch_of(now), cursor)
    return lan.encode_announcement(4242, lan.epoch_of(now), tags), cursor


def test_id_tags_rotate_and_match_only_the_right_identity():
    # Alice has a contact (Bob) without a pair secret: she sends her ID tag.
    data, _ = _announce(ALICE, [(BOB, None)])
    epoch, port, tags = lan.decode_announcement(data)
    assert port == 4242 and len(tags) == lan.MAX_TAGS
    assert lan.match([(BOB, None), (ALICE, None)], epoch, tags, NOW) == [ALICE]
    assert lan.match([(BOB, None)], epoch, tags, NOW) == []
    later, _ = _announce(ALICE, [(BOB, None)], NOW + lan.TAG_PERIOD)
    later_epoch, _, later_tags = lan.decode_announcement(later)
    assert lan.id_tag(ALICE, epoch) in tags and lan.id_tag(ALICE, epoch) not in later_tags   # rotates
    assert lan.match([(ALICE, None)], later_epoch, later_tags, NOW + lan.TAG_PERIOD) == [ALICE]
    assert lan.match([(ALICE, None)], epoch, tags, NOW + 10 * lan.TAG_PERIOD) == []         # stale replay
    assert ALICE not in data and lan.lan_key(ALICE) not in data


def test_id_tag_derivation_byte_by_byte():
    """PROTOCOL §8: K = SHA-256("chatp2p v1 lan key" || ID), tag = HMAC-SHA256(K,
    "chatp2p v1 lan tag" || u32 epoch)[0:16]; pair tag = HMAC-SHA256(P, "chatp2p v1 lan pair tag"
    || announcer ID || u32 epoch)[0:16]."""
    import hashlib
    import hmac
    import struct
    epoch = lan.epoch_of(NOW)
    assert epoch == int(NOW // 300)
    key = hashlib.sha256(b"chatp2p v1 lan key" + ALICE).digest()
    assert lan.id_tag(ALICE, epoch) == hmac.new(key, b"chatp2p v1 lan tag" + struct.pack(">I", epoch),
                                                hashlib.sha256).digest()[:16]
    assert lan.pair_tag(SECRET, ALICE, epoch) == hmac.new(
        SECRET, b"chatp2p v1 lan pair tag" + ALICE + struct.pack(">I", epoch), hashlib.sha256).digest()[:16]
    assert lan.pair_tag(SECRET, ALICE, epoch) != lan.pair_tag(SECRET, BOB, epoch)   # each end its own
    data, _ = _announce(ALICE, [(BOB, SECRET)])
    assert data[:12] == b"CP2L" + bytes([2]) + struct.pack(">IHB", epoch, 4242, 16)
    assert len(data) == lan.ANNOUNCE_SIZE == 12 + 16 * 16


def test_pair_secret_is_exported_alike_by_both_ends_of_a_session():
    from chatp2p_core.crypto.session import Role, SessionKeys, Suite
    i2r, r2i, h5 = os.urandom(32), os.urandom(32), os.urandom(32)
    initiator = SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"i" * 8, b"r" * 8, i2r, r2i, transcript_hash=h5)
    responder = SessionKeys(Role.RESPONDER, Suite.AES_256_GCM, b"r" * 8, b"i" * 8, r2i, i2r, transcript_hash=h5)
    assert lan.pair_secret(initiator) == lan.pair_secret(responder)
    assert lan.pair_secret(initiator) == initiator.export(b"chatp2p v1 lan pair secret", 32)


def test_after_the_first_session_no_tag_is_recognisable_from_the_id():
    """Alice shares a pair secret with Bob, her only contact: Bob recognises her announcement,
    someone who knows her ID (or Bob's) does not, and the ID tag is not in it."""
    data, _ = _announce(ALICE, [(BOB, SECRET)])
    epoch, _, tags = lan.decode_announcement(data)
    assert lan.id_tag(ALICE, epoch) not in tags
    for e in (epoch - 1, epoch, epoch + 1):
        assert lan.id_tag(ALICE, e) not in tags and lan.id_tag(BOB, e) not in tags
    assert lan.match([(ALICE, None)], epoch, tags, NOW, own=CAROL) == []      # knows the ID only
    assert lan.match([(ALICE, None), (BOB, None)], epoch, tags, NOW, own=CAROL) == []
    assert lan.match([(ALICE, SECRET)], epoch, tags, NOW, own=BOB) == [ALICE]   # Bob, the contact
    assert lan.match([(ALICE, os.urandom(32))], epoch, tags, NOW, own=CAROL) == []
    # Carol was added by ID alone and has no pair secret yet: the ID tag comes back.
    data, _ = _announce(ALICE, [(BOB, SECRET), (CAROL, None)])
    epoch, _, tags = lan.decode_announcement(data)
    assert lan.id_tag(ALICE, epoch) in tags
    assert lan.match([(ALICE, None)], epoch, tags, NOW, own=CAROL) == [ALICE]
    assert lan.match([(ALICE, SECRET)], epoch, tags, NOW, own=BOB) == [ALICE]
    # No contact at all: nothing but filler.
    data, _ = _announce(ALICE, [])
    assert lan.match([(ALICE, None)], *lan.decode_announcement(data)[::2], NOW, own=CAROL) == []


def test_announcements_are_bounded_and_rotate_through_many_contacts():
    contacts = [(os.urandom(32), os.urandom(32)) for _ in range(100)] + [(CAROL, None)]
    epoch = lan.epoch_of(NOW)
    seen, cursor = set(), 0
    rounds = -(-100 // (lan.MAX_TAGS - 1))
    for _ in range(rounds):
        data, cursor = _announce(ALICE, contacts, cursor=cursor)
        assert len(data) == lan.ANNOUNCE_SIZE < 1200
        _, _, tags = lan.decode_announcement(data)
        assert len(tags) == lan.MAX_TAGS
        assert lan.id_tag(ALICE, epoch) in tags           # Carol still needs it: every time
        seen.update(tags)
    assert all(lan.pair_tag(secret, ALICE, epoch) in seen for _, secret in contacts[:100])


def test_own_announcement_looped_back_is_not_a_contact():
    for contacts in ([(BOB, SECRET)], [(BOB, None)], [(BOB, SECRET), (CAROL, None)]):
        data, _ = _announce(ALICE, contacts)
        epoch, _, tags = lan.decode_announcement(data)
        assert lan.match(contacts, epoch, tags, NOW, own=ALICE) == []


def test_version_1_announcements_are_still_understood():
    import struct
    epoch = lan.epoch_of(NOW)
    data = struct.pack(">4sBIH16s", b"CP2L", 1, epoch, 4242, lan.id_tag(ALICE, epoch))
    assert lan.decode_announcement(data) == (epoch, 4242, (lan.id_tag(ALICE, epoch),))
    assert lan.match([(ALICE, None)], epoch, (lan.id_tag(ALICE, epoch),), NOW, own=BOB) == [ALICE]


def test_discovery_reports_a_contact_by_its_pair_tag_with_a_fake_clock():
    clock = FakeClock(NOW)
    found_by_bob, found_by_carol = [], []
    alice = lan.LanDiscovery(ALICE, 4242, lambda: [(BOB, SECRET)], lambda *a: None, clock=clock)
    bob = lan.LanDiscovery(BOB, 4343, lambda: [(ALICE, SECRET)], lambda *a: found_by_bob.append(a), clock=clock)
    carol = lan.LanDiscovery(CAROL, 4444, lambda: [(ALICE, None)], lambda *a: found_by_carol.append(a), clock=clock)
    data = alice.announcement()
    bob.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))
    carol.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))
    assert found_by_bob == [(ALICE, ("192.0.2.10", 4242))] and found_by_carol == []
    clock.advance(3 * lan.TAG_PERIOD)
    bob.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))             # replayed much later
    assert len(found_by_bob) == 1 and bob.counters["ignored"] == 1
    bob.on_datagram(alice.announcement(), ("192.0.2.10", lan.DEFAULT_PORT))
    assert len(found_by_bob) == 2


@given(st.binary(max_size=300))
def test_garbage_announcements_are_rejected(data):
    try:
        epoch, port, tags = lan.decode_announcement(data)
    except lan.AnnouncementError:
        return
    assert data.startswith(lan.MAGIC) and 0 < port < 65536 and 1 <= len(tags) <= lan.MAX_TAGS
    assert len(data) in (lan.ANNOUNCE_V1.size, lan.HEADER.size + len(tags) * lan.TAG_LEN)


def test_two_nodes_on_a_segment_find_each_other():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-lan-")
    nodes = []
    try:
        with lan_segment(2) as (ns_a, ns_b):
            args = ("--lan-discovery", "--p2p-host", "0.0.0.0")
            a, b = NsDaemon(ns_a, os.path.join(tmp, "a"), *args), NsDaemon(ns_b, os.path.join(tmp, "b"), *args)
            nodes = [a, b]
            for node in nodes:
                node.start()
            id_a = a.request("status")["data"]["identity"]["fingerprint"]
            id_b = b.request("status")["data"]["identity"]["fingerprint"]
            assert a.request("contacts", "add", {"peer": "Bob", "public_key": id_b})["success"]
            assert b.request("contacts", "add", {"peer": "Alice", "public_key": id_a})["success"]
            peer = wait_for(lambda: (lambda p: p if p["state"] == "connected" and p["path"] == "lan" else None)(
                a.request("p2p", "peers")["data"][0]), 20, "a LAN session to Bob", interval=0.3)
            assert peer["address"].startswith(ns_b.address + ":")
            assert a.request("p2p", "send_message", {"peer": "Bob", "message": "over the LAN"})["data"] == "Message sent"
            history = wait_for(lambda: b.request("p2p", "history", {"peer": "Alice"})["data"], 10,
                               "the message at Bob", interval=0.2)
            assert [m["body"] for m in history] == ["over the LAN"]
            status = b.request("status")["data"]["p2p"]["lan_discovery"]
            assert status["announced"] > 0 and status["matched"] > 0
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
