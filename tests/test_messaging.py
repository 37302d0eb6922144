"""Secure P2P sessions and messaging, end to end against real chatp2pd daemons on loopback.

Every test starts its own daemons (one subprocess each, through the `net` fixture) and makes
its own contacts, so the tests do not depend on each other or on their order: A "Alice",
B "Bob", C "Carol" talk directly; D and E talk only through an ImpairmentProxy pair (loss,
duplication, reordering, capture). Events are read with a plain (non-green) pyzmq SUB socket
on each daemon's ipc:// endpoint (tests/events.py).
"""

import base64
import json
import os
import random
import shutil
import socket
import sqlite3
import struct
import tempfile
import threading
import time

import pytest

from chatp2p_core.crypto import identity as ident
from daemon import Daemon
from events import Events
from netproxy import ImpairmentProxy
from poll import wait_for

KEEPALIVE = "1"          # seconds: a dead peer is noticed after three silent intervals
D_NAME_FOR_E = "PeerNameEvelynQuux"      # long, distinctive: must never appear on the wire
E_NAME_FOR_D = "PeerNameDorotheaZorp"
SECRET = "s3cr3t-plaintext-marker"        # in every proxied message body


# -- helpers ----------------------------------------------------------------------------------
class Node:
    """A daemon, its identity and its event log (renewed on every restart)."""

    def __init__(self, root, label):
        self.label = label
        self.daemon = Daemon(os.path.join(root, label), "--keepalive-interval", KEEPALIVE)
        self.events = None
        self.logs = []

    def start(self):
        self.daemon.start()
        status = self.daemon.request("status")["data"]
        self.id = status["identity"]["fingerprint"]
        self.bundle = status["identity"]["public_key"]
        self.fp = ident.parse_id(self.id)
        self.port = status["p2p"]["port"]
        self.events = Events(self.daemon)
        return self

    def stop(self, kill=False):
        if kill:
            self.daemon.kill()
        else:
            assert self.daemon.stop() == 0, self.daemon.stderr_text()[-3000:]
        self.logs.append(self.daemon.stderr_text())
        self.events.close()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def call(self, command, action=None, data=None):
        reply = self.daemon.request(command, action, data)
        assert reply["success"], (self.label, command, action, reply)
        return reply["data"]

    def counters(self):
        return self.call("status")["p2p"]["counters"]

    def history(self, peer):
        """Every stored message with `peer`, oldest first (pages of 1000)."""
        pages, before = [], None
        while True:
            data = {"peer": peer, "limit": 1000}
            if before is not None:
                data["before"] = before
            page = self.call("p2p", "history", data)
            if not page:
                break
            pages = page + pages
            before = page[0]["id"]
            if len(page) < 1000:
                break
        return pages


def befriend(x, name_of_y, y, name_of_x, by_id=True):
    """x adds y as `name_of_y` and y adds x as `name_of_x` (by ID: the bundle comes at the handshake)."""
    x.call("contacts", "add", {"peer": name_of_y, "public_key": y.id if by_id else y.bundle})
    y.call("contacts", "add", {"peer": name_of_x, "public_key": x.id if by_id else x.bundle})


def pipeline(node, requests, timeout=60):
    """Send all requests on ONE API connection without waiting, then read every answer (in order)."""
    sock = socket.create_connection(("127.0.0.1", node.daemon.port), timeout=timeout)
    payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in requests)
    writer = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    writer.start()
    reader = sock.makefile("rb")
    try:
        replies = [json.loads(reader.readline()) for _ in requests]
    finally:
        writer.join(timeout)
        sock.close()
    return replies


def send_requests(peer, ids, body):
    return [{"command": "p2p", "action": "send_message",
             "data": {"peer": peer, "message": body(i), "message_id": mid}} for i, mid in enumerate(ids)]


def in_order_ids(events, prefix):
    return [e["message_id"] for e in events if e["message_id"].startswith(prefix)]


