"""LAN discovery: ID tags and pair tags (PROTOCOL §8), and nodes on one segment finding each other."""

import os
import shutil
import tempfile

import pytest
from hypothesis import given, strategies as st

from chatp2p_core.net import lan
from clock import FakeClock
from poll import wait_for
from netns import NsDaemon, lan_segment, netns_available

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))


CAROL = bytes(range(2, 34))
SECRET = bytes(range(100, 132))
NOW = 1_700_000_000.0
# The daemons on a test segment announce this often (5 s by default): the tests wait for
# announcements, not for the interval to matter.
LAN_INTERVAL = "0.5"


def _announce(own, contacts, now=NOW, cursor=0):
    tags, cursor = lan.announce_tags(own, contacts, lan.epoch_of(now), cursor)
    return lan.encode_announcement(4242, lan.epoch_of(now), tags), cursor


def test_id_tags_rotate_and_match_only_the_right_identity():
    # Alice has a contact (Bob) without a pair secret: she sends her ID tag.
    data, _ = _announce(ALICE, [(BOB, None)])
    epoch, port, tags = lan.decode_announcement(data)
    assert port == 4242 and len(tags) == lan.MAX_TAGS
    assert lan.match([(BOB, None), (ALICE, None)], epoch, tags, NOW) == [ALICE]
    assert lan.match([(BOB, None)], epoch, tags, NOW) == []
    later, _ = _announce(ALICE, [(BOB, None)], NOW + lan.TAG_PERIOD)
    later_epoch, _, later_tags = lan.decode_announcement(later)
    assert lan.id_tag(ALICE, epoch) in tags and lan.id_tag(ALICE, epoch) not in later_tags   # rotates
    assert lan.match([(ALICE, None)], later_epoch, later_tags, NOW + lan.TAG_PERIOD) == [ALICE]
    assert lan.match([(ALICE, None)], epoch, tags, NOW + 10 * lan.TAG_PERIOD) == []         # stale replay
    assert ALICE not in data and lan.lan_key(ALICE) not in data


