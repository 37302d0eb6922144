"""Stranger sessions are capped as live sessions, and the least recently heard gives way to a
newcomer: throwaway identities cannot shut real newcomers out. Real Network objects, real
handshakes over real UDP on loopback, in one process."""

import pathlib
import tempfile

import gevent

from chatp2p_core.crypto import pqc
from chatp2p_core.crypto.identity import Identity
from chatp2p_core.net import peers
from chatp2p_core.net.peers import Network
from chatp2p_core.net.transport import Transport
from chatp2p_core.store import Store

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


class Node:
    """One identity with its store, socket and Network."""

    def __init__(self, tmp: str, label: str) -> None:
        self.identity = Identity.generate(BACKEND)
        self.store = Store(pathlib.Path(tmp) / f"{label}.db")
        self.transport = Transport("127.0.0.1", 0)
        self.transport.start()
        self.events = []
        self.network = Network(self.identity, BACKEND, self.store, self.transport,
                               lambda name, data: self.events.append((name, data)))
        self.network.start()

    def call(self, other: "Node") -> peers.Link:
        contact = self.store.contacts.add("peer", other.identity.fingerprint, other.identity.bundle.to_base64())
        return self.network.connect(contact, [("127.0.0.1", other.transport.port)])

    def close(self) -> None:
        self.network.stop()
        self.transport.stop()
        self.store.close()


def wait_connected(link, timeout=20.0):
    with gevent.Timeout(timeout, False):
        while not link.connected:
            link.established.wait(0.5)
    return link.connected


def strangers(node):
    return [link for link in node.network.links.values() if link.is_stranger]


def test_a_newcomer_gets_in_when_throwaway_identities_hold_every_stranger_slot():
    with tempfile.TemporaryDirectory() as tmp:
        bob = Node(tmp, "bob")
        callers = [Node(tmp, f"throwaway{i}") for i in range(peers.MAX_STRANGERS)]
        try:
            for number, caller in enumerate(callers):
                assert wait_connected(caller.call(bob)), f"throwaway {number} did not connect"
            assert len(strangers(bob)) == peers.MAX_STRANGERS
            newcomer = Node(tmp, "newcomer")
            callers.append(newcomer)
            assert wait_connected(newcomer.call(bob))
            assert len(strangers(bob)) == peers.MAX_STRANGERS
            assert bob.network.counters["strangers_evicted"] == 1
            assert newcomer.identity.fingerprint in bob.network.links
            requests = [data["fingerprint"] for name, data in bob.events if name == "contact_request"]
            assert len(requests) == peers.MAX_STRANGERS + 1
        finally:
            for node in callers + [bob]:
                node.close()


def test_a_stranger_whose_session_ended_holds_no_slot():
    with tempfile.TemporaryDirectory() as tmp:
        bob = Node(tmp, "bob")
        caller = Node(tmp, "caller")
        try:
            assert wait_connected(caller.call(bob))
            assert len(strangers(bob)) == 1
            caller.network.stop()                     # says CLOSE: bob's session ends
            with gevent.Timeout(10, False):
                while strangers(bob):
                    gevent.sleep(0.02)
            assert strangers(bob) == []
        finally:
            caller.transport.stop()
            caller.store.close()
            bob.close()
