"""Hostile file offers and data against a real chatp2pd: refused with clear events, capped,
nothing written outside the downloads dir.

The hostile peer is a real node (chatp2p_core in a subprocess) whose file layer is replaced by
a script that sends crafted FILE records over an authenticated session. Codec-level checks of
names and records are at the end (pure functions).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from chatp2p_core.codec import filecodec as fc
from chatp2p_core.codec.wire import RawRecord, WireError
from daemon import Daemon, ok
from events import Events
from poll import wait_for

TMP = None
B = EV_B = None

PEER = r'''
from gevent import monkey; monkey.patch_all()
import hashlib, json, sys, time
import gevent
from chatp2p_core import config as cfg
from chatp2p_core.codec import filecodec as fc
from chatp2p_core.codec.wire import RawRecord
from chatp2p_core.node import Node

data_dir, home = sys.argv[1], sys.argv[2]
config = cfg.load(None, {"HOME": home}, flag_overrides={
    "data_dir": data_dir, "p2p_host": "127.0.0.1", "p2p_port": "0", "ipc_port": "0"})
node = Node(config)
node.start()
node.p2p.network.observers.remove(node.p2p.transfers)  # this peer speaks the file protocol by hand
node.p2p.transfers.stop()
answers = []

class Recorder:
    takes_file_records = True

    def link_up(self, link): pass
    def link_down(self, link): pass
    def tick(self, now): pass
    def path_changed(self, link): pass
    def records(self, link, records):
        for raw in map(fc.as_raw_record, records):
            if getattr(raw, "rtype", None) in fc.FILE_TYPES:
                answers.append(fc.decode_file_record(raw))

node.p2p.network.observers.append(Recorder())
print(json.dumps({"public_key": node.identity.bundle.to_base64()}), flush=True)
target = json.loads(sys.stdin.readline())
node.contacts.add("Target", target["public_key"])
contact = node.store.contacts.get("Target")
link = node.p2p.network.connect(contact, [("127.0.0.1", target["port"])])
deadline = time.monotonic() + 10
while not link.connected and time.monotonic() < deadline:
    gevent.sleep(0.02)
assert link.connected, "no session"

def send(*records):
    node.p2p.network.send_records(link, [fc.to_raw(r) for r in records])

def offer(transfer_id, name, size, chunk=65536):
    rec = fc.Offer(fc.transfer_wire_id(transfer_id), size, chunk, b"t" * 16, transfer_id, name)
    send(rec)
    return rec

def wait_answer(tid, code, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(isinstance(a, fc.AnswerRecord) and a.tid == tid and a.code == code for a in answers):
            return True
        gevent.sleep(0.02)
    return False

for line in sys.stdin:
    step = json.loads(line)
    kind = step["do"]
    if kind == "offer":
        offer(step["id"], step["name"], step["size"], step.get("chunk", 65536))
        result = True
    elif kind == "wait_accept":
        result = wait_answer(fc.transfer_wire_id(step["id"]), fc.Answer.ACCEPT)
    elif kind == "data":
        tid = fc.transfer_wire_id(step["id"])
        payload = bytes.fromhex(step["hex"])
        send(fc.Data(tid, step["pn"], step["offset"], payload))
        result = True
    elif kind == "end":
        send(fc.End(fc.transfer_wire_id(step["id"]), step["size"], bytes.fromhex(step["sha256"])))
        result = True
    elif kind == "frames":  # each record alone in its own frame, back to back
        for rtype, body in step["records"]:
            node.p2p.network.send_records(link, [RawRecord(rtype, bytes.fromhex(body))])
        result = True
    elif kind == "frame":  # the records together in one frame
        node.p2p.network.send_records(link, [RawRecord(rtype, bytes.fromhex(body)) for rtype, body in step["records"]])
        result = True
    elif kind == "answers":
        result = [[a.code.name, a.reason] for a in answers
                  if isinstance(a, fc.AnswerRecord) and a.tid == fc.transfer_wire_id(step["id"])]
    gevent.sleep(0.05)
    print(json.dumps({"result": result}), flush=True)
node.stop()
'''


class HostilePeer:
    def __init__(self, root, target, add_as_contact=True):
        os.makedirs(root, exist_ok=True)
        env = Daemon.environment(root)
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, os.path.join(root, "data"), env["HOME"]],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     stderr=open(os.path.join(root, "peer.log"), "w"))
        self.public_key = json.loads(self.proc.stdout.readline())["public_key"]
        if add_as_contact:
            ok(target.request("contacts", "add", {"peer": os.path.basename(root), "public_key": self.public_key}))
        port = target.request("status")["data"]["p2p"]["port"]
        self.proc.stdin.write(json.dumps({"public_key": target.request("status")["data"]["identity"]["public_key"],
                                          "port": port}) + "\n")
        self.proc.stdin.flush()

    def do(self, **step):
        self.proc.stdin.write(json.dumps(step) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the hostile peer died (see peer.log)"
        return json.loads(line)["result"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def setup_module():
    global TMP, B, EV_B
    TMP = tempfile.mkdtemp(prefix="chatp2p-hostile-")
    B = Daemon(os.path.join(TMP, "b"), "--downloads-dir", os.path.join(TMP, "b", "dl"))
    B.start()
    EV_B = Events(B)


def teardown_module():
    EV_B.close()
    B.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def _offered_and_accepted(peer, transfer_id, name, size):
    """The hostile peer offers a file, and B accepts it: the peer has the ACCEPT."""
    peer.do(do="offer", id=transfer_id, name=name, size=size)
    EV_B.wait_data("file_offer", 10, transfer_id=transfer_id)
    ok(B.request("p2p", "accept_file", {"transfer_id": transfer_id}))
    assert peer.do(do="wait_accept", id=transfer_id)


def _hexed(records):
    """(type, body) records as the peer script takes them."""
    return [[rtype, body.hex()] for rtype, body in records]


def _files_outside_downloads():
    """Every file under TMP that is not a daemon's own (data dir, logs, home) nor in dl/."""
    found = []
    for dirpath, _, files in os.walk(TMP):
        rel = os.path.relpath(dirpath, TMP)
        if rel.split(os.sep)[-1] in ("data", "home") or "/data" in "/" + rel or "/home" in "/" + rel:
            continue
        for name in files:
            if name.endswith(".log") or os.path.join(rel, name).startswith(os.path.join("b", "dl")):
                continue
            found.append(os.path.join(rel, name))
    return found