def test_id_tag_derivation_byte_by_byte():
    """PROTOCOL §8: K = SHA-256("chatp2p v1 lan key" || ID), tag = HMAC-SHA256(K,
    "chatp2p v1 lan tag" || u32 epoch)[0:16]; pair tag = HMAC-SHA256(P, "chatp2p v1 lan pair tag"
    || announcer ID || u32 epoch)[0:16]."""
    import hashlib
    import hmac
    import struct
    epoch = lan.epoch_of(NOW)
    assert epoch == int(NOW // 300)
    key = hashlib.sha256(b"chatp2p v1 lan key" + ALICE).digest()
    assert lan.id_tag(ALICE, epoch) == hmac.new(key, b"chatp2p v1 lan tag" + struct.pack(">I", epoch),
                                                hashlib.sha256).digest()[:16]
    assert lan.pair_tag(SECRET, ALICE, epoch) == hmac.new(
        SECRET, b"chatp2p v1 lan pair tag" + ALICE + struct.pack(">I", epoch), hashlib.sha256).digest()[:16]
    assert lan.pair_tag(SECRET, ALICE, epoch) != lan.pair_tag(SECRET, BOB, epoch)   # each end its own
    data, _ = _announce(ALICE, [(BOB, SECRET)])
    assert data[:12] == b"CP2L" + bytes([2]) + struct.pack(">IHB", epoch, 4242, 16)
    assert len(data) == lan.ANNOUNCE_SIZE == 12 + 16 * 16


def test_pair_secret_is_exported_alike_by_both_ends_of_a_session():
    from chatp2p_core.crypto.session import Role, SessionKeys, Suite
    i2r, r2i, h5 = os.urandom(32), os.urandom(32), os.urandom(32)
    initiator = SessionKeys(Role.INITIATOR, Suite.AES_256_GCM, b"i" * 8, b"r" * 8, i2r, r2i, transcript_hash=h5)
    responder = SessionKeys(Role.RESPONDER, Suite.AES_256_GCM, b"r" * 8, b"i" * 8, r2i, i2r, transcript_hash=h5)
    assert lan.pair_secret(initiator) == lan.pair_secret(responder)
    assert lan.pair_secret(initiator) == initiator.export(b"chatp2p v1 lan pair secret", 32)


def test_after_the_first_session_no_tag_is_recognisable_from_the_id():
    """Alice shares a pair secret with Bob, her only contact: Bob recognises her announcement,
    someone who knows her ID (or Bob's) does not, and the ID tag is not in it."""
    data, _ = _announce(ALICE, [(BOB, SECRET)])
    epoch, _, tags = lan.decode_announcement(data)
    assert lan.id_tag(ALICE, epoch) not in tags
    for e in (epoch - 1, epoch, epoch + 1):
        assert lan.id_tag(ALICE, e) not in tags and lan.id_tag(BOB, e) not in tags
    assert lan.match([(ALICE, None)], epoch, tags, NOW, own=CAROL) == []      # knows the ID only
    assert lan.match([(ALICE, None), (BOB, None)], epoch, tags, NOW, own=CAROL) == []
    assert lan.match([(ALICE, SECRET)], epoch, tags, NOW, own=BOB) == [ALICE]   # Bob, the contact
    assert lan.match([(ALICE, os.urandom(32))], epoch, tags, NOW, own=CAROL) == []
    # Carol was added by ID alone and has no pair secret yet: the ID tag comes back.
    data, _ = _announce(ALICE, [(BOB, SECRET), (CAROL, None)])
    epoch, _, tags = lan.decode_announcement(data)
    assert lan.id_tag(ALICE, epoch) in tags
    assert lan.match([(ALICE, None)], epoch, tags, NOW, own=CAROL) == [ALICE]
    assert lan.match([(ALICE, SECRET)], epoch, tags, NOW, own=BOB) == [ALICE]
    # No contact at all: nothing but filler.
    data, _ = _announce(ALICE, [])
    assert lan.match([(ALICE, None)], *lan.decode_announcement(data)[::2], NOW, own=CAROL) == []


def test_announcements_are_bounded_and_rotate_through_many_contacts():
    contacts = [(os.urandom(32), os.urandom(32)) for _ in range(100)] + [(CAROL, None)]
    epoch = lan.epoch_of(NOW)
    seen, cursor = set(), 0
    rounds = -(-100 // (lan.MAX_TAGS - 1))
    for _ in range(rounds):
        data, cursor = _announce(ALICE, contacts, cursor=cursor)
        assert len(data) == lan.ANNOUNCE_SIZE < 1200
        _, _, tags = lan.decode_announcement(data)
        assert len(tags) == lan.MAX_TAGS
        assert lan.id_tag(ALICE, epoch) in tags           # Carol still needs it: every time
        seen.update(tags)
    assert all(lan.pair_tag(secret, ALICE, epoch) in seen for _, secret in contacts[:100])


def test_own_announcement_looped_back_is_not_a_contact():
    for contacts in ([(BOB, SECRET)], [(BOB, None)], [(BOB, SECRET), (CAROL, None)]):
        data, _ = _announce(ALICE, contacts)
        epoch, _, tags = lan.decode_announcement(data)
        assert lan.match(contacts, epoch, tags, NOW, own=ALICE) == []


def test_version_1_announcements_are_still_understood():
    import struct
    epoch = lan.epoch_of(NOW)
    data = struct.pack(">4sBIH16s", b"CP2L", 1, epoch, 4242, lan.id_tag(ALICE, epoch))
    assert lan.decode_announcement(data) == (epoch, 4242, (lan.id_tag(ALICE, epoch),))
    assert lan.match([(ALICE, None)], epoch, (lan.id_tag(ALICE, epoch),), NOW, own=BOB) == [ALICE]


def test_discovery_reports_a_contact_by_its_pair_tag_with_a_fake_clock():
    clock = FakeClock(NOW)
    found_by_bob, found_by_carol = [], []
    alice = lan.LanDiscovery(ALICE, 4242, lambda: [(BOB, SECRET)], lambda *a: None, clock=clock)
    bob = lan.LanDiscovery(BOB, 4343, lambda: [(ALICE, SECRET)], lambda *a: found_by_bob.append(a), clock=clock)
    carol = lan.LanDiscovery(CAROL, 4444, lambda: [(ALICE, None)], lambda *a: found_by_carol.append(a), clock=clock)
    data = alice.announcement()
    bob.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))
    carol.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))
    assert found_by_bob == [(ALICE, ("192.0.2.10", 4242))] and found_by_carol == []
    clock.advance(3 * lan.TAG_PERIOD)
    bob.on_datagram(data, ("192.0.2.10", lan.DEFAULT_PORT))             # replayed much later
    assert len(found_by_bob) == 1 and bob.counters["ignored"] == 1
    bob.on_datagram(alice.announcement(), ("192.0.2.10", lan.DEFAULT_PORT))
    assert len(found_by_bob) == 2


@given(st.binary(max_size=300))
def test_garbage_announcements_are_rejected(data):
    try:
        epoch, port, tags = lan.decode_announcement(data)
    except lan.AnnouncementError:
        return
    assert data.startswith(lan.MAGIC) and 0 < port < 65536 and 1 <= len(tags) <= lan.MAX_TAGS
    assert len(data) in (lan.ANNOUNCE_V1.size, lan.HEADER.size + len(tags) * lan.TAG_LEN)


