"""Group files between group peers (PROTOCOL §13.4, §13.7): a member who is not a contact
offers a file whose transfer id the group service knows; it goes through the normal offer
flow. Real Networks and Transfers, real handshakes and file transfer over UDP on loopback, in
one process; the group service's parts (directory, offer check) are dicts here."""

import os
import pathlib
import tempfile

import gevent
import pytest

from chatp2p_core.codec.grouprecord import group_file_transfer_id
from chatp2p_core.crypto import pqc
from chatp2p_core.services.transfer import Transfers
from chatp2p_core.services.transfer.model import TransferError
from chatp2p_core.store import Store
from chatp2p_core.store.migrations import MIGRATIONS

from netnode import GroupDirectory, NetNode, wait_connected
from poll import wait_for
from test_transfer import make_file

GROUP = bytes(range(16))
FILE_ID = b"f" * 16


def group_file_tid(recipient: bytes) -> bytes:
    return group_file_transfer_id(FILE_ID, recipient)


class Member:
    """A NetNode with file transfers and the group service's offer check."""

    def __init__(self, tmp, label, backend):
        self.node = NetNode(tmp, label, backend)
        self.downloads = os.path.join(tmp, label + "-dl")
        self.transfers = Transfers(self.node.store, self.node.network,
                                   lambda name, data: self.node.events.append((name, data)), self.downloads)
        self.transfers.start()
        self.announced: dict[bytes, bytes] = {}  # transfer id -> group id
        self.transfers.set_group_offer_check(lambda link, tid: self.announced.get(tid))

    def close(self):
        self.transfers.stop()
        self.node.close()


@pytest.fixture
def pair():
    backend = pqc.select_backend()
    with tempfile.TemporaryDirectory(prefix="chatp2p-gfiles-") as tmp:
        alice, bob = Member(tmp, "alice", backend), Member(tmp, "bob", backend)
        try:
            alice.node.network.set_group_peers(GroupDirectory(bob.node))
            bob.node.network.set_group_peers(GroupDirectory(alice.node))
            link = alice.node.network.connect_group_peer(
                bob.node.fingerprint, bob.node.identity.bundle.encode(), [(bob.node.address, "direct")])
            assert wait_connected(link)
            wait_for(lambda: bob.node.network.connected_fingerprints(), 10, "bob's session", sleep=gevent.sleep)
            yield tmp, alice, bob, link
        finally:
            alice.close()
            bob.close()


def offers(member):
    return member.node.named("file_offer")


def test_a_group_file_from_a_group_peer_is_offered_accepted_and_arrives(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "photo.jpg")
    digest = make_file(source, 300_000, seed=4)
    tid = group_file_tid(bob.node.fingerprint)
    bob.announced[tid] = GROUP  # bob holds the MESSAGE announcing it
    outgoing = alice.transfers.send_file_to_link(link, source, tid, GROUP)
    assert outgoing.transfer_id == tid.hex() and outgoing.contact_id is None
    offer = wait_for(lambda: offers(bob), 10, "the offer", sleep=gevent.sleep)[0]
    assert offer["transfer_id"] == tid.hex() and offer["group"] == GROUP.hex()
    assert offer["file_name"] == "photo.jpg" and offer["size"] == 300_000
    bob.transfers.accept(tid.hex(), None)
    received = wait_for(lambda: bob.node.named("file_received"), 20, "the file", sleep=gevent.sleep)[0]
    assert received["sha256"] == digest
    row = bob.node.store.transfers.get(tid.hex())
    assert row["contact_id"] is None and row["peer_fingerprint"] == alice.node.fingerprint
    assert row["group_id"] == GROUP and row["state"] == "completed"
    sent = alice.node.store.transfers.get(tid.hex())
    assert sent["peer_fingerprint"] == bob.node.fingerprint and sent["group_id"] == GROUP
    assert bob.node.store.contacts.find_by_fingerprint(alice.node.fingerprint) is None


