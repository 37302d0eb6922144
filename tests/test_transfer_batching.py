"""File transfers over batched UDP (GSO/GRO) at a real path MTU: two real daemons in a veth pair
of network namespaces (MTU 1500), as root.

* Batching on (GSO sends, GRO receives) and off give byte-identical files.
* A path that carries 1200-byte datagrams only (an iptables rule drops larger UDP; the pair's
  UDP segmentation offload is off, so the receiver's rule sees every datagram): the MTU probes
  are lost and the file completes at 1200 bytes.
"""

import os
import shutil
import tempfile

import pytest

from daemon import ok
from netns import netns_available, set_udp_segmentation, start_ns_pair, veth_pair
from test_transfer import close_pair, make_file, sha256_of

MIB = 1 << 20


@pytest.fixture
def tmp():
    usable, why = netns_available(iptables=True)
    if not usable:
        pytest.skip(why)
    if not (shutil.which("ethtool") or shutil.which("ethtool", path="/usr/sbin:/sbin")):
        pytest.skip("ethtool is not installed (Debian ethtool)")
    path = tempfile.mkdtemp(prefix="chatp2p-batching-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _counters(daemon):
    return daemon.request("status")["data"]["p2p"]["counters"]


def _send(a, b, ev_b, source):
    """A sends `source` to B, B accepts; returns B's file_received data."""
    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    ev_b.wait_data("file_offer", 20, transfer_id=tid)
    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
    return ev_b.wait_data("file_received", 120, transfer_id=tid)[0]


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_gso_and_gro_on_and_off_give_byte_identical_files(tmp, batching):
    source = os.path.join(tmp, "file.bin")
    size = 6 * MIB + 1234  # the last DATA of the file is short
    expected = make_file(source, size, seed=61)
    args = () if batching else ("--no-udp-batching",)
    a = b = ev_a = ev_b = None
    with veth_pair(1500) as (ns_a, ns_b):
        try:
            a, b, ev_a, ev_b = start_ns_pair(ns_a, ns_b, tmp, args, args)
            received = _send(a, b, ev_b, source)
            assert received["sha256"] == expected == sha256_of(received["path"])
            assert os.path.getsize(received["path"]) == size
            sent, got = _counters(a), _counters(b)
            if batching:
                assert sent.get("gso_sends", 0) > 0 and got.get("gro_receives", 0) > 0, (sent, got)
                # most DATA left in batches of many datagrams
                assert sent["gso_segments"] > size // 1500 // 2, sent
            else:
                assert not sent.get("gso_sends") and not got.get("gro_receives"), (sent, got)
        finally:
            close_pair((ev_a, ev_b), (a, b))


def test_a_path_of_1200_byte_datagrams_still_completes(tmp):
    source = os.path.join(tmp, "small.bin")
    size = 2 * MIB
    expected = make_file(source, size, seed=63)
    a = b = ev_a = ev_b = None
    with veth_pair(1500, udp_segmentation=False) as (ns_a, ns_b):
        try:
            a, b, ev_a, ev_b = start_ns_pair(ns_a, ns_b, tmp)
            for ns in (ns_a, ns_b):  # IP length above 1228: a UDP payload above 1200 bytes
                ns.iptables("-A", "INPUT", "-p", "udp", "-m", "length", "--length", "1229:65535", "-j", "DROP")
            before = _counters(b).get("received", 0)
            received = _send(a, b, ev_b, source)
            assert received["sha256"] == expected == sha256_of(received["path"])
            dropped = ns_b.iptables("-L", "INPUT", "-v", "-n", "-x")
            assert any(line.split()[0].isdigit() and int(line.split()[0]) > 0
                       for line in dropped.splitlines() if "DROP" in line), dropped  # the probes
            # every DATA datagram carried at most ~1150 bytes of the file
            assert _counters(b)["received"] - before >= size // 1200, _counters(b)
        finally:
            close_pair((ev_a, ev_b), (a, b))
