"""NAT traversal through real NATs: network namespaces with iptables MASQUERADE (root only).

Topology (tests/netns.py `nat_topology`): a public namespace on the "internet" 198.51.100.0/24
runs coturn (STUN + TURN, a test user) on 198.51.100.1 and .2, a rendezvous node and a plain
public node P; a left and a right host each sit behind their own NAT router ("cone": plain
MASQUERADE, port-preserving with port-restricted filtering; "random": MASQUERADE --random, a new
port for every destination, which defeats hole punching). The two hosts' nodes know each other
by ID only and are given no address: `p2p connect {peer}` goes through the rendezvous; cone/cone
must punch a direct path, any random side must end up relayed through TURN. P reaches both.

Each daemon runs inside its namespace; its API (127.0.0.1 there) is driven by a small helper
process in the same namespace (`NsDaemon.request`), and its events are read from outside
through the ipc:// socket in its data dir. Everything is torn down by context managers, also
when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from coturn import Coturn, turnserver_path
from daemon import Daemon
from netns import WAIT_STUN, list_namespaces, nat_topology, netns_available
from events import Events
from poll import wait_for

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
STUN_PORT = 3478
RENDEZVOUS_PORT = 4700
TURN_USER, TURN_PASSWORD, TURN_REALM = "nat-netns", "t3st-relay-pw", "chatp2p.test"
KEEPALIVE = "5"

# A persistent API client inside a namespace: one JSON request per stdin line, one JSON reply per
# stdout line (a fresh API connection each time: the server closes idle ones).
HELPER = r"""
import json, sys
from chatp2p_core.api.ctl import ApiClient
run = json.load(open(sys.argv[1]))
for line in sys.stdin:
    request = json.loads(line)
    try:
        with ApiClient.connect("127.0.0.1", int(run["ipc_port"]), None, 60) as client:
            reply = client.request(request["command"], request.get("action"), request.get("data"))
    except Exception as exc:
        reply = {"success": False, "error": "helper: %r" % (exc,)}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""

def require_netns():
    ok, reason = netns_available(iptables=True)
    if not ok:
        pytest.skip(reason)
    if turnserver_path() is None:
        pytest.skip("turnserver (Debian coturn) not installed")


class NsDaemon:
    """A chatp2pd inside a namespace; `request` goes through the helper in that namespace.
    Offers what test_messaging.Events needs (`request`, `other_id`)."""

    def __init__(self, ns, directory, label, *args):
        self.ns = ns
        self.label = label
        self.dir = directory
        self.data_dir = os.path.join(directory, "data")
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "daemon.log")
        self._log = open(self.log_path, "wb")
        self.proc = ns.popen(Daemon.command(self.data_dir, "--p2p-host", "0.0.0.0", "--keepalive-interval",
                                            KEEPALIVE, *args),
                             stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                             env=Daemon.environment(directory))
        self.helper = None
        self.events = None
        self._lock = threading.Lock()
        self._other_id = None

    def wait_ready(self, timeout=20):
        run_file = os.path.join(self.data_dir, "run.json")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(run_file) as handle:
                    if json.load(handle).get("pid") == self.proc.pid:
                        break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not ready within {timeout} s:\n{self.log_text()}")
            time.sleep(0.02)
        self.helper = self.ns.python(HELPER, run_file, env=Daemon.environment(self.dir))
        status = self.call("status")
        self.id = status["identity"]["fingerprint"]
        self.port = status["p2p"]["port"]
        return self

    def request(self, command, action=None, data=None):
        with self._lock:
            self.helper.stdin.write(json.dumps({"command": command, "action": action, "data": data}) + "\n")
            self.helper.stdin.flush()
            line = self.helper.stdout.readline()
        if not line:
            raise RuntimeError(f"the API helper of {self.label} died")
        return json.loads(line)

    def call(self, command, action=None, data=None):
        reply = self.request(command, action, data)
        assert reply["success"], (self.label, command, action, data, reply)
        return reply["data"]

    def other_id(self):
        if self._other_id is None:
            data = self.call("crypto", "generate_keypair")
            self._other_id = data.get("id") or data["fingerprint"]
        return self._other_id

    def subscribe(self):
        self.events = Events(self)
        return self.events

    def p2p(self):
        return self.call("status")["p2p"]

    def peer(self, name):
        return next(p for p in self.call("p2p", "peers") if p["name"] == name)

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self):
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.helper is not None and self.helper.poll() is None:
            self.helper.stdin.close()
            try:
                self.helper.wait(5)
            except subprocess.TimeoutExpired:
                self.helper.kill()
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return code


