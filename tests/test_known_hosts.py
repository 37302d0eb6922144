"""The network layer tells the handshake which hosts held a contact's session in the last 30
days (they keep reserved handshake capacity while unknown hosts flood). A real Network over a
real store and a real UDP socket on loopback."""

import pathlib
import tempfile
import time

from chatp2p_core.crypto import pqc
from chatp2p_core.crypto.handshake import host_key
from chatp2p_core.crypto.identity import Identity
from chatp2p_core.net.peers import Network
from chatp2p_core.net.transport import Transport
from chatp2p_core.store import Store


def test_host_key_counts_ipv4_addresses_and_ipv6_slash_64s():
    assert host_key(("198.51.100.7", 1)) == host_key(("198.51.100.7", 65535)) == "198.51.100.7"
    assert host_key(("2001:db8:1:2:aaaa::1", 5)) == host_key(("2001:db8:1:2:ffff::9", 6)) == "2001:db8:1:2::/64"
    assert host_key(("2001:db8:1:3::1", 5)) != host_key(("2001:db8:1:2::1", 5))


def test_contacts_hosts_seen_in_the_last_30_days_are_known():
    backend = pqc.select_backend()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(pathlib.Path(tmp) / "chatp2p.db")
        recent = store.contacts.add("Recent", bytes(range(32)), None)
        store.contacts.touch(recent.id, time.time() - 86400, "203.0.113.5:4000")
        old = store.contacts.add("Old", bytes(range(1, 33)), None)
        store.contacts.touch(old.id, time.time() - 31 * 86400, "203.0.113.6:4000")
        blocked = store.contacts.add("Blocked", bytes(range(2, 34)), None)
        store.contacts.touch(blocked.id, time.time(), "203.0.113.7:4000")
        store.contacts.set_blocked("Blocked", True)
        transport = Transport("127.0.0.1", 0)
        transport.start()
        try:
            network = Network(Identity.generate(backend), backend, store, transport, lambda *a: None)
            assert network.is_known_host("203.0.113.5")
            assert not network.is_known_host("203.0.113.6")        # older than 30 days
            assert not network.is_known_host("198.51.100.1")       # never a contact's
            assert not network.is_known_host("203.0.113.7")        # a blocked contact's
            assert network.listener._is_known_host("203.0.113.5")  # the handshake asks the network
        finally:
            transport.stop()
            store.close()