def test_two_nodes_on_a_segment_find_each_other():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-lan-")
    nodes = []
    try:
        with lan_segment(2) as (ns_a, ns_b):
            args = ("--lan-discovery", "--p2p-host", "0.0.0.0", "--lan-interval", LAN_INTERVAL)
            a, b = NsDaemon(ns_a, os.path.join(tmp, "a"), *args), NsDaemon(ns_b, os.path.join(tmp, "b"), *args)
            nodes = [a, b]
            for node in nodes:
                node.start()
            id_a = a.request("status")["data"]["identity"]["fingerprint"]
            id_b = b.request("status")["data"]["identity"]["fingerprint"]
            assert a.request("contacts", "add", {"peer": "Bob", "public_key": id_b})["success"]
            assert b.request("contacts", "add", {"peer": "Alice", "public_key": id_a})["success"]
            peer = wait_for(lambda: (lambda p: p if p["state"] == "connected" and p["path"] == "lan" else None)(
                a.request("p2p", "peers")["data"][0]), 20, "a LAN session to Bob", interval=0.3)
            assert peer["address"].startswith(ns_b.address + ":")
            assert a.request("p2p", "send_message", {"peer": "Bob", "message": "over the LAN"})["data"] == "Message sent"
            history = wait_for(lambda: b.request("p2p", "history", {"peer": "Alice"})["data"], 10,
                               "the message at Bob", interval=0.2)
            assert [m["body"] for m in history] == ["over the LAN"]
            status = b.request("status")["data"]["p2p"]["lan_discovery"]
            assert status["announced"] > 0 and status["matched"] > 0
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


RECORDER = r"""
import socket, struct, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                struct.pack("4s4s", socket.inet_aton(sys.argv[2]), socket.inet_aton("0.0.0.0")))
print("ready", flush=True)
while True:
    data, (host, port) = sock.recvfrom(4096)
    print(host, data.hex(), flush=True)
"""

FORGER = r"""
import socket, sys, time
from chatp2p_core.crypto.identity import parse_id
from chatp2p_core.net import lan
port, lan_port, targets = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
while True:
    epoch = lan.epoch_of(time.time())
    for target in targets:
        host, victim_id = target.split("=", 1)
        data = lan.encode_announcement(port, epoch, [lan.id_tag(parse_id(victim_id), epoch)])
        sock.sendto(data, (host, lan_port))   # unicast, straight to the victim's LAN port
    time.sleep(0.2)
"""


class Recorder:
    """Every announcement heard by a listener in the attacker's namespace, as (host, bytes)."""

    def __init__(self, ns):
        import threading
        self.proc = ns.python(RECORDER, str(lan.DEFAULT_PORT), lan.DEFAULT_GROUP)
        assert self.proc.stdout.readline().strip() == "ready"
        self.items, self.lock = [], threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for line in self.proc.stdout:
            host, _, data = line.strip().partition(" ")
            with self.lock:
                self.items.append((host, bytes.fromhex(data)))

    def from_host(self, host):
        with self.lock:
            return [data for h, data in self.items if h == host]

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


def _carries_id_tag(data, fingerprint):
    epoch, _, tags = lan.decode_announcement(data)
    return any(lan.id_tag(fingerprint, e) in tags for e in (epoch - 1, epoch, epoch + 1))


def _key_mismatches_once_per_address_and_key(events):
    reports = [(d["address"], d["got"]) for d in events.all("key_mismatch")]
    assert len(reports) == len(set(reports)), reports
    return reports


