"""File transfers end to end between real chatp2pd daemons on loopback.

Module-wide daemons: A "Alice" sends, B "Bob" receives (each a contact of the other, directly
connected). Tests that kill a daemon or need impairments build their own pair. Events are read
with a plain pyzmq SUB socket on each daemon's ipc:// endpoint.
"""

import hashlib
import os
import pathlib
import shutil
import sqlite3
import tempfile
import time

from chatp2p_core.codec.filecodec import chunks_to_bytes, parse_ranges
from chatp2p_core.services.transfer.direct import open_direct
from daemon import Daemon, ok
from events import Events
from poll import wait_for

TMP = None
A = B = None
EV_A = EV_B = None
MIB = 1 << 20


# -- helpers ----------------------------------------------------------------------------------
def make_file(path, size, seed=0):
    """A file of `size` pseudo-random bytes; returns its SHA-256 (hex)."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    with open(path, "wb") as handle:
        written, n = 0, 0
        while written < size:
            piece = (n.to_bytes(8, "big") + block)[:min(MIB, size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
            n += 1
    return digest.hexdigest()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def start_pair(root, name, args_a=(), args_b=()):
    """Two daemons that are each other's contacts, connected; returns (a, b, events a, events b)."""
    a = Daemon(os.path.join(root, f"{name}-a"), "--keepalive-interval", "1",
               "--downloads-dir", os.path.join(root, f"{name}-a", "dl"), *args_a)
    b = Daemon(os.path.join(root, f"{name}-b"), "--keepalive-interval", "1",
               "--downloads-dir", os.path.join(root, f"{name}-b", "dl"), *args_b)
    a.start()
    b.start()
    sa, sb = a.request("status")["data"], b.request("status")["data"]
    ok(a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]}))
    ok(b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}))
    ev_a, ev_b = Events(a), Events(b)
    ok(a.request("p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{sb['p2p']['port']}"}))
    ok(a.request("contacts", "negotiate_keys", {"peer": "Bob"}))
    return a, b, ev_a, ev_b


def part_files(downloads):
    """The receiver's part files (in their own directory of the downloads dir)."""
    directory = os.path.join(downloads, ".chatp2p-partial")
    return [p for p in os.listdir(directory) if p.endswith(".part")] if os.path.isdir(directory) else []


def durable_bytes(daemon, tid):
    """Bytes of transfer `tid` the receiver has recorded as durable (fdatasync'ed, then stored),
    read from its database (WAL: readable while it runs)."""
    db = sqlite3.connect(f"file:{os.path.join(daemon.data_dir, 'chatp2p.db')}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT have, chunk_size, size FROM transfers WHERE transfer_id = ?", (tid,)).fetchone()
    finally:
        db.close()
    return chunks_to_bytes(parse_ranges(row[0]), row[1], row[2]).total if row else 0


def transfers(daemon):
    return {t["transfer_id"]: t for t in ok(daemon.request("p2p", "transfers"))["data"]}


def setup_module():
    global TMP, A, B, EV_A, EV_B
    TMP = tempfile.mkdtemp(prefix="chatp2p-transfer-")
    A, B, EV_A, EV_B = start_pair(TMP, "main")


def close_pair(events, daemons):
    """Close event collectors and stop daemons, any of which may be None (a failed start)."""
    for collector in events:
        if collector is not None:
            collector.close()
    for daemon in daemons:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


def teardown_module():
    close_pair((EV_A, EV_B), (A, B))
    if not os.environ.get("CHATP2P_KEEP_TEST_DIR"):
        shutil.rmtree(TMP, ignore_errors=True)


