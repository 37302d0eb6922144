"""NAT traversal end to end on loopback, against real chatp2pd daemons: STUN discovery and NAT
type (private coturn), STUN servers that fail, `p2p start` validation, `--rendezvous` flags,
introductions through a rendezvous node (and what a stranger learns: nothing), introduction
requests within the rendezvous' limits, TURN allocation (and re-allocation after restarts).

Everything stays on 127.0.0.0/8: coturn on 127.0.0.1 and 127.0.0.2, fake STUN servers on
threads of this process, daemons bound to 127.0.0.1. The real-NAT cases (namespaces) are in
test_nat_netns.py.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from chatp2p_core.codec import stun
from chatp2p_core.codec.stun import Attr, Class, Message, Method
from coturn import Coturn, turnserver_path
from daemon import Daemon
from events import Events
from poll import wait_for

TURN_USER, TURN_PASSWORD, TURN_REALM = "nat-test", "p4ss-w0rd", "chatp2p.test"

TMP = None
STUN_SERVER = None   # STUN-only coturn on 127.0.0.1 and 127.0.0.2
TURN_SERVER = None   # TURN coturn (long-term credentials) on 127.0.0.1
RUNNING = []         # every Node started, stopped at teardown


# -- helpers ----------------------------------------------------------------------------------
class Node:
    """A daemon with its identity, port and (on request) its event log."""

    def __init__(self, label, *args):
        self.label = label
        self.daemon = Daemon(os.path.join(TMP, label), *args)
        self.events = None

    def start(self, events=False):
        self.daemon.start()
        RUNNING.append(self)
        status = self.call("status")
        self.id = status["identity"]["fingerprint"]
        self.port = status["p2p"]["port"]
        if events:
            self.events = Events(self.daemon)
        return self

    def stop(self):
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            assert self.daemon.stop() == 0, self.daemon.stderr_text()[-3000:]

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def call(self, command, action=None, data=None):
        reply = self.daemon.request(command, action, data)
        assert reply["success"], (self.label, command, action, data, reply)
        return reply["data"]

    def p2p(self):
        return self.call("status")["p2p"]

    def peer(self, name):
        return next(p for p in self.call("p2p", "peers") if p["name"] == name)


def needs_coturn():
    if turnserver_path() is None:
        pytest.skip("turnserver (Debian coturn) not installed")


def free_udp_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class FakeStun:
    """A UDP 'STUN server' on a thread: `reply(request) -> list of datagrams` (empty: silent)."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"stun:127.0.0.1:{self.port}"
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                data, source = self.sock.recvfrom(2048)
            except OSError:
                continue
            self.requests += 1
            for answer in self.reply(data):
                self.sock.sendto(answer, source)

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


def _error_answer(request):
    return [stun.encode(Message(Method.BINDING, Class.ERROR, request[8:20],
                                {Attr.ERROR_CODE: (400, "Bad Request")}))]


def _garbage_answer(request):
    txid = request[8:20]
    # A STUN success with this transaction id whose attribute runs past the end, then bytes
    # that are not STUN at all.
    broken = bytes.fromhex("0101 0008 2112a442") + txid + bytes.fromhex("0020 0010 0001 0000")
    return [broken, os.urandom(40), b"\xff" * 7]


# -- module set-up ----------------------------------------------------------------------------
def setup_module():
    global TMP, STUN_SERVER, TURN_SERVER
    TMP = tempfile.mkdtemp(prefix="chatp2p-nat-")
    if turnserver_path() is not None:
        STUN_SERVER = Coturn(addresses=("127.0.0.1", "127.0.0.2")).start()
        TURN_SERVER = Coturn(turn=True, user=TURN_USER, password=TURN_PASSWORD, realm=TURN_REALM).start()


def teardown_module():
    for node in RUNNING:
        try:
            node.stop()
        except Exception:  # report the test's own failure, not the clean-up's
            pass
    for server in (STUN_SERVER, TURN_SERVER):
        if server is not None:
            server.stop()
    shutil.rmtree(TMP, ignore_errors=True)