class World:
    """The topology, coturn, the rendezvous R, the public node P and the two NATed nodes."""

    def __init__(self, net, tmp):
        self.net = net
        self.tmp = tmp
        self.nodes: list[NsDaemon] = []
        self.coturn = None
        self.coturn_proc = None

    # -- building -------------------------------------------------------------------------
    def turn_password_file(self):
        """The TURN password goes in a file: a flag would show it in the process list."""
        path = os.path.join(self.tmp, "turn.password")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(TURN_PASSWORD + "\n")
        return path

    def start_coturn(self):
        net = self.net
        server = Coturn(addresses=(net.public_ip, net.public_ip2), turn=True, user=TURN_USER,
                        password=TURN_PASSWORD, realm=TURN_REALM)
        server.directory = tempfile.mkdtemp(prefix="coturn-", dir=self.tmp)
        server.port = STUN_PORT
        self.coturn = server
        self._coturn_log = open(os.path.join(server.directory, "turn.log"), "wb")
        self.coturn_proc = net.public.popen(server.command(), stdin=subprocess.DEVNULL, stdout=self._coturn_log,
                                            stderr=subprocess.STDOUT, cwd=server.directory)
        done = net.public.run([sys.executable, "-c", WAIT_STUN, TESTS_DIR, str(STUN_PORT),
                               net.public_ip, net.public_ip2], check=False, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"coturn did not answer in the public namespace:\n{server.read_log()}")

    def daemon(self, ns, label, *args):
        node = NsDaemon(ns, os.path.join(self.tmp, label), label, *args)
        self.nodes.append(node)
        return node

    def start(self, turn=True):
        net = self.net
        self.start_coturn()
        self.r = self.daemon(net.public, "rendezvous", "--rendezvous", "--p2p-port", str(RENDEZVOUS_PORT)).wait_ready()
        stun_urls = f"stun:{net.public_ip}:{STUN_PORT},stun:{net.public_ip2}:{STUN_PORT}"
        self.nat_args = ["--stun-urls", stun_urls,
                         "--rendezvous-servers", f"{net.public_ip}:{RENDEZVOUS_PORT}#{self.r.id}"]
        if turn:
            self.nat_args += ["--turn-url", f"turn:{net.public_ip}:{STUN_PORT}",
                              "--turn-username", TURN_USER, "--turn-credential-file", self.turn_password_file()]
        self.left = self.daemon(net.left_host, "left", *self.nat_args)
        self.right = self.daemon(net.right_host, "right", *self.nat_args)
        self.public = self.daemon(net.public, "public", *self.nat_args)
        for node in (self.left, self.right, self.public):
            node.wait_ready()
            node.subscribe()
        befriend(self.left, "Righty", self.right, "Lefty")
        befriend(self.public, "Lefty", self.left, "Pub")
        befriend(self.public, "Righty", self.right, "Pub")
        for node in (self.left, self.right, self.public):
            wait_registered(node, turn)
        return self

    def stop(self):
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception:
                pass
        if self.coturn_proc is not None and self.coturn_proc.poll() is None:
            self.coturn_proc.terminate()
            try:
                self.coturn_proc.wait(3)
            except subprocess.TimeoutExpired:
                self.coturn_proc.kill()
                self.coturn_proc.wait()
        if self.coturn is not None:
            self._coturn_log.close()

    def logs(self):
        return "\n".join(f"--- {n.label}\n{n.log_text()[-4000:]}" for n in self.nodes)


@contextlib.contextmanager
def world(left_nat, right_nat, turn=True, before_start=None):
    """Everything for one NAT combination; all of it is gone when the block exits.
    `before_start(net)` runs before any daemon does (firewall rules that must hold from the
    first packet: a node reaches its new contacts on its own as soon as it is registered)."""
    tmp = tempfile.mkdtemp(prefix="chatp2p-natns-")
    try:
        with nat_topology(left_nat, right_nat) as net:
            if before_start is not None:
                before_start(net)
            w = World(net, tmp)
            try:
                yield w.start(turn)
            finally:
                w.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def befriend(x, name_of_y, y, name_of_x):
    """Contacts by ID only: no bundle, no address."""
    x.call("contacts", "add", {"peer": name_of_y, "public_key": y.id})
    y.call("contacts", "add", {"peer": name_of_x, "public_key": x.id})


def wait_registered(node, turn=True, timeout=15):
    def ready():
        p2p = node.p2p()
        ok = all(r["registered"] for r in p2p["rendezvous"]) and p2p["rendezvous"]
        if turn:
            ok = ok and p2p["turn"] and p2p["turn"]["relayed_address"]
        return p2p if ok else None
    return wait_for(ready, timeout, f"{node.label} registered with the rendezvous (and TURN allocated)")


