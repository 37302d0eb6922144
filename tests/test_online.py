"""Online mode: contacts found by ID alone through a DHT, in real namespaces with real NATs.

The "internet" namespace of tests/netns.py `nat_topology` runs coturn (STUN, TURN) and a
private Mainline DHT swarm of 48 libtorrent sessions (tests/dht_swarm.py) on documentation
addresses 198.51.100.20-67. Each daemon is in online mode with that swarm as its only
bootstrap (`--dht-private-swarm`): nothing leaves the namespaces, and an iptables counter in
each host checks that no packet goes anywhere but the test prefixes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from netns import miniupnpd_available, nat_topology, natpmp_router
from poll import wait_for
from test_nat_netns import STUN_PORT, TURN_USER, World, befriend, require_netns

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# 48 nodes, not fewer: the two daemons' own DHT nodes sit behind NATs that drop queries from
# anyone they have not sent to, so each is a node the other cannot reach (as many home nodes of
# the public DHT are). In a swarm of 8 they were among the closest nodes of nearly every key,
# and nearly every put and get of the other waited out libtorrent's 15 s query timeout on them;
# among 48 they are in far fewer traversals, as a given node is in few of the public DHT's.
SWARM = [f"198.51.100.{20 + i}" for i in range(48)]
SWARM_PORT = 6881
# Where a test host may send: the test prefixes, its loopback, and, on its own namespace
# segment, LAN discovery's multicast group and the kernel's IGMP reports for joining it
# (224.0.0.22; online mode turns LAN discovery on). Multicast there is never routed.
TEST_PREFIXES = ("198.51.100.0/24", "203.0.113.0/24", "127.0.0.0/8", "239.255.0.0/16", "224.0.0.0/24")
EGRESS_CHAIN = "CP2P_EGRESS"



# How often the daemons look a contact up while they seek it often (5 s by default): the
# tests wait for the lookup that finds the other's record, not for the interval.
LOOKUP_INTERVAL = "1"


class OnlineWorld(World):
    """coturn and the DHT swarm in the internet namespace; the two NATed nodes in online mode
    (or private, per side), added to each other by ID only; no rendezvous server.
    `lookup_interval`: the daemons' --dht-lookup-interval (None: their default)."""

    lookup_interval = LOOKUP_INTERVAL

    def start(self, turn=True, left_online=True, right_online=True, nodes=True):  # type: ignore[override]
        net = self.net
        for host in (net.left_host, net.right_host):
            count_egress(host)
        self.start_coturn()
        self.start_swarm()
        self.turn = turn
        if nodes:
            self.left = self.start_node(net.left_host, "left", left_online)
            self.right = self.start_node(net.right_host, "right", right_online)
        return self

    def node_args(self, online=True, port_mapping=False):
        net = self.net
        stun = f"stun:{net.public_ip}:{STUN_PORT},stun:{net.public_ip2}:{STUN_PORT}"
        # The test's STUN servers stand for the public ones: online mode uses them, private does not.
        args = ["--public-stun-urls", stun, "--port-mapping" if port_mapping else "--no-port-mapping"]
        if self.turn:
            args += ["--turn-url", f"turn:{net.public_ip}:{STUN_PORT}", "--turn-username", TURN_USER,
                     "--turn-credential-file", self.turn_password_file()]
        if online:
            if self.lookup_interval is not None:
                args += ["--dht-lookup-interval", self.lookup_interval]
            return args + ["--online", "--dht-private-swarm", "--dht-bootstrap",
                           ",".join(f"{ip}:{SWARM_PORT}" for ip in SWARM)]
        return args + ["--private"]

    def start_node(self, ns, label, online=True, port_mapping=False):
        node = self.daemon(ns, label, *self.node_args(online, port_mapping)).wait_ready()
        node.subscribe()
        return node

    def start_swarm(self):
        public = self.net.public
        for ip in SWARM:
            public.add_address("eth0", f"{ip}/24")
        self.swarm = public.popen([sys.executable, os.path.join(TESTS_DIR, "dht_swarm.py"),
                                   *(f"{ip}:{SWARM_PORT}" for ip in SWARM)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.nodes_extra = [self.swarm]
        seen = [self.swarm.stdout.readline() for _ in range(1)]
        while not seen[-1].startswith("ready") and seen[-1] and len(seen) < 20:   # ready within 10 s
            seen.append(self.swarm.stdout.readline())
        assert seen[-1].startswith("ready"), seen
        threading.Thread(target=self.swarm.stdout.read, daemon=True).start()   # never let its pipe fill

    def stop(self):
        super().stop()
        for proc in getattr(self, "nodes_extra", []):
            if proc.poll() is None:
                proc.stdin.close()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def online_world(left_nat, right_nat, lookup_interval=LOOKUP_INTERVAL, **kwargs):
    tmp = tempfile.mkdtemp(prefix="chatp2p-online-")
    try:
        with nat_topology(left_nat, right_nat) as net:
            w = OnlineWorld(net, tmp)
            w.lookup_interval = lookup_interval
            try:
                yield w.start(**kwargs)
            finally:
                w.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def count_egress(ns):
    """An OUTPUT rule counting every packet the host sends anywhere but the test prefixes."""
    ns.iptables("-N", EGRESS_CHAIN)
    for prefix in TEST_PREFIXES:
        ns.iptables("-A", EGRESS_CHAIN, "-d", prefix, "-j", "RETURN")
    ns.iptables("-A", EGRESS_CHAIN, "-j", "RETURN")   # the counter: packets that reach this rule
    ns.iptables("-I", "OUTPUT", "-j", EGRESS_CHAIN)


def egress_packets(ns):
    rows = ns.iptables("-L", EGRESS_CHAIN, "-n", "-v", "-x").splitlines()[2:]
    return int(rows[-1].split()[0])


def udp_packets_to(ns, destinations, port=None):
    """Packets the host sent to `destinations` (UDP, optionally to one port): a counting rule."""
    return sum(_counted(ns, ip, port) for ip in destinations)


def _counted(ns, ip, port):
    chain = "CP2P_TO"
    rows = ns.iptables("-L", chain, "-n", "-v", "-x").splitlines()[2:]
    total = 0
    for row in rows:
        fields = row.split()
        if ip in fields and (port is None or f"dpt:{port}" in row):
            total += int(fields[0])
    return total


def watch_udp(ns, destinations, ports=()):
    ns.iptables("-N", "CP2P_TO")
    for ip in destinations:
        ns.iptables("-A", "CP2P_TO", "-p", "udp", "-d", ip, "-j", "RETURN")
    for ip, port in ports:
        ns.iptables("-A", "CP2P_TO", "-p", "udp", "-d", ip, "--dport", str(port), "-j", "RETURN")
    ns.iptables("-I", "OUTPUT", "-j", "CP2P_TO")


def dht_status(node):
    return node.call("status")["dht"]


def wait_found_and_connected(w, timeout):
    """Both sides see peer_connected (no `p2p connect`: the DHT lookups do it); returns the
    two peer_connected events' data."""
    got = []
    for node, name in ((w.left, "Righty"), (w.right, "Lefty")):
        try:
            event = node.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name,
                                     timeout, what=f"{node.label}: peer_connected {name}")[0]
        except AssertionError:
            raise AssertionError(f"left: {dht_status(w.left)}\nright: {dht_status(w.right)}\n{w.logs()}") from None
        got.append(event["data"])
    return got


def exchange_messages(w, tag):
    for sender, receiver, name in ((w.left, w.right, "Righty"), (w.right, w.left, "Lefty")):
        message_id = f"{tag}-{sender.label}"
        sender.call("p2p", "send_message", {"peer": name, "message": f"hello {tag}", "message_id": message_id})
        receiver.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == message_id,
                             20, what=f"message {message_id}")


