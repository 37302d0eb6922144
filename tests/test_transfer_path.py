"""File transfers when the path changes under them, with real daemons.

* Transfers both ways at once: the file pump runs when the event loop is idle, and a node
  that receives a flood must still get to send.
* A receiver that stops running for a while (SIGSTOP: a loaded machine, a laptop lid) causes
  probe timeouts, but large datagrams still work: the sender must not fall back to 1200 bytes.
* A path whose MTU shrinks mid-transfer (a veth pair in network namespaces, 65535 then 1500):
  large DATA datagrams are refused (IP_PMTUDISC_PROBE: EMSGSIZE, never fragments) and lost;
  a small PROBE still gets through, so the sender falls back to 1200-byte datagrams and the
  transfer completes with the right SHA-256.
"""

import os
import shutil
import signal
import tempfile

import pytest

from daemon import ok
from events import Events
from poll import wait_for
from test_transfer import close_pair, make_file, sha256_of, start_pair

MIB = 1 << 20


def _counters(daemon):
    return daemon.request("status")["data"]["p2p"]["counters"]


def _wait_progress(events, tid, at_least, timeout):
    """Wait for a file_transfer_progress event of `tid` with at least `at_least` bytes."""
    events.wait_data("file_transfer_progress", timeout, transfer_id=tid, where=lambda p: p["bytes"] >= at_least)


def test_a_stalled_receiver_does_not_make_the_sender_drop_to_small_datagrams():
    tmp = tempfile.mkdtemp(prefix="chatp2p-stall-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(tmp, "stall", ("--upload-limit", "16384"))
        size = 48 * MIB
        source = os.path.join(tmp, "stall.bin")
        expected = make_file(source, size, seed=50)
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
        _wait_progress(ev_b, tid, 8 * MIB, 30)
        before = _counters(a)
        b.proc.send_signal(signal.SIGSTOP)  # nothing is acknowledged: probe timeouts
        # Stopped until the sender has timed out probes three times (about 1.5 s).
        wait_for(lambda: _counters(a).get("file_probe_timeouts", 0) - before.get("file_probe_timeouts", 0) >= 3,
                 20, "three probe timeouts at the sender while the receiver is stopped")
        b.proc.send_signal(signal.SIGCONT)
        received = ev_b.wait_data("file_received", 60, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        after = _counters(a)
        assert after.get("file_probe_timeouts", 0) - before.get("file_probe_timeouts", 0) >= 3, after
        assert after.get("file_mtu_fallbacks", 0) == before.get("file_mtu_fallbacks", 0), after
    finally:
        if b is not None and b.proc is not None and b.proc.poll() is None:
            b.proc.send_signal(signal.SIGCONT)
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)


def test_transfers_both_ways_at_once_both_progress():
    """The pump runs when the loop is idle: a node that receives a flood must still send."""
    tmp = tempfile.mkdtemp(prefix="chatp2p-both-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(tmp, "both")
        size = 64 * MIB
        sources = [os.path.join(tmp, f"{name}.bin") for name in ("a2b", "b2a")]
        digests = [make_file(path, size, seed=60 + i) for i, path in enumerate(sources)]
        t1 = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": sources[0]}))["transfer_id"]
        t2 = ok(b.request("p2p", "send_file", {"peer": "Alice", "file_path": sources[1]}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=t1)
        ev_a.wait_data("file_offer", 10, transfer_id=t2)
        ok(b.request("p2p", "accept_file", {"transfer_id": t1}))
        ok(a.request("p2p", "accept_file", {"transfer_id": t2}))
        got_b = ev_b.wait_data("file_received", 60, transfer_id=t1)[0]
        got_a = ev_a.wait_data("file_received", 60, transfer_id=t2)[0]
        assert got_b["sha256"] == digests[0] and got_a["sha256"] == digests[1]
        seconds = [ev_b.wait_data("file_transfer_completed", 10, transfer_id=t1, direction="in")[0]["seconds"],
                   ev_a.wait_data("file_transfer_completed", 10, transfer_id=t2, direction="in")[0]["seconds"]]
        print(f"both ways: {seconds} s")
        assert max(seconds) < 3 * min(seconds) + 1, seconds  # neither direction starved
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_path_whose_mtu_shrinks_mid_transfer_falls_back_to_small_datagrams():
    from netns import Namespace, NsDaemon, _building, _wire, netns_available

    usable, why = netns_available()
    if not usable:
        pytest.skip(why)
    tmp = tempfile.mkdtemp(prefix="chatp2p-mtu-")
    a = b = ev_a = ev_b = None
    try:
        with _building() as built:
            ns_a, ns_b = Namespace("mtua"), Namespace("mtub")
            built += [ns_a, ns_b]
            _wire(ns_a, "eth0", ns_b, "eth0")
            for ns, address in ((ns_a, "192.0.2.211"), (ns_b, "192.0.2.212")):
                ns.ip("link", "set", "eth0", "mtu", "65535")
                ns.add_address("eth0", f"{address}/24")
            args = ("--keepalive-interval", "1", "--p2p-host", "0.0.0.0")
            a = NsDaemon(ns_a, os.path.join(tmp, "a"), *args, "--upload-limit", "8192",
                         "--downloads-dir", os.path.join(tmp, "a", "dl"))
            b = NsDaemon(ns_b, os.path.join(tmp, "b"), *args, "--downloads-dir", os.path.join(tmp, "b", "dl"))
            a.start()
            b.start()
            sa, sb = a.request("status")["data"], b.request("status")["data"]
            ok(a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]}))
            ok(b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}))
            ev_a, ev_b = Events(a), Events(b)
            ok(a.request("p2p", "connect", {"peer": "Bob", "address": f"192.0.2.212:{sb['p2p']['port']}"}))
            ok(a.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 30}))
            size = 24 * MIB
            source = os.path.join(tmp, "mtu.bin")
            expected = make_file(source, size, seed=51)
            tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
            ev_b.wait_data("file_offer", 20, transfer_id=tid)
            ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
            _wait_progress(ev_b, tid, 4 * MIB, 30)
            for ns in (ns_a, ns_b):  # the route changes: jumbo datagrams no longer fit
                ns.ip("link", "set", "eth0", "mtu", "1500")
            received = ev_b.wait_data("file_received", 90, transfer_id=tid)[0]
            assert received["sha256"] == expected == sha256_of(received["path"])
            counters = _counters(a)
            assert counters.get("file_mtu_fallbacks", 0) >= 1, counters
            assert counters.get("send_errors", 0) > 0, counters  # EMSGSIZE, not local fragments
            for events in (ev_a, ev_b):
                events.close()
            ev_a = ev_b = None
            for daemon in (a, b):
                daemon.stop()
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)