# -- STUN -------------------------------------------------------------------------------------
def test_stun_discovery_gives_public_address_mapping_and_nat_type():
    needs_coturn()
    urls = f"{STUN_SERVER.url('127.0.0.1')},{STUN_SERVER.url('127.0.0.2')}"
    node = Node("stun", "--stun-urls", urls).start()

    def settled():
        p2p = node.p2p()
        return p2p if p2p["nat_type"] != "unknown" else None
    p2p = wait_for(settled, 15, "a NAT type in status")
    assert p2p["public_address"] == node.address
    assert p2p["mapping"] == "endpoint-independent"   # two server IPs saw the same address
    assert p2p["nat_type"] == "Open Internet", p2p
    assert "pystun3" in p2p["detail"]

    # p2p start (no settings: the same ones) runs discovery again and publishes nat_detected.
    node.events = Events(node.daemon)
    assert node.call("p2p", "start") == "P2P network started"
    found = node.events.wait(lambda e: e["event"] == "nat_detected", 15, what="nat_detected")[0]["data"]
    assert found["public_address"] == node.address      # the restart kept the bound port
    assert found["mapping"] == "endpoint-independent" and found["nat_type"] == "Open Internet"
    assert node.p2p()["port"] == node.port
    node.stop()


def test_failing_stun_servers_leave_the_node_working_with_a_clear_status():
    silent = FakeStun(lambda request: [])
    erring = FakeStun(_error_answer)
    garbage = FakeStun(_garbage_answer)
    nobody = free_udp_port()     # nothing listens there: ICMP port unreachable on our socket
    urls = [silent.url, erring.url, garbage.url, f"stun:127.0.0.1:{nobody}"]
    try:
        x = Node("stun-x", "--stun-urls", ",".join(urls)).start()
        y = Node("stun-y").start(events=True)
        # While discovery runs the API answers at once.
        started = time.monotonic()
        p2p = x.p2p()
        assert time.monotonic() - started < 1.0
        assert p2p["running"] and p2p["public_address"] is None

        def done():
            p2p = x.p2p()
            return p2p if p2p["detail"] != "discovering" else None
        p2p = wait_for(done, 10, "STUN discovery to give up")
        assert p2p["public_address"] is None and p2p["nat_type"] == "unknown" and p2p["mapping"] == "unknown"
        detail = p2p["detail"]
        assert detail.startswith("no STUN server answered"), detail
        for url in urls:
            assert url in detail, (url, detail)
        assert "error 400" in detail, detail
        assert f"no STUN answer from 127.0.0.1:{silent.port}" in detail, detail
        assert "unusable" in detail, detail          # the garbage was seen and ignored, not taken
        assert silent.requests >= 3 and garbage.requests >= 3 and erring.requests == 1

        # Messages still flow on a direct path, both ways.
        x.call("contacts", "add", {"peer": "Y", "public_key": y.id})
        y.call("contacts", "add", {"peer": "X", "public_key": x.id})
        x.call("p2p", "connect", {"peer": "Y", "address": y.address})
        wait_for(lambda: x.peer("Y")["state"] == "connected", 10, "X connected to Y")
        assert x.peer("Y")["path"] == "direct"
        x.call("p2p", "send_message", {"peer": "Y", "message": "despite STUN", "message_id": "stun-1"})
        y.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "stun-1",
                      10, what="the message at Y")
        y.call("p2p", "send_message", {"peer": "X", "message": "back", "message_id": "stun-2"})
        wait_for(lambda: [m for m in x.call("p2p", "history", {"peer": "Y"}) if m["message_id"] == "stun-2"],
                   10, "the answer at X")
        counters = x.p2p()["counters"]
        assert counters.get("stun_errors", 0) == 0 and counters.get("chatp2p_errors", 0) == 0, counters
        # Stopping and starting while discovery runs again never hangs either.
        started = time.monotonic()
        x.call("p2p", "start")
        x.call("p2p", "stop")
        x.call("p2p", "start")
        assert time.monotonic() - started < 2.0
        x.stop()
        y.stop()
    finally:
        for server in (silent, erring, garbage):
            server.close()