def test_hostile_offers_are_refused_with_clear_events():
    peer = HostilePeer(os.path.join(TMP, "mallory"), B)
    try:
        bad = {"trav-1": "../../escape.txt", "trav-2": "/etc/passwd", "trav-3": "a/b.txt", "trav-4": "..",
               "trav-5": "evil\u202etxt.exe", "trav-6": "nul\x00byte", "trav-7": "back\\slash"}
        for transfer_id, name in bad.items():
            peer.do(do="offer", id=transfer_id, name=name, size=10)
        peer.do(do="offer", id="huge-1", name="huge.bin", size=1 << 50)
        peer.do(do="offer", id="chunk-1", name="chunk.bin", size=10, chunk=1)
        wait_for(lambda: len(EV_B.all("file_transfer_failed")) >= 9, 10, "nine refused offers")
        failed = {e["transfer_id"]: e["reason"] for e in EV_B.all("file_transfer_failed")}
        for transfer_id in list(bad) + ["huge-1", "chunk-1"]:
            assert failed.get(transfer_id, "").startswith("offer refused:"), (transfer_id, failed)
        assert "path separator" in failed["trav-1"] and "relative" in failed["trav-4"]
        assert "bidirectional" in failed["trav-5"] and "control" in failed["trav-6"]
        assert "too large" in failed["huge-1"] and "chunk size" in failed["chunk-1"]
        assert not EV_B.all("file_offer")
        for transfer_id in bad:
            assert peer.do(do="answers", id=transfer_id)[0][0] == "FAILED"
        # A Windows device name is harmless once adjusted: offered as _CON.txt.
        peer.do(do="offer", id="con-1", name="CON.txt", size=10)
        assert EV_B.wait_data("file_offer", 10, transfer_id="con-1")[0]["file_name"] == "_CON.txt"
        ok(B.request("p2p", "reject_file", {"transfer_id": "con-1"}))
    finally:
        peer.close()
    assert _files_outside_downloads() == []


def test_data_beyond_the_end_and_a_wrong_hash_fail_the_transfer():
    peer = HostilePeer(os.path.join(TMP, "mallory2"), B)
    try:
        _offered_and_accepted(peer, "beyond-1", "beyond.bin", 1000)
        peer.do(do="data", id="beyond-1", pn=0, offset=900, hex="ab" * 200)
        reason = EV_B.wait_data("file_transfer_failed", 10, transfer_id="beyond-1")[0]["reason"]
        assert "beyond the end" in reason

        _offered_and_accepted(peer, "hash-1", "hash.bin", 1000)
        peer.do(do="data", id="hash-1", pn=1, offset=0, hex="cd" * 1000)
        peer.do(do="end", id="hash-1", size=1000, sha256="00" * 32)
        reason = EV_B.wait_data("file_transfer_failed", 10, transfer_id="hash-1")[0]["reason"]
        assert "SHA-256 mismatch" in reason
        assert ["FAILED", "SHA-256 mismatch"] in peer.do(do="answers", id="hash-1")
    finally:
        peer.close()
    downloads = os.listdir(os.path.join(TMP, "b", "dl"))
    assert not [name for name in downloads if name in ("beyond.bin", "hash.bin") or name.endswith(".part")], downloads
    assert not os.listdir(os.path.join(TMP, "b", "dl", ".chatp2p-partial"))
    assert _files_outside_downloads() == []