def test_a_group_peers_offer_matching_no_announcement_is_refused_like_a_strangers(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "unasked.bin")
    make_file(source, 10_000)
    tid = group_file_tid(bob.node.fingerprint)  # bob has no announcement for it
    alice.transfers.send_file_to_link(link, source, tid, GROUP)
    failed = wait_for(lambda: bob.node.named("file_transfer_failed"), 10, "the refusal", sleep=gevent.sleep)[0]
    assert "not a contact" in failed["reason"]
    assert offers(bob) == [] and bob.node.store.transfers.get(tid.hex()) is None
    wait_for(lambda: alice.node.named("file_transfer_failed"), 10, "the sender told", sleep=gevent.sleep)


def test_a_group_peers_plain_offer_is_refused(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "plain.bin")
    make_file(source, 1000)
    # a hostile member offers an ordinary transfer (not 32 hex digits of an announcement)
    plain = alice.transfers._new_outgoing(link.fingerprint, link.name, source, None, "plain-1", contact_id=None)
    alice.transfers._offer(link, plain, 0.0)
    failed = wait_for(lambda: bob.node.named("file_transfer_failed"), 10, "the refusal", sleep=gevent.sleep)[0]
    assert failed["transfer_id"] == "plain-1" and "not a contact" in failed["reason"]
    assert offers(bob) == []


def test_send_file_to_link_refuses_bad_ids_and_strangers(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "any.bin")
    make_file(source, 100)
    with pytest.raises(TransferError, match="16 bytes"):
        alice.transfers.send_file_to_link(link, source, b"short", GROUP)
    with pytest.raises(TransferError, match="16 bytes"):
        alice.transfers.send_file_to_link(link, source, group_file_tid(bob.node.fingerprint), "not bytes")
    link.group_peer = False  # as if bob had left every common group (a stranger's link)
    try:
        with pytest.raises(TransferError, match="neither a contact"):
            alice.transfers.send_file_to_link(link, source, group_file_tid(bob.node.fingerprint), GROUP)
    finally:
        link.group_peer = True


def test_a_failing_offer_check_does_not_break_the_receiver(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "boom.bin")
    make_file(source, 1000)

    def broken(link, tid):
        raise RuntimeError("a bug in the group service")

    bob.transfers.set_group_offer_check(broken)
    alice.transfers.send_file_to_link(link, source, group_file_tid(bob.node.fingerprint), GROUP)
    failed = wait_for(lambda: bob.node.named("file_transfer_failed"), 10, "the refusal", sleep=gevent.sleep)[0]
    assert "not a contact" in failed["reason"]


def test_an_unfinished_group_peer_transfer_is_loaded_after_a_restart(pair):
    tmp, alice, bob, link = pair
    source = os.path.join(tmp, "later.bin")
    make_file(source, 5000)
    tid = group_file_tid(bob.node.fingerprint)
    bob.announced[tid] = GROUP
    alice.transfers.send_file_to_link(link, source, tid, GROUP)
    wait_for(lambda: offers(bob), 10, "the offer", sleep=gevent.sleep)
    bob.transfers.stop()
    again = Transfers(bob.node.store, bob.node.network, lambda name, data: None, bob.downloads)
    bob.node.network.observers.remove(bob.transfers)
    again.start()
    try:
        transfer = again.get(tid.hex())
        assert transfer.fingerprint == alice.node.fingerprint and transfer.state == "offered"
        assert transfer.group_id == GROUP
        assert any(view["transfer_id"] == tid.hex() for view in again.list())
    finally:
        again.stop()


def test_migration_10_keeps_the_transfers_of_an_older_file():
    class NinthStore(Store):
        migrations = MIGRATIONS[:9]

    with tempfile.TemporaryDirectory(prefix="chatp2p-gmig-") as tmp:
        db = os.path.join(tmp, "chatp2p.db")
        with NinthStore(pathlib.Path(db)) as old:
            bob = old.contacts.add("Bob", b"b" * 32, None)
            old._conn.execute("INSERT INTO transfers (transfer_id, contact_id, direction, file_name, size, "
                              "chunk_size, tag, state, created, updated) VALUES "
                              "('t1', ?, 'in', 'a.txt', 5, 1024, X'00', 'active', 1.0, 2.0)", (bob.id,))
        with Store(pathlib.Path(db)) as store:
            row = store.transfers.get("t1")
            assert row["contact_id"] == bob.id and row["peer_fingerprint"] is None and row["group_id"] is None
            assert (row["file_name"], row["state"], row["created"]) == ("a.txt", "active", 1.0)
