"""IPv6 end to end, in network namespaces (root only): dual-stack sockets, IPv6 candidates
through a rendezvous, and hole punching through the stateful firewalls of IPv6 homes.

Topology (tests/netns.py `ipv6_topology`, 2001:db8::/32 only): a public namespace on the
"internet" /64 runs a rendezvous node and a plain public node; a left and a right host each sit
in their own /64 behind a router that forwards IPv6 without NAT but lets in only replies to
flows its host started (ip6tables conntrack ESTABLISHED,RELATED), as a home router with IPv6
does. The two hosts know each other by ID only: the rendezvous introduces them over IPv6 and
their simultaneous sends open both firewalls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pytest

from netns import V6_WAN_NET, ipv6_topology, isolated_host, netns_available
from test_nat_netns import NsDaemon, befriend, connect_and_check, wait_registered
from test_online import LOOKUP_INTERVAL

RENDEZVOUS_PORT = 4700


def require_netns():
    ok, reason = netns_available(iptables=True)
    if not ok:
        pytest.skip(reason)
    if shutil.which("ip6tables") is None:
        pytest.skip("ip6tables (Debian iptables) not installed")


class World:
    """The daemons of one test; `logs()` for failure messages (connect_and_check uses it)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.nodes: list[NsDaemon] = []

    def daemon(self, ns, label, *args):
        node = NsDaemon(ns, os.path.join(self.tmp, label), label, *args)
        self.nodes.append(node)
        return node

    def logs(self):
        return "\n".join(f"--- {n.label}\n{n.log_text()[-4000:]}" for n in self.nodes)

    def stop(self):
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()


@contextlib.contextmanager
def daemons():
    tmp = tempfile.mkdtemp(prefix="chatp2p-ipv6-")
    w = World(tmp)
    try:
        yield w
    finally:
        w.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_dual_stack_node_sees_ipv4_and_ipv6_peers_as_plain_addresses():
    """One node bound to "::" (dual-stack), reached over 127.0.0.1 by one peer and over ::1 by
    another: both sessions work, and its peer list spells them 127.0.0.1:P (not the socket's
    ::ffff:127.0.0.1) and [::1]:P."""
    require_netns()
    with isolated_host() as ns, daemons() as w:
        dual = w.daemon(ns, "dual", "--p2p-host", "::").wait_ready()
        v4 = w.daemon(ns, "v4", "--p2p-host", "127.0.0.1").wait_ready()
        v6 = w.daemon(ns, "v6", "--p2p-host", "::1").wait_ready()
        for node in (dual, v4, v6):
            node.subscribe()
        befriend(dual, "Four", v4, "Dual")
        befriend(dual, "Six", v6, "Dual")
        for node, address in ((v4, f"127.0.0.1:{dual.port}"), (v6, f"[::1]:{dual.port}")):
            node.call("p2p", "connect", {"peer": "Dual", "address": address})
        for name, address in (("Four", f"127.0.0.1:{v4.port}"), ("Six", f"[::1]:{v6.port}")):
            dual.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name, 15,
                             what=f"dual: peer_connected {name}")
            assert dual.peer(name)["address"] == address, (dual.call("p2p", "peers"), w.logs())
        assert v6.peer("Dual")["address"] == f"[::1]:{dual.port}"
        assert v4.peer("Dual")["address"] == f"127.0.0.1:{dual.port}"
        for sender, name, receiver in ((dual, "Four", v4), (dual, "Six", v6), (v6, "Dual", dual)):
            message_id = f"{sender.label}-{name}"
            sender.call("p2p", "send_message", {"peer": name, "message": "hi", "message_id": message_id})
            receiver.events.wait(lambda e: e["event"] == "p2p_message_received"
                                 and e["data"]["message_id"] == message_id, 10, what=f"message {message_id}")
        counters = dual.p2p()["counters"]
        assert counters.get("send_errors", 0) == 0, counters