# -- tests ------------------------------------------------------------------------------------
def test_64_mib_on_loopback_arrives_with_the_same_sha256():
    source = os.path.join(TMP, "big.bin")
    expected = make_file(source, 64 * MIB, seed=1)
    reply = ok(A.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))
    assert reply["data"] == "File transfer started"
    tid = reply["transfer_id"]
    offer = EV_B.wait_data("file_offer", 10, transfer_id=tid)[0]
    assert offer["peer"] == "Alice" and offer["file_name"] == "big.bin" and offer["size"] == 64 * MIB
    started = time.monotonic()
    ok(B.request("p2p", "accept_file", {"transfer_id": tid}))
    received = EV_B.wait_data("file_received", 60, transfer_id=tid)[0]
    elapsed = time.monotonic() - started
    EV_A.wait_data("file_transfer_completed", 10, transfer_id=tid)
    assert received["sha256"] == expected
    assert sha256_of(received["path"]) == expected
    assert pathlib.Path(received["path"]).parent == pathlib.Path(TMP, "main-b", "dl")
    assert pathlib.Path(received["path"]).name == "big.bin"
    assert not part_files(os.path.join(TMP, "main-b", "dl"))
    progress = EV_B.all("file_transfer_progress", transfer_id=tid)
    assert all(set(p) >= {"file_name", "size", "bytes", "rate", "eta"} for p in progress)
    view_a, view_b = transfers(A)[tid], transfers(B)[tid]
    assert view_a["state"] == view_b["state"] == "completed"
    assert view_a["direction"] == "out" and view_b["direction"] == "in"
    # The steady flow was written around the page cache where the filesystem allows it, and
    # through it (said in the counters) where it does not.
    counters = B.request("status")["data"]["p2p"]["counters"]
    if direct_io_works(os.path.join(TMP, "main-b", "dl")):
        assert counters.get("file_direct_bytes", 0) >= 32 * MIB, counters
    else:
        assert counters.get("file_direct_refused", 0) >= 1 and not counters.get("file_direct_bytes"), counters
    print(f"64 MiB in {elapsed:.2f} s: {64 / elapsed:.0f} MiB/s; sent {view_a['wire_bytes']} bytes")


def direct_io_works(directory: str) -> bool:
    """Whether the filesystem of `directory` takes O_DIRECT (tmpfs before Linux 6.6 does not)."""
    probe = os.path.join(directory, ".direct-probe")
    open(probe, "wb").close()
    try:
        os.close(open_direct(probe))
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


def _progress_at_least(events, tid, fraction, total, timeout):
    """Wait for a file_transfer_progress event of `tid` with at least `fraction` of `total` bytes."""
    return events.wait_data("file_transfer_progress", timeout, transfer_id=tid,
                            where=lambda p: p["bytes"] >= fraction * total)[0]["bytes"]


def _kill_and_restart(daemon, events):
    """kill -9, then start again on the same P2P port (where the peer will look for it)."""
    port = daemon.request("status")["data"]["p2p"]["port"]
    daemon.kill()
    events.close()
    daemon.extra_args = daemon.extra_args + ("--p2p-port", str(port))
    daemon.start()
    return Events(daemon)