def test_contacts_find_each_other_privately_despite_a_forger_on_the_segment():
    """Three hosts on a segment: Alice and Bob (contacts; Alice adds Bob by ID alone, Bob adds
    Alice with her bundle) and Mallory, who knows both IDs, runs a ChatP2P node of her own,
    listens to the announcements and sends forged ones (unicast, with the victim's contact's
    ID tag, pointing at her own node). (a) Alice and Bob still connect over the LAN;
    (c) each raises at most one key_mismatch per (address, key); (b) once they had their
    first session, Alice's announcements carry no tag that someone knowing her ID recognises,
    while Bob still recognises them."""
    from chatp2p_core.crypto.identity import parse_id
    from events import Events
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-lan-")
    nodes, watchers, procs = [], [], []
    try:
        with lan_segment(3) as (ns_a, ns_b, ns_m):
            args = ("--lan-discovery", "--p2p-host", "0.0.0.0", "--lan-interval", LAN_INTERVAL)
            a = NsDaemon(ns_a, os.path.join(tmp, "a"), *args)
            b = NsDaemon(ns_b, os.path.join(tmp, "b"), *args)
            m = NsDaemon(ns_m, os.path.join(tmp, "m"), "--p2p-host", "0.0.0.0")   # Mallory's own node
            nodes = [a, b, m]
            for node in nodes:
                node.start()
            status = {n: n.request("status")["data"] for n in nodes}
            id_a, id_b = (status[n]["identity"]["fingerprint"] for n in (a, b))
            fp_a, fp_b = parse_id(id_a), parse_id(id_b)
            events_a, events_b = Events(a), Events(b)
            watchers = [events_a, events_b]
            recorder = Recorder(ns_m)
            procs.append(recorder)
            forger = ns_m.python(FORGER, str(status[m]["p2p"]["port"]), str(lan.DEFAULT_PORT),
                                 f"{ns_a.address}={id_b}", f"{ns_b.address}={id_a}")
            assert forger.stdout.readline().strip() == "ready"

            # Alice adds Bob by ID alone; Bob, with no contact yet, announces only filler, so
            # the forged sightings are all Alice hears of "Bob".
            assert a.request("contacts", "add", {"peer": "Bob", "public_key": id_b})["success"]
            mismatch = events_a.wait_data("key_mismatch", 20)[0]
            assert mismatch["address"].startswith(ns_m.address + ":") and mismatch["expected"] == id_b
            matched = a.request("status")["data"]["p2p"]["lan_discovery"]["matched"]
            wait_for(lambda: a.request("status")["data"]["p2p"]["lan_discovery"]["matched"] >= matched + 10,
                     20, "ten more forged sightings at Alice", interval=0.3)
            assert b.request("contacts", "add", {"peer": "Alice", "public_key": a.request("status")["data"][
                "identity"]["public_key"]})["success"]

            # (a) and (c)
            peer = wait_for(lambda: (lambda p: p if p["state"] == "connected" and p["path"] == "lan" else None)(
                a.request("p2p", "peers")["data"][0]), 30, "a LAN session to Bob", interval=0.3)
            assert peer["address"].startswith(ns_b.address + ":")
            # Alice's announcements from here on: she has had Bob, who has no pair secret yet, as a
            # contact since before the session (the ones before she added him carry no ID tag: she
            # had no contact then).
            since_session = max(1, len(recorder.from_host(ns_a.address)))
            assert a.request("p2p", "send_message", {"peer": "Bob", "message": "over the LAN"})["data"] == "Message sent"
            history = wait_for(lambda: b.request("p2p", "history", {"peer": "Alice"})["data"], 10,
                               "the message at Bob", interval=0.2)
            assert [msg["body"] for msg in history] == ["over the LAN"]
            forger.kill()
            forger.wait(5)
            assert len(_key_mismatches_once_per_address_and_key(events_a)) >= 1
            _key_mismatches_once_per_address_and_key(events_b)

            # (b) Before the session Alice sent her ID tag (Bob had no pair secret with her) ...
            assert any(_carries_id_tag(d, fp_a) for d in recorder.from_host(ns_a.address))
            # ... after it, none: wait for one without, then the next ones must not carry it.
            first = wait_for(lambda: next((i for i, d in enumerate(recorder.from_host(ns_a.address))
                                           if i >= since_session and not _carries_id_tag(d, fp_a)), None),
                             20, "an announcement of Alice without her ID tag", interval=0.3)
            heard_b = b.request("status")["data"]["p2p"]["lan_discovery"]["matched"]
            later = wait_for(lambda: recorder.from_host(ns_a.address)[first:first + 3]
                             if len(recorder.from_host(ns_a.address)) >= first + 3 else None,
                             30, "three more announcements of Alice", interval=0.5)
            for data in later:
                assert not _carries_id_tag(data, fp_a)
                epoch, _, tags = lan.decode_announcement(data)
                assert lan.match([(fp_a, None), (fp_b, None)], epoch, tags, epoch * lan.TAG_PERIOD + 1,
                                 own=parse_id(status[m]["identity"]["fingerprint"])) == []
            # Bob, the contact, still recognises them (the forger is gone: these are Alice's).
            wait_for(lambda: b.request("status")["data"]["p2p"]["lan_discovery"]["matched"] > heard_b,
                     20, "Bob matching Alice's pair tag", interval=0.5)
    finally:
        for proc in procs:
            proc.stop()
        for watcher in watchers:
            watcher.close()
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_announcement_interval_is_a_setting_with_a_floor():
    from chatp2p_core import config as cfg
    assert cfg.SETTINGS_BY_NAME["lan_interval"].default == 5.0
    assert lan.LanDiscovery(ALICE, 4242, list, lambda *a: None, interval=2.5).interval == 2.5
    assert lan.LanDiscovery(ALICE, 4242, list, lambda *a: None, interval=0).interval == lan.MIN_INTERVAL