def run_both(*jobs):
    """Run callables concurrently on threads; return their results, re-raising the first error."""
    results, errors = [None] * len(jobs), []

    def wrap(i, job):
        try:
            results[i] = job()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def exchange_burst(x, name_of_y, y, name_of_x, count, tag, timeout):
    """count messages x->y and y->x at once, pipelined; assert exactly-once in-order delivery."""
    xy = [f"{tag}-xy-{i:05d}" for i in range(count)]
    yx = [f"{tag}-yx-{i:05d}" for i in range(count)]
    rx, ry = run_both(
        lambda: pipeline(x, send_requests(name_of_y, xy, lambda i: f"{SECRET} {tag} x->y number {i} " + "é" * (i % 7))),
        lambda: pipeline(y, send_requests(name_of_x, yx, lambda i: f"{SECRET} {tag} y->x number {i}")))
    for replies in (rx, ry):
        assert all(r["success"] for r in replies), [r for r in replies if not r["success"]][:3]
        assert {r["data"] for r in replies} <= {"Message sent", "Message queued"}
    assert [r["message_id"] for r in rx] == xy and [r["message_id"] for r in ry] == yx
    check_delivery(x, name_of_y, y, name_of_x, xy, f"{tag}-xy-", timeout)
    check_delivery(y, name_of_x, x, name_of_y, yx, f"{tag}-yx-", timeout)


def check_delivery(sender, name_of_receiver, receiver, name_of_sender, ids, prefix, timeout):
    """Receiver: events and history hold exactly `ids`, in order; sender: each one delivered."""
    got = receiver.events.wait_count("p2p_message_received", len(ids), timeout, peer=name_of_sender,
                                     key=lambda d: d["message_id"].startswith(prefix))
    got_ids = [d["message_id"] for d in got]
    assert got_ids == ids, (f"{receiver.label} got {len(got_ids)} of {len(ids)} messages {prefix}* "
                            f"(duplicates: {len(got_ids) - len(set(got_ids))}, "
                            f"in order: {got_ids == sorted(got_ids)}); counters: "
                            f"{sender.label}={sender.counters()} {receiver.label}={receiver.counters()}")
    done = sender.events.wait_count("message_delivered", len(ids), timeout, peer=name_of_receiver,
                                    key=lambda d: d["message_id"].startswith(prefix))
    assert sorted(d["message_id"] for d in done) == sorted(ids), f"{len(done)} of {len(ids)} delivered"
    stored = [m for m in receiver.history(name_of_sender) if m["message_id"].startswith(prefix)]
    assert [m["message_id"] for m in stored] == ids
    assert all(m["direction"] == "in" and m["state"] == "received" for m in stored)
    sent = [m for m in sender.history(name_of_receiver) if m["message_id"].startswith(prefix)]
    assert [m["message_id"] for m in sent] == ids and {m["state"] for m in sent} == {"delivered"}
    # no later duplicate either: a marker sent afterwards on the same session arrives after
    # anything still on its way (delivery is in order)
    marker = f"marker-after-{prefix}{len(ids)}"
    sender.call("p2p", "send_message", {"peer": name_of_receiver, "message": "marker", "message_id": marker})
    receiver.events.wait_data("p2p_message_received", timeout, peer=name_of_sender, message_id=marker)
    again = [d for d in receiver.events.all("p2p_message_received", peer=name_of_sender)
             if d["message_id"].startswith(prefix)]
    assert len(again) == len(ids)


def held_count(node, fingerprint_id):
    """Messages a node holds from a stranger, read from its database (WAL: readable while it runs)."""
    db = sqlite3.connect(f"file:{os.path.join(node.daemon.data_dir, 'chatp2p.db')}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM held_messages WHERE fingerprint = ?",
                          (ident.parse_id(fingerprint_id),)).fetchone()[0]
    finally:
        db.close()


def negotiate(x, name_of_y, timeout=10):
    return x.call("contacts", "negotiate_keys", {"peer": name_of_y, "timeout": timeout})


def drain(sock, sent_bytes, answered_bytes):
    """Read every answer waiting on `sock`; return (sent_bytes, answered_bytes + their size)."""
    sock.setblocking(False)
    try:
        while True:
            answered_bytes += len(sock.recv(65535))
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return sent_bytes, answered_bytes


def proxy_socket(proxy, address):
    """The proxy's own UDP socket bound at `address`: sending from it looks like relayed traffic."""
    for sock in proxy._sockets:
        if sock.getsockname()[:2] == tuple(address):
            return sock
    raise AssertionError(f"no proxy socket at {address}")


