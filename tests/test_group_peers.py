"""Group peers (PROTOCOL §13.7): members of a common group who are not contacts. Real Networks
with real handshakes over real UDP on loopback, in one process; the group service's directory
is a dict here."""

import tempfile

import gevent
import pytest

from chatp2p_core.crypto import pqc
from chatp2p_core.errors import Invalid, Refused
from chatp2p_core.net import peers
from chatp2p_core.services.messaging import Messenger

from netnode import GroupDirectory, NetNode, wait_connected
from poll import wait_for

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


class Recorder:
    """A link observer that notes what it hears (as Messenger, Transfers... would)."""

    def __init__(self):
        self.seen = []

    def link_up(self, link):
        self.seen.append(("up", link.fingerprint))

    def link_down(self, link):
        self.seen.append(("down", link.fingerprint))

    def records(self, link, records):
        pass

    def tick(self, now):
        pass

    def path_changed(self, link):
        pass


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="chatp2p-gpeers-") as path:
        yield path


def nodes(tmp, *labels):
    made = [NetNode(tmp, label, BACKEND) for label in labels]
    for node in made:
        node.recorder = Recorder()
        node.network.observers.append(node.recorder)
    return made


def close(*made):
    for node in made:
        node.close()


def reach(caller, target):
    """`caller` punches to `target` as a group peer (by its bundle, at its address)."""
    return caller.network.connect_group_peer(target.fingerprint, target.identity.bundle.encode(),
                                             [(target.address, "direct")])