# -- tests ------------------------------------------------------------------------------------
def test_cone_nats_knowing_only_ids_connect_direct_through_the_dht():
    require_netns()
    with online_world("cone", "cone", turn=False) as w:
        status = dht_status(w.left)
        settings = status["settings"]
        # Test mode: nothing in the session may reach a public host.
        assert settings["dht_bootstrap_nodes"] == "" and settings["enable_lsd"] is False
        assert settings["enable_upnp"] is False and settings["enable_natpmp"] is False
        assert status["mode"] == "online" and status["running"] is True
        # The DHT listens on the host's outward address only (not loopback or link-local).
        assert settings["listen_interfaces"] == f"{w.net.left_host_ip}:0", settings
        befriend(w.left, "Righty", w.right, "Lefty")       # IDs only: no address, no bundle
        left, right = wait_found_and_connected(w, 90)
        assert left["path"] == right["path"] == "direct", (left, right)
        assert left["address"].startswith(w.net.right_wan_ip + ":"), left
        for node, name in ((w.left, "Righty"), (w.right, "Lefty")):
            found = node.events.wait(lambda e: e["event"] == "contact_found" and e["data"]["peer"] == name, 5,
                                     what=f"{node.label}: contact_found {name}")[0]["data"]
            assert found["via"] == "dht" and found["candidates"] >= 1
        exchange_messages(w, "cone-dht")
        for node in (w.left, w.right):
            # A put reports when its last DHT node answered or timed out, often after the
            # record was already readable.
            status = wait_for(lambda: (lambda s: s if (s["last_publish"] or {}).get("result") == "stored" else None)(
                dht_status(node)), 60, f"{node.label}'s publication reported")
            assert status["nodes"] >= 1 and status["counters"].get("dht_found", 0) >= 1, status
        # After the session both sides hold a pair secret: they publish pairwise slots and
        # stop publishing their ID slots.
        def pairwise_only(node):
            publish = dht_status(node)["last_publish"]
            return publish if publish and publish["slots"] == 1 and \
                node.call("status")["dht"]["counters"].get("dht_publishes", 0) >= 2 else None
        for node in (w.left, w.right):
            wait_for(lambda: pairwise_only(node), 90, f"{node.label} publishes its pairwise slot only")
        for host in (w.net.left_host, w.net.right_host):
            assert egress_packets(host) == 0, host.iptables("-L", EGRESS_CHAIN, "-n", "-v", "-x")


