"""A contact's candidate addresses: a forged LAN sighting cannot hijack or exhaust them.

The rules of net/candidates.py with a fake clock, then real Network objects (real handshakes
over UDP on loopback, one process) where an impostor's address is offered as a LAN sighting
of a contact, as anyone on the segment who knows the contact's ID can (PROTOCOL §8)."""

import tempfile

import gevent

from chatp2p_core.crypto import pqc
from chatp2p_core.crypto.identity import format_id
from chatp2p_core.net import candidates as cand
from chatp2p_core.net.candidates import CandidateList
from clock import FakeClock
from netnode import NetNode

HOME = ("192.0.2.20", 4000)      # where a session with the contact was established
FORGED = ("192.0.2.66", 5000)    # an attacker's address, announced with the contact's ID tag


def addr(i):
    return ("198.51.100.%d" % (i % 250 + 1), 6000 + i)


# ---------------------------------------------------------------- the rules, fake clock


def test_a_lan_sighting_goes_first_only_while_no_address_is_proven():
    clock = FakeClock()
    c = CandidateList()
    c.add(HOME, "direct", clock())
    c.add(FORGED, "lan", clock())
    assert list(c) == [FORGED, HOME]              # nothing proven yet: the sighting is the best lead
    c = CandidateList()
    c.proven(HOME, "direct")
    c.add(addr(1), "direct", clock())
    c.add(FORGED, "lan", clock())
    assert list(c) == [HOME, FORGED, addr(1)]     # behind the proven head, before the unproven
    c.timed_out(HOME)
    assert c.head() == FORGED                     # the proven address stopped answering: next lead
    c.proven(FORGED, "lan")
    assert c.head() == FORGED and c.is_proven(FORGED)


def test_an_identity_failure_goes_to_the_back_and_the_third_drops_it_for_a_while():
    clock = FakeClock()
    c = CandidateList()
    c.add(FORGED, "lan", clock())
    c.add(HOME, "direct", clock())
    assert c.head() == FORGED
    assert not c.mismatch(FORGED, clock())
    assert list(c) == [HOME, FORGED]
    c.add(addr(1), "direct", clock())
    assert list(c) == [HOME, addr(1), FORGED]     # a failed address stays behind later ones
    c.add(FORGED, "lan", clock())                 # sighted again: keeps its place at the back
    assert c[-1] == FORGED
    assert not c.mismatch(FORGED, clock.advance(1))
    assert c.mismatch(FORGED, clock.advance(1))   # third failure: dropped
    assert FORGED not in c and FORGED not in c.paths
    assert not c.add(FORGED, "lan", clock.advance(cand.BAN_SECONDS - 1))   # refused meanwhile
    assert FORGED not in c
    assert c.add(FORGED, "lan", clock.advance(2))  # the ban ran out
    assert FORGED in c


def test_a_proven_address_forgets_its_failures():
    clock = FakeClock()
    c = CandidateList()
    c.add(HOME, "direct", clock())
    c.mismatch(HOME, clock())
    c.mismatch(HOME, clock())
    c.proven(HOME, "direct")                      # the contact really is there now
    assert c.mismatches(HOME) == 0
    assert not c.mismatch(HOME, clock())


def test_lists_are_bounded_and_a_flood_of_sightings_never_pushes_out_a_proven_address():
    clock = FakeClock()
    c = CandidateList()
    c.proven(HOME, "direct")
    for i in range(1000):
        c.add(addr(i), "lan", clock.advance(0.01))
        assert len(c) <= cand.MAX_CANDIDATES
        assert len(c.paths) == len(c)
    assert c.head() == HOME
    assert addr(999) in c                         # the newest sightings stay, the oldest went


def test_failed_and_older_addresses_are_dropped_first():
    clock = FakeClock()
    c = CandidateList(limit=3)
    c.add(addr(1), "direct", clock())
    c.add(addr(2), "direct", clock())
    c.add(addr(3), "direct", clock())
    c.mismatch(addr(3), clock())
    c.add(addr(4), "direct", clock())
    assert set(c) == {addr(1), addr(2), addr(4)}  # the failed one went, not the oldest
    c.add(addr(5), "direct", clock())
    assert set(c) == {addr(2), addr(4), addr(5)}  # then the oldest


# ---------------------------------------------------------------- real networks on loopback


def settled(link, timeout=20.0):
    """Wait until the link's handshakes are over (connected, or no handshake in progress)."""
    with gevent.Timeout(timeout, False):
        while not link.connected and link.initiator is not None and not link.initiator.done:
            link.established.wait(0.2)
    return link.connected or link.initiator is None or link.initiator.done


def _three(tmp):
    backend = pqc.select_backend()
    return NetNode(tmp, "alice", backend), NetNode(tmp, "bob", backend), NetNode(tmp, "mallory", backend)


def test_a_forged_sighting_does_not_hijack_the_known_address():
    """The issue's attack: Bob's address is known, Mallory announces Bob's ID tag. Reconnects
    must not keep going to Mallory, and the key_mismatch is raised once."""
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, mallory = _three(tmp)
        try:
            contact = alice.add(bob, "Bob", with_bundle=False)
            bob.add(alice, "Alice", with_bundle=False)
            link = alice.network.connect(contact, [mallory.address], path="lan")   # the forged sighting
            assert settled(link) and not link.connected
            assert link.failure == "key_mismatch"
            for _ in range(3):   # the reconnect loop (every 30 s) and more forged sightings
                alice.network.connect(contact, [bob.address])
                alice.network.connect(contact, [mallory.address], path="lan")
                assert settled(link)
                if link.connected:
                    break
            assert link.connected and link.address == bob.address
            reports = alice.named("key_mismatch")
            assert len(reports) == 1, reports
            assert reports[0]["address"] == "127.0.0.1:%d" % mallory.transport.port
            assert reports[0]["got"] == format_id(mallory.identity.fingerprint)
        finally:
            for node in (alice, bob, mallory):
                node.close()


def test_repeated_forged_sightings_are_dropped_and_reported_once():
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, mallory = _three(tmp)
        try:
            contact = alice.add(bob, "Bob", with_bundle=False)
            link = None
            for _ in range(6):   # a sighting every 5 s, each after the previous attempt failed
                link = alice.network.connect(contact, [mallory.address], path="lan")
                assert settled(link)
            assert not link.connected
            assert len(alice.named("key_mismatch")) == 1, alice.named("key_mismatch")
            assert mallory.address not in link.candidates          # dropped after 3 failures
            assert alice.network.counters["key_mismatch_repeated"] == cand.MAX_MISMATCHES - 1
            assert link.candidates.mismatches(mallory.address) == cand.MAX_MISMATCHES
            # Bob's real address, sighted later, is tried and works.
            bob.add(alice, "Alice", with_bundle=False)
            alice.network.connect(contact, [bob.address], path="lan")
            assert settled(link) and link.connected and link.address == bob.address
        finally:
            for node in (alice, bob, mallory):
                node.close()