def test_p2p_start_refuses_bad_urls_with_clear_errors():
    node = Node("bad-urls").start()
    port = node.port
    cases = [
        ({"stun_urls": ["http://stun.example:3478"]}, "stun_urls: stun server URL must start with 'stun:'"),
        ({"stun_urls": ["stun:127.0.0.1:99999"]}, "stun_urls: bad port"),
        ({"stun_urls": ["stun:"]}, "stun_urls: no host"),
        ({"rendezvous": ["nohost"]}, "rendezvous: expected host:port or host:port#ID"),
        ({"rendezvous": ["127.0.0.1:4000#not-an-id"]}, "rendezvous: invalid rendezvous server ID"),
        ({"turn_servers": [{"url": "stun:127.0.0.1:3478", "username": "u", "credential": "p"}]},
         "turn_servers[0]: turn server URL must start with 'turn:'"),
        ({"turn_servers": [{"url": "turn:127.0.0.1:3478", "username": "u"}]},
         "turn_servers[0] needs url, username and credential"),
        ({"turn_servers": ["turn:127.0.0.1:3478"]}, "turn_servers[0] must be an object"),
    ]
    for data, message in cases:
        started = time.monotonic()
        reply = node.daemon.request("p2p", "start", data)
        assert time.monotonic() - started < 2.0
        assert not reply["success"], (data, reply)
        assert message in reply["error"], (data, reply["error"])
    # Nothing was applied: the P2P network runs on, on the same port, with no STUN server.
    p2p = node.p2p()
    assert p2p["running"] and p2p["port"] == port
    assert p2p["detail"] == "no STUN server configured" and p2p["rendezvous"] == [] and p2p["turn"] is None
    node.stop()


def test_rendezvous_flag_needs_an_explicit_p2p_port():
    data_dir = os.path.join(TMP, "rv-noport", "data")
    cmd = [sys.executable, "-m", "chatp2p", "--data-dir", data_dir, "--ipc-port", "0",
           "--p2p-host", "127.0.0.1", "--rendezvous"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          env=Daemon.environment(os.path.join(TMP, "rv-noport")))
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines == ["chatp2pd: --rendezvous needs an explicit --p2p-port (nodes must know where to find it)"], lines
    # --p2p-port 0 is not explicit enough either: "any free port" cannot be told to others.
    done = subprocess.run(Daemon.command(data_dir, "--rendezvous"), capture_output=True, text=True, timeout=30,
                          env=Daemon.environment(os.path.join(TMP, "rv-noport")))
    assert done.returncode == 2 and "--rendezvous needs an explicit --p2p-port" in done.stderr
    assert not os.path.exists(os.path.join(data_dir, "run.json"))


# -- rendezvous -------------------------------------------------------------------------------
def _registered(node):
    rendezvous = node.p2p()["rendezvous"]
    return rendezvous if rendezvous and all(r["registered"] for r in rendezvous) else None