def test_receiver_killed_mid_transfer_resumes_without_resending_what_it_had():
    size = 64 * MIB
    a, b, ev_a, ev_b = start_pair(TMP, "kill-rx", ("--upload-limit", "16384"))
    try:
        source = os.path.join(TMP, "kill-rx.bin")
        expected = make_file(source, size, seed=2)
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
        _progress_at_least(ev_b, tid, 0.5, size, 30)
        # Kill once the receiver has recorded (fdatasync + store) half the file as durable.
        wait_for(lambda: durable_bytes(b, tid) >= size // 2, 30, "half the file durable at the receiver")
        ev_b = _kill_and_restart(b, ev_b)
        row = transfers(b)[tid]
        assert row["state"] == "active" and row["bytes"] >= size // 4, row
        received = ev_b.wait_data("file_received", 60, transfer_id=tid)[0]
        done = ev_a.wait_data("file_transfer_completed", 20, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        # The sender sent the file once, plus what the receiver had not made durable.
        assert done["wire_bytes"] < 1.6 * size, done
    finally:
        close_pair((ev_a, ev_b), (a, b))


def test_sender_killed_mid_transfer_resumes_without_resending_what_was_received():
    size = 64 * MIB
    a, b, ev_a, ev_b = start_pair(TMP, "kill-tx", ("--upload-limit", "16384"))
    try:
        source = os.path.join(TMP, "kill-tx.bin")
        expected = make_file(source, size, seed=3)
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
        _progress_at_least(ev_b, tid, 0.5, size, 30)
        ev_a = _kill_and_restart(a, ev_a)
        assert transfers(a)[tid]["state"] in ("active", "offered")
        ok(a.request("p2p", "connect", {"peer": "Bob"}))  # a restarted node reconnects when it has work
        received = ev_b.wait_data("file_received", 60, transfer_id=tid)[0]
        done = ev_a.wait_data("file_transfer_completed", 20, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        assert done["wire_bytes"] < 0.6 * size, done  # the restarted sender sent only the rest
    finally:
        close_pair((ev_a, ev_b), (a, b))


def test_changed_source_restarts_cleanly_and_pause_resume_work():
    size = 16 * MIB
    source = os.path.join(TMP, "changing.bin")
    make_file(source, size, seed=4)
    ok(A.request("p2p", "pause_transfer", {"transfer_id": "nope"})) if False else None
    tid = ok(A.request("p2p", "send_file", {"peer": "Bob", "file_path": source, "chunk_size": 65536,
                                            "transfer_id": "changing-1"}))["transfer_id"]
    assert tid == "changing-1"
    EV_B.wait_data("file_offer", 10, transfer_id=tid)
    ok(A.request("p2p", "pause_transfer", {"transfer_id": tid}))
    assert transfers(A)[tid]["state"] == "paused"
    ok(B.request("p2p", "accept_file", {"transfer_id": tid, "save_as": "changed.bin"}))
    # The acceptance reaches the (paused) sender before the source changes: a chat message
    # B sends afterwards on the same session arrives after it.
    ok(B.request("p2p", "send_message", {"peer": "Alice", "message": "accepted", "message_id": "after-accept-1"}))
    EV_A.wait_data("p2p_message_received", 10, message_id="after-accept-1")
    expected = make_file(source, size + 12345, seed=5)  # another version, another size
    ok(A.request("p2p", "resume_transfer", {"transfer_id": tid}))
    received = EV_B.wait_data("file_received", 60, transfer_id=tid)[0]
    assert received["sha256"] == expected == sha256_of(received["path"])
    assert os.path.basename(received["path"]) == "changed.bin"
    assert transfers(B)[tid]["size"] == size + 12345


def test_64_mib_through_loss_duplication_and_reordering():
    from netproxy import ImpairmentProxy

    size = 64 * MIB
    a = Daemon(os.path.join(TMP, "lossy-a"), "--keepalive-interval", "1",
               "--downloads-dir", os.path.join(TMP, "lossy-a", "dl"))
    b = Daemon(os.path.join(TMP, "lossy-b"), "--keepalive-interval", "1",
               "--downloads-dir", os.path.join(TMP, "lossy-b", "dl"))
    a.start()
    b.start()
    ev_a = ev_b = proxy = None
    try:
        sa, sb = a.request("status")["data"], b.request("status")["data"]
        proxy = ImpairmentProxy.pair(sa["p2p"]["port"], sb["p2p"]["port"], loss=0.05, duplicate=0.02,
                                     reorder=0.02, seed=7).start()
        ok(a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]}))
        ok(b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}))
        ev_a, ev_b = Events(a), Events(b)
        ok(a.request("p2p", "connect", {"peer": "Bob", "address": "%s:%d" % proxy.reach_b}))
        ok(a.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 30}))
        source = os.path.join(TMP, "lossy.bin")
        expected = make_file(source, size, seed=6)
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
        received = ev_b.wait_data("file_received", 120, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        stats = proxy.stats()
        assert stats["up"]["dropped"] > 20 and stats["up"]["duplicated"] > 5 and stats["up"]["reordered"] > 5, stats
        assert stats["down"]["dropped"] > 5, stats
    finally:
        for events in (ev_a, ev_b):
            if events is not None:
                events.close()
        if proxy is not None:
            proxy.stop()
        a.stop()
        b.stop()


def test_two_concurrent_transfers_share_the_link_and_chat_stays_responsive():
    size = 32 * MIB
    sources = [os.path.join(TMP, f"pair-{i}.bin") for i in range(2)]
    digests = [make_file(path, size, seed=10 + i) for i, path in enumerate(sources)]
    tids = [ok(A.request("p2p", "send_file", {"peer": "Bob", "file_path": path}))["transfer_id"] for path in sources]
    for tid in tids:
        EV_B.wait_data("file_offer", 10, transfer_id=tid)
    for tid in tids:
        ok(B.request("p2p", "accept_file", {"transfer_id": tid}))
    latencies = []
    for n in range(10):
        message_id = f"during-transfer-{n}"
        sent = time.monotonic()
        ok(A.request("p2p", "send_message", {"peer": "Bob", "message": f"hello {n}", "message_id": message_id}))
        EV_B.wait_data("p2p_message_received", 10, message_id=message_id)
        latencies.append(time.monotonic() - sent)
    for tid, digest in zip(tids, digests):
        assert EV_B.wait_data("file_received", 60, transfer_id=tid)[0]["sha256"] == digest
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.2, latencies  # chat does not queue behind file data
    # Fair share: both advanced together (neither waited for the other to finish).
    first_done = [EV_B.wait_data("file_transfer_completed", 5, transfer_id=tid)[0]["seconds"] for tid in tids]
    assert max(first_done) < 3 * min(first_done) + 1, first_done


def test_offer_to_an_offline_contact_is_queued_then_sent():
    offline = ok(A.request("contacts", "add", {"peer": "Nobody", "public_key": A.other_id()}))
    assert offline
    source = os.path.join(TMP, "queued.txt")
    pathlib.Path(source).write_text("for later\n")
    reply = ok(A.request("p2p", "send_file", {"peer": "Nobody", "file_path": source}))
    assert reply["data"] == "File transfer queued" and reply["transfer_id"]
    assert transfers(A)[reply["transfer_id"]]["state"] == "queued"
    ok(A.request("p2p", "cancel_transfer", {"transfer_id": reply["transfer_id"]}))


def test_api_errors_are_clear():
    missing = os.path.join(TMP, "does-not-exist.bin")
    reply = A.request("p2p", "send_file", {"peer": "Bob", "file_path": missing, "transfer_id": "missing-1"})
    assert not reply["success"] and "file not found" in reply["error"]
    assert EV_A.wait_data("file_transfer_failed", 5, transfer_id="missing-1")[0]["reason"].endswith("file not found")
    reply = A.request("p2p", "send_file", {"peer": "Bob", "file_path": TMP})
    assert not reply["success"] and "directory" in reply["error"]
    reply = A.request("p2p", "send_file", {"peer": "Bob", "file_path": "relative.txt"})
    assert not reply["success"] and "absolute" in reply["error"]
    reply = A.request("p2p", "send_file", {"peer": "Nobody2", "file_path": missing})
    assert not reply["success"] and "Peer not found" in reply["error"]
    reply = A.request("p2p", "accept_file", {"transfer_id": "unknown"})
    assert not reply["success"] and "not found" in reply["error"]
    source = os.path.join(TMP, "small.txt")
    pathlib.Path(source).write_text("small\n")
    tid = ok(A.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    EV_B.wait_data("file_offer", 10, transfer_id=tid)
    for bad in ("../x", "/etc/passwd", "a/b", "..", "x\u202etxt"):
        reply = B.request("p2p", "accept_file", {"transfer_id": tid, "save_as": bad})
        assert not reply["success"] and "save_as" in reply["error"], (bad, reply)
    ok(B.request("p2p", "reject_file", {"transfer_id": tid}))
    failed = EV_A.wait_data("file_transfer_failed", 10, transfer_id=tid)[0]
    assert "rejected" in failed["reason"]