def test_a_random_nat_is_reached_through_the_relay_its_record_names():
    require_netns()
    with online_world("cone", "random", turn=True) as w:
        wait_for(lambda: (w.right.p2p().get("turn") or {}).get("relayed_address"), 20, "right's TURN allocation")
        befriend(w.left, "Righty", w.right, "Lefty")
        left, right = wait_found_and_connected(w, 90)
        assert left["path"] == "relayed" or right["path"] == "relayed", (left, right)
        exchange_messages(w, "relay-dht")
        w.left.events.wait(lambda e: e["event"] == "contact_found" and e["data"]["peer"] == "Righty", 5,
                           what="left: contact_found Righty")


def test_private_mode_sends_nothing_to_the_dht_or_stun():
    require_netns()
    with online_world("cone", "cone", turn=False, left_online=False, right_online=True) as w:
        net = w.net
        for host in (net.left_host, net.right_host):
            watch_udp(host, SWARM, [(net.public_ip, STUN_PORT), (net.public_ip2, STUN_PORT)])
        befriend(w.left, "Righty", w.right, "Lefty")
        reply = w.left.request("p2p", "connect", {"peer": "Righty"})
        assert not reply["success"] and "online mode is off" in reply["error"], reply
        # The online side, in the same world, talks to the swarm and STUN: the counters work.
        wait_for(lambda: udp_packets_to(net.right_host, SWARM) > 0, 20, "the online node's DHT traffic")
        wait_for(lambda: dht_status(w.right).get("last_publish"), 90, "the online node's first publication")
        assert udp_packets_to(net.left_host, SWARM) == 0
        assert udp_packets_to(net.left_host, [net.public_ip, net.public_ip2], STUN_PORT) == 0
        assert dht_status(w.left) == {"mode": "private", "running": False}


def test_a_dead_or_flooded_dht_leaves_chat_on_known_paths_working():
    """Online mode whose DHT answers nothing (its only bootstrap node is a dead local port):
    status says so, and two daemons still chat at a known address while both the DHT port
    and the P2P port take a flood of garbage datagrams."""
    import socket
    from test_transfer import close_pair, start_pair
    root = tempfile.mkdtemp(prefix="chatp2p-deaddht-")
    dead = ("--online", "--dht-private-swarm", "--dht-bootstrap", "127.0.0.1:9", "--public-stun-urls",
            "stun:127.0.0.1:9", "--no-port-mapping", "--no-lan-discovery")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(root, "dead", dead, dead)
        status = a.request("status")["data"]["dht"]
        assert status["mode"] == "online" and status["running"] and status["nodes"] == 0, status
        targets = [("127.0.0.1", status["port"]), ("127.0.0.1", a.request("status")["data"]["p2p"]["port"])]
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(20):
            for target in targets:
                for _ in range(100):
                    flood.sendto(os.urandom(1 + (i * 37) % 1400), target)
            message_id = f"during-flood-{i}"
            a.request("p2p", "send_message", {"peer": "Bob", "message": "still here", "message_id": message_id})
            ev_b.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == message_id,
                      10, what=message_id)
        flood.close()
        assert a.proc.poll() is None and a.request("status")["data"]["dht"]["running"]
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(root, ignore_errors=True)


def test_a_router_offering_nat_pmp_maps_the_port_and_a_peer_behind_a_random_nat_reaches_it_direct():
    """The left home's router runs miniupnpd (NAT-PMP). The left node maps its P2P port there
    and publishes the mapped address; the right node, behind a NAT that defeats punching
    (`--random`) and with no TURN, reaches it there: a direct session. Stopping removes the
    mapping."""
    require_netns()
    ok, reason = miniupnpd_available()
    if not ok:
        pytest.skip(reason)
    with online_world("cone", "random", turn=False, nodes=False) as w:
        net = w.net
        with natpmp_router(net.left_router, (net.public_ip, net.public_ip2, STUN_PORT), w.tmp) as router:
            w.left = w.start_node(net.left_host, "left", port_mapping=True)
            w.right = w.start_node(net.right_host, "right")
            mapping = wait_for(lambda: (dht_status(w.left).get("port_mapping") or {}).get("external"), 60,
                               "left's port mapping")
            assert mapping == f"{net.left_wan_ip}:{w.left.port}", (mapping, router.log())
            befriend(w.left, "Righty", w.right, "Lefty")
            left, right = wait_found_and_connected(w, 90)
            assert left["path"] == right["path"] == "direct", (left, right)
            assert right["address"] == mapping, right          # the right side came in through the mapping
            exchange_messages(w, "natpmp")
            ours = ("udp", w.left.port, net.left_host_ip, w.left.port)
            assert ours in router.mappings(), router.mappings()
            w.left.stop()
            wait_for(lambda: ours not in router.mappings(), 20, "the mapping removed when the node stopped")