def test_rendezvous_introduces_contacts_known_by_id_only():
    port = free_udp_port()
    r = Node("rv-r", "--rendezvous", "--p2p-port", str(port)).start()
    assert r.port == port
    server = f"127.0.0.1:{port}#{r.id}"
    a = Node("rv-a", "--rendezvous-servers", server).start(events=True)
    b = Node("rv-b", "--rendezvous-servers", server).start(events=True)
    wrong = Node("rv-wrong", "--rendezvous-servers", f"127.0.0.1:{port}#{a.id}").start()
    stranger = Node("rv-s", "--rendezvous-servers", server).start(events=True)

    for node in (a, b, stranger):
        entry = wait_for(lambda: _registered(node), 10, f"{node.label} registered")[0]
        assert entry == {"server": f"127.0.0.1:{port}", "connected": True, "registered": True,
                         "observed": node.address, "error": None}
        assert node.p2p()["public_address"] == node.address   # the rendezvous doubles as STUN
    serving = r.p2p()["serving_rendezvous"]
    assert serving["registrations"] == 3

    # A server that is not the pinned identity: never registered, and the status says why.
    entry = wait_for(lambda: (wrong.p2p()["rendezvous"][0]["error"] or None) and wrong.p2p()["rendezvous"][0],
                       10, "the wrong-ID node's error")
    assert not entry["connected"] and not entry["registered"] and entry["observed"] is None
    assert "key mismatch" in entry["error"] and "#" in entry["error"], entry
    assert r.p2p()["serving_rendezvous"]["registrations"] == 3

    # A and B know each other by ID only: no bundle, no address.
    a.call("contacts", "add", {"peer": "Bob", "public_key": b.id})
    b.call("contacts", "add", {"peer": "Alice", "public_key": a.id})
    started = time.monotonic()
    reply = a.call("p2p", "connect", {"peer": "Bob"})
    assert reply["peer"] == "Bob" and reply["state"] in ("connecting", "connected")
    got = a.events.wait(lambda e: e["event"] == "peer_connected", 10, what="peer_connected at A")[0]["data"]
    elapsed = time.monotonic() - started
    assert got["peer"] == "Bob" and got["path"] == "direct" and got["address"] == b.address, got
    assert elapsed < 3.0, elapsed
    b.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == "Alice", 10,
                  what="peer_connected at B")
    assert a.peer("Bob")["path"] == "direct" and b.peer("Alice")["state"] == "connected"
    a.call("p2p", "send_message", {"peer": "Bob", "message": "introduced", "message_id": "rv-ab"})
    b.call("p2p", "send_message", {"peer": "Alice", "message": "indeed", "message_id": "rv-ba"})
    b.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "rv-ab", 10,
                  what="A's message at B")
    a.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "rv-ba", 10,
                  what="B's message at A")

    # A stranger S (A does not know S) asks R for A: A stays silent, S learns nothing.
    stranger.call("contacts", "add", {"peer": "A", "public_key": a.id})
    ignored_before = a.p2p()["counters"].get("intro_ignored", 0)
    served_before = r.p2p()["serving_rendezvous"]["counters"]
    reply = stranger.call("p2p", "connect", {"peer": "A"})
    assert reply["address"] is None
    wait_for(lambda: a.p2p()["counters"].get("intro_ignored", 0) > ignored_before, 10,
               "A ignoring the stranger's introduction")
    served = r.p2p()["serving_rendezvous"]["counters"]
    assert served["intros_forwarded"] > served_before["intros_forwarded"]       # R did ask A
    assert served.get("intros_answered", 0) == served_before.get("intros_answered", 0)   # A never answered
    # S's request ends in the same silence as for an absent target (10 s), then it is counted.
    wait_for(lambda: stranger.p2p()["counters"].get("intro_unanswered", 0) >= 1, 15,
               "S's introduction to time out")
    a_address = a.address
    peer = stranger.peer("A")
    assert peer["state"] != "connected" and peer["address"] is None and peer["path"] is None, peer
    assert a_address not in json.dumps(stranger.call("status"))
    assert a_address not in json.dumps(stranger.call("p2p", "peers"))
    assert a_address not in json.dumps(stranger.call("contacts", "list"))
    names = {e["event"] for e in stranger.events.items}
    assert not names & {"peer_connected", "contact_request", "key_mismatch", "path_changed"}, names
    assert a_address not in json.dumps(stranger.events.items)
    assert a_address not in stranger.daemon.stderr_text()
    # and A never reached out to S either: no session, no request from it.
    assert not [e for e in a.events.items if e["event"] == "contact_request"]
    assert stranger.address not in json.dumps(a.call("p2p", "peers"))

    for node in (stranger, wrong, a, b, r):
        node.stop()