def test_malformed_records_alone_in_their_frames_are_dropped_and_the_file_still_completes():
    """Every DATA datagram's record reaches the file layer still encoded, and a batch of them is
    decoded at once; malformed ones among them (a short DATA, a short ACK) are dropped and
    counted one by one, and the good DATA and END around them still make the file."""
    peer = HostilePeer(os.path.join(TMP, "mallory3"), B)
    try:
        content = os.urandom(1000)
        _offered_and_accepted(peer, "mixed-1", "mixed.bin", 1000)
        before = B.request("status")["data"]["p2p"]["counters"].get("dropped_file_record", 0)
        tid = fc.transfer_wire_id("mixed-1")
        frames = [(0x22, fc.Data(tid, 0, 0, content[:500]).encode()), (0x22, b"short"),
                  (0x23, b"\0" * 9), (0x22, fc.Data(tid, 1, 500, content[500:]).encode()),
                  (0x24, fc.End(tid, 1000, hashlib.sha256(content).digest()).encode())]
        peer.do(do="frames", records=_hexed(frames))
        received = EV_B.wait_data("file_received", 10, transfer_id="mixed-1")[0]
        assert received["sha256"] == hashlib.sha256(content).hexdigest()
        with open(received["path"], "rb") as handle:
            assert handle.read() == content
        wait_for(lambda: B.request("status")["data"]["p2p"]["counters"].get("dropped_file_record", 0) - before == 2,
                 10, "the two malformed records counted")
        os.unlink(received["path"])
    finally:
        peer.close()


def test_data_records_sharing_a_frame_are_taken_as_well():
    """A peer may put several DATA records in one frame (ours never does): they reach the file
    layer decoded, not as the usual lone encoded record, and still make the file."""
    peer = HostilePeer(os.path.join(TMP, "mallory5"), B)
    try:
        content = os.urandom(900)
        _offered_and_accepted(peer, "shared-1", "shared.bin", 900)
        tid = fc.transfer_wire_id("shared-1")
        together = [(0x22, fc.Data(tid, 0, 0, content[:300]).encode()),
                    (0x22, fc.Data(tid, 1, 300, content[300:600]).encode())]
        peer.do(do="frame", records=_hexed(together))
        alone = [(0x22, fc.Data(tid, 2, 600, content[600:]).encode()),
                 (0x24, fc.End(tid, 900, hashlib.sha256(content).digest()).encode())]
        peer.do(do="frames", records=_hexed(alone))
        received = EV_B.wait_data("file_received", 10, transfer_id="shared-1")[0]
        with open(received["path"], "rb") as handle:
            assert handle.read() == content
        os.unlink(received["path"])
    finally:
        peer.close()


def test_offer_floods_are_capped_and_strangers_refused():
    peer = HostilePeer(os.path.join(TMP, "flooder"), B)
    try:
        before = len(EV_B.all("file_transfer_failed"))
        for n in range(40):
            peer.do(do="offer", id=f"flood-{n}", name=f"flood-{n}.bin", size=10)
        # B handles offers in order: once it has answered the last one, it has published every
        # event about the others; an event it publishes after that (a contact added) arrives
        # after them on the same socket.
        wait_for(lambda: peer.do(do="answers", id="flood-39"), 10, "B's answer to the last offer")
        ok(B.request("contacts", "add", {"peer": "zz-marker", "public_key": B.other_id()}))
        EV_B.wait_data("contact_added", 10, name="zz-marker")
        ok(B.request("contacts", "remove", {"peer": "zz-marker"}))
        offers = [e for e in EV_B.all("file_offer") if e["transfer_id"].startswith("flood-")]
        assert len(offers) == 16, len(offers)
        refusals = EV_B.all("file_transfer_failed")[before:]
        assert 1 <= len(refusals) <= 10, len(refusals)  # events are capped per peer and minute
        assert "too many offers" in refusals[0]["reason"]
        assert peer.do(do="answers", id="flood-39")[0][0] == "FAILED"
    finally:
        peer.close()
    stranger = HostilePeer(os.path.join(TMP, "stranger"), B, add_as_contact=False)
    try:
        stranger.do(do="offer", id="stranger-1", name="gift.bin", size=10)
        answers = stranger.do(do="answers", id="stranger-1")
        assert answers and answers[0][0] == "FAILED" and "not a contact" in answers[0][1], answers
        assert not EV_B.all("file_offer", transfer_id="stranger-1")
    finally:
        stranger.close()


