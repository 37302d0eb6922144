"""The DHT session's traversal rules (net/dht.py), on a real libtorrent session on loopback
(it talks to nobody: no bootstrap node is given).

Issue 12's slow DHT runs came from two kinds of query that are never answered: to ourselves at
our own external address (a NAT without hairpinning drops it) and, in a swarm all in one /24, to
nodes admitted only because `dht_restrict_search_ips` was off. Each held a put or get until
libtorrent's 15 s timeout (measured by bench/bench_nat.py --scenario dht, not here)."""

import pytest

from chatp2p_core.net.dht import Dht, DhtSettings, session_settings

lt = pytest.importorskip("libtorrent")
BLOCKED, ALLOWED = 1, 0


@pytest.fixture
def dht():
    node = Dht(DhtSettings(listen=("127.0.0.1:0",), bootstrap=(), private_swarm=True))
    node.start()
    yield node
    node.stop()


def access(node, address):
    return node.session.get_ip_filter().access(address)


def test_our_external_addresses_are_filtered_out_of_traversals_and_follow_changes(dht):
    assert dht.session.get_settings()["apply_filter_to_dht"] is True
    dht._exclude_self("198.51.100.11")
    dht._exclude_self("2001:db8::11")
    assert access(dht, "198.51.100.11") == BLOCKED and access(dht, "2001:db8::11") == BLOCKED
    assert access(dht, "198.51.100.12") == ALLOWED and access(dht, "2001:db8::12") == ALLOWED
    # The NAT got a new address: the old one is a stranger's now.
    dht._exclude_self("198.51.100.13")
    assert access(dht, "198.51.100.13") == BLOCKED and access(dht, "198.51.100.11") == ALLOWED
    assert access(dht, "2001:db8::11") == BLOCKED
    assert dht.own_addresses == {4: "198.51.100.13", 6: "2001:db8::11"}


def test_an_unparsable_external_address_changes_nothing(dht):
    dht._exclude_self("198.51.100.11")
    for junk in ("", "not an address", "198.51.100.300", "::ffff::1"):
        dht._exclude_self(junk)
    assert dht.own_addresses == {4: "198.51.100.11"}
    assert access(dht, "198.51.100.11") == BLOCKED


@pytest.mark.parametrize("private_swarm", [False, True])
def test_one_node_per_prefix_joins_a_traversal_also_in_a_private_swarm(private_swarm):
    settings = session_settings(DhtSettings(private_swarm=private_swarm))
    assert settings["dht_restrict_search_ips"] is True
    # A swarm on one /24 still needs every node in the routing table.
    assert settings["dht_restrict_routing_ips"] is (not private_swarm)