def test_introduction_requests_stay_within_the_rendezvous_limits():
    """Every message queued for a contact that is not connected tries to reach it; while an
    introduction request is pending (the server keeps it 10 s) no new one is sent: a burst of
    messages must not use up the requester's 8 slots at the rendezvous (RATE_LIMITED). Nor may
    many offline contacts at once (a reconnection pass asks for all of them)."""
    port = free_udp_port()
    r = Node("once-r", "--rendezvous", "--p2p-port", str(port)).start()
    c = Node("once-c", "--rendezvous-servers", f"127.0.0.1:{port}#{r.id}").start()
    wait_for(lambda: _registered(c), 10, "C registered")
    c.call("contacts", "add", {"peer": "Dora", "public_key": c.daemon.other_id()})   # never online
    before = r.p2p()["serving_rendezvous"]["counters"].get("intro_requests", 0)
    for i in range(12):
        reply = c.daemon.request("p2p", "send_message", {"peer": "Dora", "message": f"queued {i}"})
        assert reply["success"] and reply["data"] == "Message queued", reply
    c.call("p2p", "connect", {"peer": "Dora"})
    # Each API call above ran the node's reach() to the end; the request for the first of the
    # offline contacts below is sent after them all. Loopback keeps C's datagrams in order and R
    # handles them one by one: once that later request is counted, any second request for Dora
    # would have been counted too.
    ids = set()
    while len(ids) < 11:
        ids.add(r.call("crypto", "generate_keypair")["fingerprint"])
    offline = sorted(ids)
    c.call("contacts", "add", {"peer": "Offline0", "public_key": offline[0]})
    c.call("p2p", "connect", {"peer": "Offline0"})
    served = wait_for(lambda: (lambda s: s if s.get("intro_requests", 0) - before >= 2 else None)(
        r.p2p()["serving_rendezvous"]["counters"]), 10, "the requests for Dora and Offline0")
    assert served["intro_requests"] - before == 2, served     # Dora's burst asked once
    assert not served.get("failed_rate_limited") and not c.p2p()["counters"].get("intro_failed_rate_limited"), \
        (served, c.p2p()["counters"])
    assert c.peer("Dora")["state"] == "connecting"

    # More offline contacts than the server's 8 slots per requester: the node spreads its
    # requests over time instead of being refused, and every contact gets its turn.
    for i, contact_id in enumerate(offline[1:], 1):
        c.call("contacts", "add", {"peer": f"Offline{i}", "public_key": contact_id})
        c.call("p2p", "connect", {"peer": f"Offline{i}"})
    served = wait_for(lambda: (lambda s: s if s["intro_requests"] - before >= 8 else None)(
        r.p2p()["serving_rendezvous"]["counters"]), 10, "the slots filled")
    # Dora's, Offline0's and 6 others: the slots are full. A 9th sent now would be refused with
    # RATE_LIMITED (counted below, and in the total of 12 at the end).
    assert served["intro_requests"] - before == 8, served
    assert not served.get("failed_rate_limited"), served
    served = wait_for(lambda: (lambda s: s if s["intro_requests"] - before >= 12 else None)(
        r.p2p()["serving_rendezvous"]["counters"]), 15, "the waiting contacts' turn")
    assert served["intro_requests"] - before == 12 and not served.get("failed_rate_limited"), served
    assert not c.p2p()["counters"].get("intro_failed_rate_limited"), c.p2p()["counters"]
    for node in (c, r):
        node.stop()


# -- TURN -------------------------------------------------------------------------------------
def test_turn_allocation_and_a_wrong_password():
    needs_coturn()
    node = Node("turn").start()
    host, port = TURN_SERVER.address()
    url = f"turn:{host}:{port}"
    assert node.call("p2p", "start", {"turn_servers": [
        {"url": url, "username": TURN_USER, "credential": TURN_PASSWORD}]}) == "P2P network started"

    def allocated():
        turn = node.p2p()["turn"]
        return turn if turn and turn["relayed_address"] else None
    turn = wait_for(allocated, 10, "a TURN allocation")
    assert turn["state"] == "allocated" and turn["error"] is None and turn["server"] == f"{host}:{port}"
    relay_host, _, relay_port = turn["relayed_address"].rpartition(":")
    assert relay_host == host and relay_port.isdigit() and int(relay_port) != port

    # A wrong password: a clear error in the status, no relay, and the node carries on.
    assert node.call("p2p", "start", {"turn_servers": [
        {"urls": [url], "username": TURN_USER, "credential": "Wr0ng-Passw0rd-Marker"}]}) == "P2P network started"

    def failed():
        turn = node.p2p()["turn"]
        return turn if turn and turn["error"] else None
    turn = wait_for(failed, 10, "the TURN error")
    assert turn["relayed_address"] is None, turn
    assert f"TURN authentication failed for user {TURN_USER}" in turn["error"], turn
    status = json.dumps(node.call("status"))
    assert TURN_PASSWORD not in status and "Wr0ng-Passw0rd-Marker" not in status
    assert node.p2p()["running"]

    # Right credentials again, on the same port: the restarts deleted the previous allocations,
    # so the server takes a new one from this address (no lasting 437 "allocation mismatch").
    started = time.monotonic()
    node.call("p2p", "start", {"turn_servers": [{"url": url, "username": TURN_USER, "credential": TURN_PASSWORD}]})
    turn = wait_for(allocated, 10, "a new TURN allocation after the restarts")
    assert turn["state"] == "allocated" and turn["error"] is None
    assert time.monotonic() - started < 5.0
    node.stop()