# -- daemons of one test -----------------------------------------------------------------------
class Net:
    """The daemons (and proxies) of one test, in a fresh temporary directory."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="chatp2p-msg-")
        self.nodes = []
        self.proxies = []

    def start(self, *labels):
        nodes = [Node(self.tmp, label) for label in labels]
        self.nodes += nodes
        run_both(*(n.start for n in nodes))
        return nodes if len(nodes) > 1 else nodes[0]

    def proxy(self, x, y, **impairments):
        """An ImpairmentProxy pair between x and y; x and y reach each other only through it."""
        proxy = ImpairmentProxy.pair(x.port, y.port, **impairments).start()
        self.proxies.append(proxy)
        return proxy

    def close(self):
        for proxy in self.proxies:
            proxy.stop()
        for node in self.nodes:
            if node.daemon.proc is not None and node.daemon.proc.poll() is None:
                node.daemon.stop()
            if node.events is not None and not node.events.stopping:
                node.events.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def net():
    world = Net()
    try:
        yield world
    finally:
        world.close()


def alice_bob(net, connect=True):
    """A "Alice" and B "Bob", contacts of each other by ID; connected (A called B) on request."""
    a, b = net.start("a", "b")
    befriend(a, "Bob", b, "Alice")
    if connect:
        a.call("p2p", "connect", {"peer": "Bob", "address": b.address})
        negotiate(a, "Bob")
        b.events.wait_data("peer_connected", 10, peer="Alice")
    return a, b


def dora_evelyn(net, **impairments):
    """D and E, contacts under long names, connected only through a capturing proxy."""
    d, e = net.start("d", "e")
    befriend(d, D_NAME_FOR_E, e, E_NAME_FOR_D)
    proxy = net.proxy(d, e, capture=True, seed=7, **impairments)
    d.call("p2p", "connect", {"peer": D_NAME_FOR_E, "address": "%s:%d" % proxy.reach_b})
    e.call("p2p", "connect", {"peer": E_NAME_FOR_D, "address": "%s:%d" % proxy.reach_a})
    assert negotiate(d, D_NAME_FOR_E, timeout=20)["address"] == "%s:%d" % proxy.reach_b
    assert negotiate(e, E_NAME_FOR_D, timeout=20)["address"] == "%s:%d" % proxy.reach_a
    return d, e, proxy


# -- 1. keys --------------------------------------------------------------------------------
def test_negotiate_keys_safety_number_stable_across_restarts(net):
    # The lower fingerprint initiates first; then each side restarts and reconnects by itself.
    A, B = alice_bob(net, connect=False)
    low, high = sorted((A, B), key=lambda n: n.fp)
    name = {A: "Bob", B: "Alice"}                      # how each of A, B calls the other
    connected = low.call("p2p", "connect", {"peer": name[low], "address": high.address})
    assert connected["peer"] == name[low] and connected["state"] in ("connecting", "connected")
    first_low = negotiate(low, name[low])
    first_high = negotiate(high, name[high])
    number = first_low["safety_number"]
    assert len(number.split()) == 12 and number == first_high["safety_number"]
    assert first_low["fingerprint"] == high.id and first_high["fingerprint"] == low.id
    assert first_low["verified"] is False
    assert {first_low["role"], first_high["role"]} == {"initiator", "responder"}
    assert high.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name[high], 5)

    for restarted, other in ((high, low), (low, high)):
        restarted.stop()
        other.events.wait(lambda e: e["event"] == "peer_disconnected" and e["data"]["peer"] == name[other], 5,
                          what="peer_disconnected")
        before = len(other.events.all("peer_connected", peer=name[other]))
        restarted.start()                           # new P2P port; it reconnects from what it stored
        again = negotiate(restarted, name[restarted])
        assert again["safety_number"] == number and again["role"] == "initiator"
        other_view = negotiate(other, name[other])
        assert other_view["safety_number"] == number and other_view["role"] == "responder"
        assert other_view["address"] == restarted.address   # a new session, with the new instance
        assert len(other.events.wait_count("peer_connected", before + 1, 5, peer=name[other])) == before + 1

    verified = A.call("contacts", "verify", {"peer": "Bob"})
    assert verified["verified"] is True and verified["name"] == "Bob"
    assert [c["verified"] for c in A.call("contacts", "list") if c["name"] == "Bob"] == [True]
    assert negotiate(A, "Bob")["verified"] is True
    peers = {p["name"]: p for p in A.call("p2p", "peers")}
    assert peers["Bob"]["state"] == "connected" and peers["Bob"]["fingerprint"] == B.id


# -- 2. 1,000 messages each way -------------------------------------------------------------
def test_thousand_messages_each_way_pipelined(net):
    A, B = alice_bob(net)
    exchange_burst(A, "Bob", B, "Alice", 1000, "burst", timeout=40)
    assert B.counters().get("messages_received", 0) >= 1000


# -- 3. the same through loss, duplication, reordering ----------------------------------------
def test_thousand_messages_each_way_through_lossy_proxy(net):
    D, E, proxy = dora_evelyn(net, loss=0.10, duplicate=0.05, reorder=0.05)
    exchange_burst(D, D_NAME_FOR_E, E, E_NAME_FOR_D, 1000, "lossy", timeout=60)

    stats = proxy.stats()
    for direction in ("up", "down"):
        counted = stats[direction]
        assert counted["dropped"] > 0 and counted["duplicated"] > 0 and counted["reordered"] > 0, stats
        assert counted["rejected"] == 0 and counted["errors"] == 0, stats
    assert D.counters().get("messages_retransmitted", 0) > 0
    assert E.counters().get("messages_duplicate", 0) + E.counters().get("dropped_replay", 0) > 0

    captured = proxy.captured()
    # 2,000 messages of ~110 bytes on the wire each, coalesced into full datagrams
    assert not proxy.capture_truncated and sum(len(p) for p in captured) > 200_000
    assert max(len(p) for p in captured) <= 1200
    needles = [SECRET.encode(), "number 17".encode(), D_NAME_FOR_E.encode(), E_NAME_FOR_D.encode(),
               "é".encode() * 4]
    for node in (D, E):
        raw = base64.b64decode(node.bundle)
        bundle = ident.Bundle.from_base64(node.bundle)
        needles += [node.bundle[i:i + 24].encode() for i in range(0, len(node.bundle) - 24, 97)]
        needles += [raw[i:i + 16] for i in range(0, len(raw) - 16, 61)]
        needles += [bundle.kem_public[:16], bundle.kem_public[-16:], bundle.sig_public[:16],
                    bundle.sig_public[-16:], node.fp, node.id.encode()]
    leaks = [n for n in needles if proxy.contains(n)]
    assert not leaks, f"{len(leaks)} secrets visible on the wire, e.g. {leaks[:3]}"


# -- 4. three nodes ---------------------------------------------------------------------------
def test_three_nodes_pairwise(net):
    A, B, C = net.start("a", "b", "c")
    befriend(A, "Bob", B, "Alice")
    befriend(B, "Carol", C, "Bob")
    befriend(A, "Carol", C, "Alice", by_id=False)
    for x, name_of_y, y in ((A, "Bob", B), (A, "Carol", C), (B, "Carol", C)):
        x.call("p2p", "connect", {"peer": name_of_y, "address": y.address})
    pairs = [(A, "Bob", B, "Alice"), (B, "Carol", C, "Bob"), (A, "Carol", C, "Alice")]
    jobs = [lambda p=p: exchange_burst(*p, 30, f"trio{i}", timeout=20) for i, p in enumerate(pairs)]
    run_both(*jobs)
    for node in (A, B, C):
        assert node.call("status")["peers"] == 2


# -- 5. offline queue, restart, kill -9 --------------------------------------------------------
def test_offline_queue_delivered_after_restart(net):
    # The sender has the lower fingerprint: its own retries to the dead address must not make
    # it refuse the receiver's new handshake (simultaneous-open rule).
    A, B = alice_bob(net)
    sender, receiver = sorted((A, B), key=lambda n: n.fp)
    name = {A: "Bob", B: "Alice"}
    old_port = receiver.port
    receiver.stop()
    sender.events.wait(lambda e: e["event"] == "peer_disconnected", 5)
    knocked = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # the receiver's old port
    knocked.bind(("127.0.0.1", old_port))
    ids = [f"offline-{i:03d}" for i in range(20)]
    replies = pipeline(sender, send_requests(name[sender], ids, lambda i: f"queued message {i}"))
    assert [r["data"] for r in replies] == ["Message queued"] * 20, replies[:2]
    queued = [m for m in sender.history(name[sender]) if m["message_id"].startswith("offline-")]
    assert [m["state"] for m in queued] == ["queued"] * 20
    # The sender keeps knocking on the old port (with a handshake in flight) ...
    try:
        knocked.settimeout(10)
        _, source = knocked.recvfrom(2048)
        assert source[1] == sender.port, source
    finally:
        knocked.close()
    receiver.start()                                # ... when the receiver comes back: same data dir, new port
    receiver.call("p2p", "connect", {"peer": name[receiver], "address": sender.address})
    check_delivery(sender, name[sender], receiver, name[receiver], ids, "offline-", timeout=20)


def test_kill_receiver_mid_burst(net):
    A, B = alice_bob(net)
    sender, receiver = sorted((A, B), key=lambda n: n.fp)
    name = {A: "Bob", B: "Alice"}
    ids = [f"kill-{i:04d}" for i in range(1000)]
    replies = []
    burst = threading.Thread(target=lambda: replies.extend(
        pipeline(sender, send_requests(name[sender], ids, lambda i: f"burst before a crash {i} " * 20))))
    burst.start()
    first_run = receiver.events
    first_run.wait_count("p2p_message_received", 40, 20, key=lambda d: d["message_id"].startswith("kill-"))
    receiver.stop(kill=True)                        # in the middle of the burst
    burst.join(30)
    assert len(replies) == len(ids) and all(r["success"] for r in replies)
    before_crash = in_order_ids(first_run.all("p2p_message_received"), "kill-")
    assert 40 <= len(before_crash) < len(ids), len(before_crash)
    receiver.start()
    receiver.call("p2p", "connect", {"peer": name[receiver], "address": sender.address})
    rest = ids[len(before_crash):]

    def stored():
        return [m["message_id"] for m in receiver.history(name[receiver]) if m["message_id"].startswith("kill-")]
    # Messages committed just before the kill (the burst whose events were being published) may
    # have lost their events, never their rows: wait for the rows, then for events still on the way.
    wait_for(lambda: len(stored()) >= len(ids), 30, "every message stored after the restart")
    after = receiver.events.wait_count("p2p_message_received", len(rest), 2,
                                       key=lambda d: d["message_id"].startswith("kill-"))
    seen = before_crash + [d["message_id"] for d in after]
    assert len(seen) == len(set(seen)) and seen == sorted(seen), "duplicate or reordered delivery"
    assert stored() == ids
    done = sender.events.wait_count("message_delivered", len(ids), 20,
                                    key=lambda d: d["message_id"].startswith("kill-"))
    assert sorted(d["message_id"] for d in done) == ids


# -- 6. hostile traffic -------------------------------------------------------------------------
def test_hostile_traffic_is_counted_and_harmless(net):
    D, E, proxy = dora_evelyn(net)                  # no impairment: every frame reaches its node
    mark = len(proxy.captured())                  # from here on, every frame reached its node
    target = ("127.0.0.1", E.port)
    before = E.counters()
    ids = [f"pre-hostile-{i}" for i in range(20)]
    for mid in ids:
        D.call("p2p", "send_message", {"peer": D_NAME_FOR_E, "message": f"{SECRET} {mid}", "message_id": mid})
    check_delivery(D, D_NAME_FOR_E, E, E_NAME_FOR_D, ids, "pre-hostile-", timeout=10)

    # recorded DATA datagrams sent to E (conn id = E's) replayed from the proxy's own address
    captured = proxy.captured()
    recent = [p for p in captured[mark:] if len(p) > 35 and p[0] == 0xC1 and p[1] == 0x10]
    relay = proxy_socket(proxy, proxy.reach_a)
    by_conn = {}
    for payload in recent:
        by_conn.setdefault(payload[2:10], []).append(payload)
    assert len(by_conn) == 2, by_conn.keys()       # one conn id per direction of the one session
    for frames in by_conn.values():               # which one is E's? the one it calls a replay
        seen = E.counters()
        relay.sendto(frames[-1], target)
        # E counts the frame one way or the other: a replay (its own conn id) or an unknown session
        counted = wait_for(lambda: (lambda now: now if any(
            now.get(k, 0) > seen.get(k, 0) for k in ("dropped_replay", "dropped_unknown_session")) else None)(
            E.counters()), 5, "E to count the replayed frame")
        if counted.get("dropped_replay", 0) > seen.get("dropped_replay", 0):
            data = frames
            break
    else:
        raise AssertionError("E took no recorded DATA frame for a replay")
    for payload in data:
        relay.sendto(payload, target)
    # the same frames tampered: a flipped ciphertext bit, and a fresh counter (header is the AEAD's AD)
    sample = data[-1]
    flipped = bytearray(sample)
    flipped[40] ^= 0x01
    fresh = bytearray(sample)
    fresh[11:19] = struct.pack(">Q", (1 << 40) + 12345)
    fresh[-1] ^= 0x80
    for _ in range(3):
        relay.sendto(bytes(flipped), target)
        relay.sendto(bytes(fresh), target)
        relay.sendto(sample[:2] + os.urandom(8) + sample[10:], target)     # no such session

    rng = random.Random(3)
    sent_bytes = answered_bytes = 0
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    attacker.bind(("127.0.0.1", 0))
    try:
        for _ in range(300):                      # random bytes, some in ChatP2P clothing
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            attacker.sendto(junk, target)
            attacker.sendto(b"\xc1" + junk[:8], target)
        init_like = [p for p in captured if p[0] == 0xC1 and p[1] in (0x03, 0x05)]
        for payload in init_like[:20]:            # truncated handshake fragments
            attacker.sendto(payload[:rng.randrange(10, 30)], target)
        for payload in data[:20]:                 # truncated DATA frames
            attacker.sendto(payload[:rng.randrange(11, 34)], target)
        hello = bytes([0xC1, 0x01]) + os.urandom(8) + os.urandom(16) + bytes(38)
        for i in range(5000):                     # a flood of HELLOs and cookie-less INITs
            if i % 2:
                attacker.sendto(hello[:2] + os.urandom(8) + hello[10:], target)
            else:
                fragment = bytes([0xC1, 0x03]) + os.urandom(8) + os.urandom(16) + bytes([0, 2]) + \
                    struct.pack(">H", 1234) + os.urandom(600)
                attacker.sendto(fragment, target)
            if i % 500 == 0:
                time.sleep(0.01)                  # pacing, so that the socket buffers keep up
                sent_bytes, answered_bytes = drain(attacker, sent_bytes, answered_bytes)
            sent_bytes += 64 if i % 2 else 632

        def growth():
            after = E.counters()
            return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        # E has handled the whole flood once every cookie-less INIT is counted; its answers
        # (sent as it went) are then in our socket
        grown = wait_for(lambda: (lambda g: g if g.get("dropped_handshake_bad_cookie", 0) >= 2500 else None)(
            growth()), 10, "E to count the 2,500 cookie-less INITs")
        sent_bytes, answered_bytes = drain(attacker, sent_bytes, answered_bytes)
        # only HELLOs are answered (a COOKIE), never with more bytes than they carried
        assert 0 < answered_bytes <= 42 * 2500, answered_bytes
    finally:
        attacker.close()

    assert E.daemon.proc.poll() is None, E.daemon.stderr_text()[-3000:]
    for counter in ("dropped_replay", "dropped_auth", "dropped_malformed", "dropped_unknown",
                    "dropped_handshake_malformed", "dropped_unknown_session"):
        assert grown.get(counter, 0) > 0, (counter, grown)
    assert grown["dropped_auth"] >= 3 and grown["dropped_replay"] >= len(data) + 1, grown
    assert grown["dropped_handshake_bad_cookie"] >= 2500, grown
    assert grown.get("chatp2p_errors", 0) == 0, E.daemon.stderr_text()[-3000:]

    # still the same session, still exactly once
    ids2 = [f"post-hostile-{i}" for i in range(5)]
    for mid in ids2:
        D.call("p2p", "send_message", {"peer": D_NAME_FOR_E, "message": f"{SECRET} {mid}", "message_id": mid})
    check_delivery(D, D_NAME_FOR_E, E, E_NAME_FOR_D, ids2, "post-hostile-", timeout=10)
    all_ids = [d["message_id"] for d in E.events.all("p2p_message_received")]
    assert len(all_ids) == len(set(all_ids))
    assert E.call("status")["peers"] == 1


# -- 7. trust on first use: the wrong node answers ----------------------------------------------
def test_key_mismatch_wrong_node_answers(net):
    D, C = net.start("d", "c")
    bob_id = D.daemon.other_id()                  # Bob's ID: a key pair of no running node
    D.call("contacts", "add", {"peer": "BobById", "public_key": bob_id})
    received_before = len(C.events.all("p2p_message_received"))
    D.call("p2p", "connect", {"peer": "BobById", "address": C.address})   # C answers, not B
    mismatch = D.events.wait(lambda e: e["event"] == "key_mismatch", 10, what="key_mismatch")[0]["data"]
    assert mismatch["peer"] == "BobById" and mismatch["expected"] == bob_id
    assert mismatch["got"] == C.id and mismatch["address"] == C.address
    reply = D.daemon.request("contacts", "negotiate_keys", {"peer": "BobById", "timeout": 5})
    assert reply["success"] is False and "Key mismatch" in reply["error"] and "BobById" in reply["error"], reply
    sent = D.daemon.request("p2p", "send_message", {"peer": "BobById", "message": "for Bob only"})
    assert sent["success"] and sent["data"] == "Message queued", sent
    assert not C.events.all("contact_request")
    # A marker: D and C become real contacts and D sends C a message on a session to the same
    # address. Once it arrives, D has had every chance to send the queued one there too.
    befriend(D, "Carol", C, "Dora")
    D.call("p2p", "connect", {"peer": "Carol", "address": C.address})
    D.call("p2p", "send_message", {"peer": "Carol", "message": "marker", "message_id": "marker-mismatch"})
    C.events.wait_data("p2p_message_received", 10, message_id="marker-mismatch")
    assert [d["message_id"] for d in C.events.all("p2p_message_received")][received_before:] == ["marker-mismatch"]
    assert not C.events.all("contact_request")
    states = [m["state"] for m in D.call("p2p", "history", {"peer": "BobById"})]
    assert states == ["queued"]
    assert [c["public_key"] for c in D.call("contacts", "list") if c["name"] == "BobById"] == [None]
    D.call("contacts", "remove", {"peer": "BobById"})


# -- 8. strangers ------------------------------------------------------------------------------
def test_stranger_messages_held_capped_then_released_in_order(net):
    D, B = net.start("d", "b")
    D.call("contacts", "add", {"peer": "BobStranger", "public_key": B.id})
    D.call("p2p", "connect", {"peer": "BobStranger", "address": B.address})
    negotiate(D, "BobStranger")
    request = B.events.wait(lambda e: e["event"] == "contact_request", 10, what="contact_request")[0]["data"]
    assert request["fingerprint"] == D.id and request["bundle"] == D.bundle
    ids = [f"stranger-{i:03d}" for i in range(130)]          # the cap is 100
    replies = pipeline(D, send_requests("BobStranger", ids, lambda i: f"hello from a stranger {i}"))
    assert all(r["success"] for r in replies)
    wait_for(lambda: B.counters().get("held_dropped_cap", 0) >= 30, 15, "30 messages past the cap dropped")
    assert not [d for d in B.events.all("p2p_message_received") if d["message_id"].startswith("stranger-")]
    assert "Dora" not in [c["name"] for c in B.call("contacts", "list")]

    # what is held is acknowledged; what is past the cap is not (the sender keeps it)
    def states():
        found = {m["message_id"]: m["state"] for m in D.history("BobStranger")}
        return [found[mid] for mid in ids]
    wait_for(lambda: states()[:100] == ["delivered"] * 100, 5, "the held messages acknowledged")
    assert states()[100:] == ["sent"] * 30
    assert held_count(B, D.id) == 100

    B.call("contacts", "add", {"peer": "Dora", "public_key": request["fingerprint"]})
    held = B.events.wait_count("p2p_message_received", 100, 10, peer="Dora")
    assert [d["message_id"] for d in held][:100] == ids[:100]
    # the rest arrives with the sender's next retransmission, in order, exactly once
    check_delivery(D, "BobStranger", B, "Dora", ids, "stranger-", timeout=20)


def test_blocked_stranger_is_dropped_and_refused(net):
    E, B = net.start("e", "b")
    E.call("contacts", "add", {"peer": "BobFromEve", "public_key": B.id})
    E.call("p2p", "connect", {"peer": "BobFromEve", "address": B.address})
    negotiate(E, "BobFromEve")
    B.events.wait(lambda e: e["event"] == "contact_request" and e["data"]["fingerprint"] == E.id, 10)
    for i in range(5):
        E.call("p2p", "send_message", {"peer": "BobFromEve", "message": f"spam {i}", "message_id": f"spam-{i}"})
    wait_for(lambda: held_count(B, E.id) == 5, 5, "E's messages held by B")
    blocked = B.call("contacts", "block", {"peer": E.id})
    assert held_count(B, E.id) == 0
    assert blocked["blocked"] is True and blocked["fingerprint"] == E.id
    refused_before = B.counters().get("refused_blocked", 0)
    for i in range(5, 8):
        E.daemon.request("p2p", "send_message", {"peer": "BobFromEve", "message": f"spam {i}", "message_id": f"spam-{i}"})
    reply = E.daemon.request("contacts", "negotiate_keys", {"peer": "BobFromEve", "timeout": 1})
    assert reply["success"] is False, reply
    assert B.counters().get("refused_blocked", 0) > refused_before
    assert held_count(B, E.id) == 0
    assert not [d for d in B.events.all("p2p_message_received") if d["message_id"].startswith("spam-")]
    name = blocked["name"]
    assert not B.call("p2p", "history", {"peer": name})
    assert B.call("status")["data_dir"] and E.daemon.proc.poll() is None


# -- 9. sizes and names -------------------------------------------------------------------------
def test_message_size_limit_and_unknown_peer(net):
    A, B = alice_bob(net)
    big = "€" * 21845 + "é"                    # 65535 + 2 = 65537 bytes of UTF-8: one too many
    assert len(big.encode()) == 64 * 1024 + 1
    reply = A.daemon.request("p2p", "send_message", {"peer": "Bob", "message": big})
    assert reply["success"] is False and "too long" in reply["error"].lower() and "65536" in reply["error"], reply
    huge = A.daemon.request("p2p", "send_message", {"peer": "Bob", "message": "x" * 70000})
    assert huge["success"] is False and "message" in huge["error"].lower(), huge

    exact = "😀" * 8192 + "€" * 10922 + "é"   # 32768 + 32766 + 2 = 65536 bytes, 4-, 3- and 2-byte
    assert len(exact.encode()) == 64 * 1024
    sent = A.call("p2p", "send_message", {"peer": "Bob", "message": exact, "message_id": "max-size"})
    assert sent in ("Message sent", "Message queued")
    got = B.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "max-size",
                        20, what="the 64 KiB message")[0]["data"]
    assert got["message"] == exact and got["peer"] == "Alice"
    assert [m["body"] for m in B.history("Alice") if m["message_id"] == "max-size"] == [exact]

    missing = A.daemon.request("p2p", "send_message", {"peer": "Nobody", "message": "hi"})
    assert missing["success"] is False and missing["error"] == "Peer not found: Nobody", missing


# -- 10. restarting the P2P network ------------------------------------------------------------
def test_p2p_start_twice_keeps_the_port_and_sessions_resume(net):
    A, B = alice_bob(net, connect=False)
    A.call("p2p", "connect", {"peer": "Bob", "address": B.address})
    negotiate(A, "Bob")
    port = A.call("status")["p2p"]["port"]
    for attempt in range(2):                      # `p2p start` on a running network restarts it
        assert A.call("p2p", "start") == "P2P network started"
        p2p = A.call("status")["p2p"]
        assert p2p["running"] is True and p2p["port"] == port, (attempt, p2p)
    assert negotiate(A, "Bob")["address"] == B.address
    A.call("p2p", "send_message", {"peer": "Bob", "message": "after two restarts", "message_id": "restart-ab"})
    B.call("p2p", "send_message", {"peer": "Alice", "message": "and back", "message_id": "restart-ba"})
    B.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "restart-ab",
                  10, what="A's message at B")
    A.events.wait(lambda e: e["event"] == "p2p_message_received" and e["data"]["message_id"] == "restart-ba",
                  10, what="B's message at A")
    A.events.wait(lambda e: e["event"] == "message_delivered" and e["data"]["message_id"] == "restart-ab",
                  10, what="A's message delivered")
