"""Test helper: one identity with its store, UDP socket and Network, in this process.

Real handshakes over real UDP on loopback between several `NetNode`s of one test process
(test_strangers.py, test_candidates.py, test_group_peers.py...)."""

from __future__ import annotations

import pathlib
from typing import Optional

import gevent

from chatp2p_core.crypto.identity import Identity
from chatp2p_core.net.peers import Link, Network
from chatp2p_core.net.transport import Transport
from chatp2p_core.store import Contact, Store


class NetNode:
    """An identity, its store (`<tmp>/<label>.db`), a socket on 127.0.0.1 and a started Network;
    `events` collects what the network publishes as (name, data)."""

    def __init__(self, tmp: str, label: str, backend) -> None:
        self.identity = Identity.generate(backend)
        self.store = Store(pathlib.Path(tmp) / f"{label}.db")
        self.transport = Transport("127.0.0.1", 0)
        self.transport.start()
        self.events: list[tuple[str, object]] = []
        self.network = Network(self.identity, backend, self.store, self.transport,
                               lambda name, data: self.events.append((name, data)))
        self.network.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.transport.port)

    @property
    def fingerprint(self) -> bytes:
        return self.identity.fingerprint

    def add(self, other: "NetNode", name: str, with_bundle: bool = True) -> Contact:
        """`other` as a contact (by ID alone when not `with_bundle`)."""
        bundle = other.identity.bundle.to_base64() if with_bundle else None
        return self.store.contacts.add(name, other.identity.fingerprint, bundle)

    def call(self, other: "NetNode", name: str = "peer") -> Link:
        """Add `other` as a contact and start a session with it."""
        return self.network.connect(self.add(other, name), [other.address])

    def named(self, event: str) -> list:
        return [data for name, data in self.events if name == event]

    def close(self) -> None:
        self.network.stop()
        self.transport.stop()
        self.store.close()


class GroupDirectory:
    """The group service's part the network asks (net.peers.GroupPeerDirectory): these
    nodes are members of a group we are in."""

    def __init__(self, *nodes: NetNode) -> None:
        self.bundles = {node.fingerprint: node.identity.bundle.encode() for node in nodes}

    def group_peer_bundle(self, fingerprint: bytes) -> Optional[bytes]:
        return self.bundles.get(fingerprint)


def wait_connected(link: Link, timeout: float = 20.0) -> bool:
    """Wait (a bounded time) for `link` to have a session; whether it has one."""
    with gevent.Timeout(timeout, False):
        while not link.connected:
            link.established.wait(0.5)
    return link.connected