def connect_and_check(w, x, name_of_y, y, name_of_x, path, timeout, tag):
    """x asks for y by name alone; both see peer_connected on `path`; messages flow both ways.
    Returns the seconds from the request to x's peer_connected."""
    started = time.monotonic()
    reply = x.call("p2p", "connect", {"peer": name_of_y})
    assert reply["peer"] == name_of_y
    try:
        got = x.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name_of_y,
                            timeout, what=f"{x.label}: peer_connected {name_of_y}")[0]["data"]
    except AssertionError:
        raise AssertionError(f"{x.label} -> {name_of_y}: {x.call('p2p', 'peers')}\n{w.logs()}") from None
    elapsed = time.monotonic() - started
    assert got["path"] == path, (got, w.logs())
    y.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name_of_x, 5,
                  what=f"{y.label}: peer_connected {name_of_x}")
    assert x.peer(name_of_y)["path"] == path and y.peer(name_of_x)["path"] == path
    for sender, receiver, name_of_receiver in ((x, y, name_of_y), (y, x, name_of_x)):
        message_id = f"{tag}-{sender.label}-{receiver.label}"
        sender.call("p2p", "send_message", {"peer": name_of_receiver, "message": f"hello over {path}",
                                            "message_id": message_id})
        receiver.events.wait(lambda e: e["event"] == "p2p_message_received"
                             and e["data"]["message_id"] == message_id, 10, what=f"message {message_id}")
        sender.events.wait(lambda e: e["event"] == "message_delivered" and e["data"]["message_id"] == message_id,
                           10, what=f"delivery of {message_id}")
    return elapsed


def check_public_node_reaches_both(w):
    for name, other in (("Lefty", w.left), ("Righty", w.right)):
        connect_and_check(w, w.public, name, other, "Pub", "direct", 10, f"pub-{name}")


def check_nat_view(node, kind):
    """What STUN told the node about its NAT (the mapping needs both server IPs' answers)."""
    def settled():
        p2p = node.p2p()
        return p2p if p2p["nat_type"] != "unknown" or "pystun3" in p2p["detail"] else None
    p2p = wait_for(settled, 15, f"{node.label}'s NAT type")
    if kind == "cone":
        assert p2p["mapping"] == "endpoint-independent", p2p
        assert p2p["nat_type"] in ("Port Restricted Cone", "Restricted Cone", "Full Cone"), p2p
    elif kind == "random":
        assert p2p["mapping"] == "endpoint-dependent", p2p
        assert p2p["nat_type"] == "Symmetric NAT", p2p
    else:
        assert p2p["nat_type"] == "Open Internet", p2p
    return p2p


# -- tests ------------------------------------------------------------------------------------
def test_cone_nats_punch_a_direct_path_through_the_rendezvous():
    require_netns()
    with world("cone", "cone") as w:
        net = w.net
        left = check_nat_view(w.left, "cone")
        check_nat_view(w.right, "cone")
        check_nat_view(w.public, "public")
        assert left["public_address"].startswith(net.left_wan_ip + ":")
        elapsed = connect_and_check(w, w.left, "Righty", w.right, "Lefty", "direct", 5, "cone")
        assert elapsed < 2.0, elapsed
        peer = w.left.peer("Righty")
        assert peer["address"].startswith(net.right_wan_ip + ":"), peer   # the NAT's address, not the relay's
        served = w.r.p2p()["serving_rendezvous"]["counters"]
        assert served["intros_forwarded"] >= 1 and served["intros_answered"] >= 1, served
        check_public_node_reaches_both(w)


def test_one_random_nat_falls_back_to_the_relay():
    require_netns()
    with world("cone", "random") as w:
        check_nat_view(w.right, "random")
        connect_and_check(w, w.left, "Righty", w.right, "Lefty", "relayed", 10, "cone-random")
        relay_ip = w.net.public_ip
        assert w.left.peer("Righty")["address"].split(":")[0] in (relay_ip, w.net.public_ip2, w.net.right_wan_ip)
        # A file over the relayed session: bursts of DATA leave as one ChannelData each.
        relayed = send_file(w, w.left, w.right, "Righty", "relayed")
        assert sum(relayed.values()) > 0, relayed


def test_two_random_nats_talk_through_the_relay_and_the_public_node_reaches_both():
    require_netns()
    with world("random", "random") as w:
        check_nat_view(w.left, "random")
        # This time the right side asks.
        connect_and_check(w, w.right, "Lefty", w.left, "Righty", "relayed", 10, "random-random")
        check_public_node_reaches_both(w)