# -- pure checks ----------------------------------------------------------------------------------
def test_file_names_are_checked_and_adjusted():
    for name in ("", ".", "..", "a/b", "a\\b", "/abs", "x\u202ey", "ctl\x07", "line\u2028sep", "é" * 200):
        try:
            fc.check_file_name(name)
        except fc.UnsafeName:
            continue
        raise AssertionError(f"{name!r} accepted")
    assert fc.check_file_name("report.pdf") == "report.pdf"
    assert fc.check_file_name("NUL") == "_NUL" and fc.check_file_name("com1.txt") == "_com1.txt"
    assert fc.check_file_name('what?.txt') == "what_.txt"
    assert fc.check_file_name("trailing. ") == "trailing"
    assert fc.check_file_name("famille \U0001f468\u200d\U0001f469.png") == "famille \U0001f468\u200d\U0001f469.png"
    assert fc.numbered_name("a.tar.gz", 2) == "a.tar (2).gz" and fc.numbered_name(".bashrc", 1) == ".bashrc (1)"


def test_file_records_round_trip_and_reject_garbage():
    tid = fc.transfer_wire_id("x")
    records = [fc.Offer(tid, 5, 4096, b"t" * 16, "x", "n.bin"),
               fc.AnswerRecord(tid, fc.Answer.ACCEPT, ((0, 3), (7, 9))),
               fc.AnswerRecord(tid, fc.Answer.FAILED, reason="no"),
               fc.End(tid, 5, b"h" * 32), fc.HaltRecord(tid, fc.Halt.PAUSED, "p"),
               fc.AckRecord(((10, 12), (1, 5)), 7, 1000), fc.Probe(1, 9000), fc.ProbeAck(1, 9000)]
    for record in records:
        assert fc.decode_file_record(fc.to_raw(record)) == record
    data = fc.decode_file_record(fc.to_raw(fc.Data(tid, 3, 100, b"abc")))
    assert (data.pn, data.offset, bytes(data.data)) == (3, 100, b"abc")
    for rtype, body in ((0x20, b"short"), (0x21, tid + b"\x09"), (0x23, b"\0" * 9), (0x24, b"x"),
                        (0x21, tid + b"\x01\x00\x01" + b"\0\0\0\x05\0\0\0\x01")):
        try:
            fc.decode_file_record(RawRecord(rtype, body))
        except WireError:
            continue
        raise AssertionError((rtype, body))


def test_range_sets():
    ranges = fc.RangeSet()
    assert ranges.add(0, 10) == 10 and ranges.add(20, 30) == 10 and ranges.add(5, 25) == 10
    assert list(ranges) == [(0, 30)] and ranges.total == 30
    assert ranges.remove(10, 12) == 2 and list(ranges) == [(0, 10), (12, 30)]
    assert ranges.contains(12, 30) and not ranges.contains(9, 13) and ranges.overlaps(9, 11)
    assert list(ranges.complement(0, 40)) == [(10, 12), (30, 40)]
    assert ranges.next_from(10) == (12, 30) and ranges.prefix_end(0) == 10
    have = fc.RangeSet([(0, 8192), (10000, 20000)])
    assert list(fc.chunk_ranges(have, 4096, 20000)) == [(0, 2), (3, 5)]
    assert list(fc.chunks_to_bytes([(3, 5)], 4096, 20000)) == [(12288, 20000)]


def test_large_records_arrive_as_views_only_for_file_data():
    """The receiver decodes large DATA without copying it (a view of the decrypted payload);
    any other large record, hostile or not, reaches its decoder as bytes or is refused."""
    from chatp2p_core.codec import wire

    tid = fc.transfer_wire_id("x")
    data = fc.Data(tid, 7, 1 << 20, b"z" * 30000)
    offer = RawRecord(0x20, b"\0" * 20000)            # malformed, and large
    other = RawRecord(0x41, b"y" * 20000)             # another layer's reserved type
    records = wire.decode_records(b"".join(wire.encode_record(r) for r in (fc.to_raw(data), offer, other)))
    assert [type(r.body) for r in records] == [memoryview, memoryview, bytes]
    decoded = fc.decode_file_record(records[0])
    assert (decoded.pn, decoded.offset, bytes(decoded.data)) == (7, 1 << 20, b"z" * 30000)
    try:
        fc.decode_file_record(records[1])
    except WireError as exc:
        assert "trailing" in str(exc)
    else:
        raise AssertionError("a 20000-byte OFFER body was accepted")