def test_a_member_the_directory_knows_is_a_group_peer_not_a_stranger_nor_a_contact(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        bob.network.set_group_peers(GroupDirectory(alice))
        alice.network.set_group_peers(GroupDirectory(bob))
        link = reach(alice, bob)
        assert link.group_peer and link.contact_id is None and not link.is_stranger
        assert wait_connected(link)
        back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link", sleep=gevent.sleep)
        assert wait_connected(back)
        for node, other, their_link in ((alice, bob, link), (bob, alice, back)):
            assert their_link.group_peer and their_link.contact_id is None and not their_link.is_stranger
            assert node.network.link_for_fingerprint(other.fingerprint) is their_link
            assert node.network.connected_fingerprints() == {other.fingerprint}
            assert node.network.group_peer_count() == 1
            assert node.network.remote_address(their_link) == their_link.address
            assert ("up", other.fingerprint) in node.recorder.seen
            assert node.store.contacts.find_by_fingerprint(other.fingerprint) is None  # not a contact
            names = [name for name, _ in node.events]
            assert "contact_request" not in names and "peer_connected" not in names
        assert back.address == alice.address
    finally:
        close(alice, bob)


def test_a_member_the_directory_does_not_know_is_a_stranger(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        bob.network.set_group_peers(GroupDirectory())  # bob's groups do not have alice
        link = reach(alice, bob)
        assert wait_connected(link)
        back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link", sleep=gevent.sleep)
        assert back.is_stranger and not back.group_peer
        assert bob.network.connected_fingerprints() == set()
        requests = bob.named("contact_request")
        assert [r["fingerprint"] for r in requests] == [back.id_text]
    finally:
        close(alice, bob)


def test_the_handshake_checks_the_group_peers_identity(tmp):
    alice, bob, mallory = nodes(tmp, "alice", "bob", "mallory")
    try:
        mallory.network.set_group_peers(GroupDirectory(alice))
        link = alice.network.connect_group_peer(bob.fingerprint, bob.identity.bundle.encode(),
                                                [(mallory.address, "direct")])  # a false HINT
        with gevent.Timeout(20, False):
            while link.initiator is not None and not link.initiator.done:
                link.established.wait(0.2)
        assert not link.connected and link.failure == "key_mismatch"
        assert alice.network.link_for_fingerprint(bob.fingerprint) is None  # not kept offline
        assert alice.network.counters["group_peer_key_mismatch"] == 1
        assert alice.named("key_mismatch") == []
    finally:
        close(alice, bob, mallory)


def test_bad_bundles_are_refused_with_a_clear_error(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        with pytest.raises(Invalid, match="not a bundle"):
            alice.network.connect_group_peer(bob.fingerprint, b"garbage", [(bob.address, "direct")])
        with pytest.raises(Invalid, match="not this member"):
            alice.network.connect_group_peer(bob.fingerprint, alice.identity.bundle.encode(),
                                             [(bob.address, "direct")])
        assert alice.network.links == {}
    finally:
        close(alice, bob)


def test_group_peers_are_capped_on_their_own_and_leave_the_stranger_slots_alone(tmp, monkeypatch):
    monkeypatch.setattr(peers, "MAX_GROUP_PEERS", 2)
    monkeypatch.setattr(peers, "MAX_STRANGERS", 1)
    hub, m1, m2, m3, stranger = nodes(tmp, "hub", "m1", "m2", "m3", "stranger")
    try:
        hub.network.set_group_peers(GroupDirectory(m1, m2, m3))
        for member in (m1, m2):
            assert wait_connected(reach(member, hub))
        wait_for(lambda: hub.network.group_peer_count() == 2, 10, "two group peers", sleep=gevent.sleep)
        assert wait_connected(reach(stranger, hub))  # one stranger: its own cap
        wait_for(lambda: stranger.fingerprint in hub.network.links, 10, "the stranger", sleep=gevent.sleep)
        link = reach(m3, hub)  # over the group peer cap
        wait_for(lambda: hub.network.counters["refused_group_peers_cap"] >= 1, 10, "m3 refused",
                 sleep=gevent.sleep)
        assert not link.connected and m3.fingerprint not in hub.network.links
        assert hub.network.group_peer_count() == 2 and hub.network.counters["strangers_evicted"] == 0
        assert hub.network.links[stranger.fingerprint].connected
        # and our own calls obey the same cap
        with pytest.raises(Refused, match="too many group peers"):
            reach(hub, m3)
    finally:
        close(hub, m1, m2, m3, stranger)


def test_close_group_peer_ends_the_session_on_both_sides(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        bob.network.set_group_peers(GroupDirectory(alice))
        link = reach(alice, bob)
        assert wait_connected(link)
        back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link", sleep=gevent.sleep)
        assert wait_connected(back)
        bob.network.close_group_peer(alice.fingerprint)
        assert bob.network.link_for_fingerprint(alice.fingerprint) is None
        assert ("down", alice.fingerprint) in bob.recorder.seen
        wait_for(lambda: alice.network.link_for_fingerprint(bob.fingerprint) is None, 10,
                 "alice's link gone after CLOSE", sleep=gevent.sleep)
        assert ("down", bob.fingerprint) in alice.recorder.seen
        assert not link.connected
        bob.network.close_group_peer(alice.fingerprint)  # again: nothing
    finally:
        close(alice, bob)


def test_close_group_peer_leaves_a_contact_alone(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        bob.add(alice, "Alice")
        link = alice.call(bob, "Bob")
        assert wait_connected(link)
        back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link", sleep=gevent.sleep)
        assert wait_connected(back)
        bob.network.close_group_peer(alice.fingerprint)
        assert back.connected and bob.network.link_for_fingerprint(alice.fingerprint) is back
    finally:
        close(alice, bob)


def held(node, sender):
    rows = node.store.query("SELECT message_id FROM held_messages WHERE fingerprint = ? ORDER BY seq",
                            (sender.fingerprint,))
    return [row["message_id"] for row in rows]


def test_a_group_peers_one_to_one_messages_are_held_like_a_strangers_and_ask_to_be_a_contact(tmp):
    alice, bob = nodes(tmp, "alice", "bob")
    try:
        bob.network.set_group_peers(GroupDirectory(alice))
        bob_messenger = Messenger(bob.store, bob.network, lambda name, data: bob.events.append((name, data)))
        alice_messenger = Messenger(alice.store, alice.network, lambda name, data: alice.events.append((name, data)))
        contact = alice.add(bob, "Bob")  # alice has bob as a contact; bob knows alice from a group only
        link = alice.network.connect(contact, [bob.address])
        assert wait_connected(link)
        back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link", sleep=gevent.sleep)
        assert back.group_peer
        assert bob.named("contact_request") == []
        gevent.spawn(alice_messenger.send, contact, "hello from the group", "m1").join(10)
        wait_for(lambda: held(bob, alice) == ["m1"], 10, "the message held", sleep=gevent.sleep)
        requests = wait_for(lambda: bob.named("contact_request"), 10, "contact_request", sleep=gevent.sleep)
        assert len(requests) == 1 and requests[0]["fingerprint"] == back.id_text
        assert requests[0]["bundle"] == alice.identity.bundle.to_base64()
        gevent.spawn(alice_messenger.send, contact, "again", "m2").join(10)
        wait_for(lambda: held(bob, alice) == ["m1", "m2"], 10, "the second held", sleep=gevent.sleep)
        assert len(bob.named("contact_request")) == 1  # once per session
        del bob_messenger
    finally:
        close(alice, bob)