def test_a_relayed_session_moves_to_a_direct_path_when_one_opens():
    """Direct traffic between the two NATs is blocked while they connect, so the session is
    relayed; once it is let through, the relayed session's direct probes find the path and
    both sides move to it (path_changed), keeping the same session; a file then goes direct."""
    require_netns()

    def direct_rules(net):
        return [(net.left_router, net.right_wan_ip), (net.right_router, net.left_wan_ip)]

    def block_direct(net):  # from the start: the nodes reach each other on their own once registered
        for router, other in direct_rules(net):
            router.iptables("-I", "FORWARD", "-d", other, "-j", "DROP")
            router.iptables("-I", "FORWARD", "-s", other, "-j", "DROP")

    with world("cone", "cone", before_start=block_direct) as w:
        net = w.net
        rules = direct_rules(net)
        connect_and_check(w, w.left, "Righty", w.right, "Lefty", "relayed", 10, "blocked")
        for router, other in rules:
            router.iptables("-D", "FORWARD", "-d", other, "-j", "DROP")
            router.iptables("-D", "FORWARD", "-s", other, "-j", "DROP")
        for node, name in ((w.left, "Righty"), (w.right, "Lefty")):
            changed = node.events.wait(lambda e: e["event"] == "path_changed" and e["data"]["peer"] == name
                                       and e["data"]["path"] == "direct", 25,
                                       what=f"{node.label}: path_changed {name} direct")[0]["data"]
            assert node.peer(name)["path"] == "direct", (changed, w.logs())
        assert w.left.peer("Righty")["address"].startswith(net.right_wan_ip + ":")
        message_id = "after-upgrade"
        w.left.call("p2p", "send_message", {"peer": "Righty", "message": "now direct", "message_id": message_id})
        w.right.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == message_id,
                            10, what="message after the upgrade")
        send_file_without_the_relay(w, w.right, w.left, "Lefty")


def send_file_without_the_relay(w, sender, receiver, name_of_receiver):
    """A file after the upgrade takes the session's direct route: nothing (DATA or FILE_ACK)
    goes through either node's TURN allocation. Right answered the first handshake through its
    relay, and Left's address, the same for the relay and for direct (a cone NAT), stayed in
    its list of addresses the relay had forwarded: file frames used to be routed by that list."""
    relayed = send_file(w, sender, receiver, name_of_receiver, "after-upgrade")
    # 4 MiB is thousands of DATA datagrams and hundreds of ACKs: a handful through the relay
    # would be a straggling keepalive, not the file.
    assert all(count <= 3 for count in relayed.values()), (relayed, w.logs())


def send_file(w, sender, receiver, name_of_receiver, tag):
    """`sender` sends a 4 MiB file that `receiver` accepts and gets intact; returns how many
    datagrams each of them sent through its TURN relay meanwhile."""
    from test_transfer import make_file

    source = os.path.join(w.tmp, f"{tag}.bin")
    digest = make_file(source, 4 << 20, seed=13)
    before = {node.label: node.p2p()["counters"].get("relay_sent", 0) for node in (sender, receiver)}
    reply = sender.request("p2p", "send_file", {"peer": name_of_receiver, "file_path": source})
    assert reply["success"], reply
    tid = reply["transfer_id"]
    receiver.events.wait(lambda e: e["event"] == "file_offer" and e["data"]["transfer_id"] == tid, 10,
                         what=f"file_offer ({tag})")
    receiver.call("p2p", "accept_file", {"transfer_id": tid})
    got = receiver.events.wait(lambda e: e["event"] == "file_received" and e["data"]["transfer_id"] == tid, 60,
                               what=f"file_received ({tag})")[0]["data"]
    assert got["sha256"] == digest
    after = {node.label: node.p2p()["counters"].get("relay_sent", 0) for node in (sender, receiver)}
    return {label: after[label] - before[label] for label in after}


def test_namespaces_and_daemons_go_away_when_a_test_fails():
    require_netns()
    names, procs = [], []
    with pytest.raises(RuntimeError, match="a failing test"):
        with world("cone", "random", turn=False) as w:
            names = [ns.name for ns in w.net.namespaces()]
            procs = [n.proc for n in w.nodes] + [n.helper for n in w.nodes] + [w.coturn_proc]
            assert set(names) <= set(list_namespaces())
            raise RuntimeError("a failing test")
    left = set(names) & set(list_namespaces())
    assert not left, left
    assert all(p.poll() is not None for p in procs)
