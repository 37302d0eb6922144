"""Stranger sessions are capped as live sessions, and the least recently heard gives way to a
newcomer: throwaway identities cannot shut real newcomers out. Real Network objects, real
handshakes over real UDP on loopback, in one process."""

import tempfile

import gevent

from chatp2p_core.crypto import pqc
from chatp2p_core.net import peers

from netnode import NetNode, wait_connected

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


def strangers(node):
    return [link for link in node.network.links.values() if link.is_stranger]


def test_a_newcomer_gets_in_when_throwaway_identities_hold_every_stranger_slot():
    with tempfile.TemporaryDirectory() as tmp:
        bob = NetNode(tmp, "bob", BACKEND)
        callers = [NetNode(tmp, f"throwaway{i}", BACKEND) for i in range(peers.MAX_STRANGERS)]
        try:
            for number, caller in enumerate(callers):
                assert wait_connected(caller.call(bob)), f"throwaway {number} did not connect"
            assert len(strangers(bob)) == peers.MAX_STRANGERS
            newcomer = NetNode(tmp, "newcomer", BACKEND)
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
        bob = NetNode(tmp, "bob", BACKEND)
        caller = NetNode(tmp, "caller", BACKEND)
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