def test_ipv6_homes_behind_firewalls_punch_through_a_rendezvous_reached_over_ipv6():
    require_netns()
    with ipv6_topology() as net, daemons() as w:
        r = w.daemon(net.public, "rendezvous", "--rendezvous", "--p2p-port", str(RENDEZVOUS_PORT)).wait_ready()
        servers = ["--rendezvous-servers", f"[{net.public_ip}]:{RENDEZVOUS_PORT}#{r.id}"]
        left = w.daemon(net.left_host, "left", *servers).wait_ready()
        right = w.daemon(net.right_host, "right", *servers).wait_ready()
        public = w.daemon(net.public, "public").wait_ready()
        for node in (left, right, public):
            node.subscribe()
        befriend(left, "Righty", right, "Lefty")
        befriend(left, "Pub", public, "Lefty")
        for node, ip in ((left, net.left_host_ip), (right, net.right_host_ip)):
            p2p = wait_registered(node, turn=False)
            assert p2p["public_address6"] == f"[{ip}]:{node.port}", p2p  # no NAT: seen as itself
            assert p2p["rendezvous"][0]["server"] == f"[{net.public_ip}]:{RENDEZVOUS_PORT}"

        connect_and_check(w, left, "Righty", right, "Lefty", "direct", 10, "ipv6")
        assert left.peer("Righty")["address"] == f"[{net.right_host_ip}]:{right.port}"
        assert right.peer("Lefty")["address"] == f"[{net.left_host_ip}]:{left.port}"
        served = r.p2p()["serving_rendezvous"]["counters"]
        assert served["intros_forwarded"] >= 1 and served["intros_answered"] >= 1, served

        # A direct `p2p connect` to [v6]:port where the path is open (out of the home).
        reply = left.call("p2p", "connect", {"peer": "Pub", "address": f"[{net.public_ip}]:{public.port}"})
        assert reply["peer"] == "Pub"
        left.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == "Pub", 10,
                         what="left: peer_connected Pub")
        assert left.peer("Pub")["address"] == f"[{net.public_ip}]:{public.port}"


def test_the_firewall_stops_an_unintroduced_ipv6_peer():
    """The control for the test above: without an introduction (no rendezvous), the left node
    knocking at the right host's address is dropped by the right home's firewall."""
    require_netns()
    with ipv6_topology() as net, daemons() as w:
        left = w.daemon(net.left_host, "left").wait_ready()
        right = w.daemon(net.right_host, "right").wait_ready()
        for node in (left, right):
            node.subscribe()
        befriend(left, "Righty", right, "Lefty")
        left.call("p2p", "connect", {"peer": "Righty", "address": f"[{net.right_host_ip}]:{right.port}"})
        with pytest.raises(AssertionError):
            left.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == "Righty", 4,
                             what="left: peer_connected Righty (must not happen)")


def test_online_mode_finds_an_ipv6_contact_through_a_dht_on_ipv6_and_punches_the_firewalls():
    """Online mode on an IPv6-only internet: the private DHT swarm listens on IPv6 only
    (libtorrent's IPv6 DHT, BEP 32), each home publishes its global IPv6 address, finds the
    other's, and their simultaneous sends open both firewalls: direct, no server of theirs."""
    import subprocess
    import sys
    import threading
    require_netns()
    swarm = [f"{V6_WAN_NET}{0x20 + i:x}" for i in range(48)]   # 48: see test_online.SWARM
    with ipv6_topology() as net, daemons() as w:
        for ip in swarm:
            net.public.add_address6("eth0", f"{ip}/64")
        nodes = [f"[{ip}]:6881" for ip in swarm]
        proc = net.public.popen([sys.executable, os.path.join(os.path.dirname(__file__), "dht_swarm.py"), *nodes],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            lines = [proc.stdout.readline()]
            while lines[-1] and not lines[-1].startswith("ready") and len(lines) < 20:
                lines.append(proc.stdout.readline())
            assert lines[-1].startswith("ready"), lines
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            online = ["--online", "--dht-private-swarm", "--dht-bootstrap", ",".join(nodes),
                      "--dht-lookup-interval", LOOKUP_INTERVAL,
                      "--public-stun-urls", "", "--no-port-mapping", "--no-lan-discovery"]
            left = w.daemon(net.left_host, "left", *online).wait_ready()
            right = w.daemon(net.right_host, "right", *online).wait_ready()
            for node in (left, right):
                node.subscribe()
            befriend(left, "Righty", right, "Lefty")
            for node, name in ((left, "Righty"), (right, "Lefty")):
                try:
                    node.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name, 90,
                                     what=f"{node.label}: peer_connected {name}")
                except AssertionError:
                    raise AssertionError(f"{left.call('status')['dht']}\n{w.logs()}") from None
            assert left.peer("Righty")["address"] == f"[{net.right_host_ip}]:{right.port}"
            assert right.peer("Lefty")["address"] == f"[{net.left_host_ip}]:{left.port}"
            assert left.peer("Righty")["path"] == "direct"
        finally:
            proc.stdin.close()
            proc.wait(10)
