"""A session moves to a new address only after the peer answers a challenge there, and a new
address is never sent more than it sent. Real Network objects and real UDP on loopback, in one
process; a forwarding socket stands for a NAT that rebinds, and a spoofing socket for an
attacker on the path who replays an authentic frame from another source."""

import tempfile
import time

import gevent
from gevent import socket

from chatp2p_core.crypto import pqc
from chatp2p_core.net import peers
from netnode import NetNode, wait_connected
from poll import wait_for

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


class Recorder:
    """An observer that notes path changes."""

    def __init__(self):
        self.changed = []

    def link_up(self, link): pass
    def link_down(self, link): pass
    def tick(self, now): pass
    def records(self, link, records): pass

    def path_changed(self, link):
        self.changed.append(link.address)


class Forwarder:
    """A UDP socket that relays between one side and `target`, like a NAT's new mapping."""

    def __init__(self, target):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.target, self.other = target, None
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            data, source = self.sock.recvfrom(65536)
            if source == self.target:
                if self.other is not None:
                    self.sock.sendto(data, self.other)
            else:
                self.other = source
                self.sock.sendto(data, self.target)

    def close(self):
        self.greenlet.kill()
        self.sock.close()


def pair(tmp):
    alice, bob = NetNode(tmp, "alice", BACKEND), NetNode(tmp, "bob", BACKEND)
    link = bob.call(alice)
    assert wait_connected(link)
    alice_link = wait_for(lambda: alice.network.links.get(bob.identity.fingerprint), 10, "alice's link",
                          sleep=gevent.sleep)
    wait_for(lambda: alice_link.connected, 10, "alice connected", sleep=gevent.sleep)
    return alice, bob, alice_link, link


def test_a_rebound_peer_is_followed_once_it_answers_the_challenge():
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, alice_link, bob_link = pair(tmp)
        recorder = Recorder()
        alice.network.observers.append(recorder)
        old = alice_link.address
        forwarder = Forwarder(("127.0.0.1", alice.transport.port))
        try:
            bob_link.address = forwarder.address       # Bob's datagrams now come from a new port
            bob.network._ping(bob_link, time.monotonic())
            wait_for(lambda: alice_link.address == forwarder.address, 10, "alice follows bob", sleep=gevent.sleep)
            assert alice.network.counters["paths_validated"] == 1
            assert recorder.changed == [forwarder.address] and old != forwarder.address
            assert not alice_link.pending_paths
        finally:
            forwarder.close()
            alice.close()
            bob.close()


def test_a_replayed_frame_from_a_spoofed_source_does_not_move_the_session():
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, alice_link, bob_link = pair(tmp)
        # The attacker on the path takes a frame of Bob's before it reaches Alice...
        captured = []
        real_send = bob.transport.send
        bob.transport.send = lambda data, address: captured.append(bytes(data))
        bob.network._ping(bob_link, time.monotonic())
        wait_for(lambda: captured, 5, "a frame from bob", sleep=gevent.sleep)
        bob.transport.send = real_send
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        attacker.settimeout(2)
        try:
            old = alice_link.address
            attacker.sendto(captured[-1], ("127.0.0.1", alice.transport.port))  # ...and races it
            challenge, _ = attacker.recvfrom(65536)            # alice asks the new address...
            assert len(challenge) <= len(captured[-1])         # ...with no more than it got
            with gevent.Timeout(1, False):                     # the attacker cannot answer it
                attacker.recvfrom(65536)
            assert alice_link.address == old and alice.network.counters["paths_validated"] == 0
            assert len(alice_link.pending_paths) == 1
            # Fresh frames raced from many sources keep the pending set bounded.
            for _ in range(10):
                captured.clear()
                bob.transport.send = lambda data, address: captured.append(bytes(data))
                bob.network._ping(bob_link, time.monotonic())
                bob.transport.send = real_send
                other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                other.bind(("127.0.0.1", 0))
                other.sendto(captured[-1], ("127.0.0.1", alice.transport.port))
                other.close()
            wait_for(lambda: alice.network.counters["path_challenges_started"] >= 11, 5, "challenges",
                     sleep=gevent.sleep)
            assert len(alice_link.pending_paths) <= peers.MAX_PENDING_PATHS
            assert alice_link.address == old and alice_link.connected
        finally:
            attacker.close()
            alice.close()
            bob.close()
