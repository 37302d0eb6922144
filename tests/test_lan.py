"""LAN discovery: unlinkable rotating tags, and two nodes on one segment finding each other."""

import os
import shutil
import tempfile

import pytest
from hypothesis import given, strategies as st

from chatp2p_core.net import lan
from poll import wait_for
from netns import NsDaemon, lan_segment, netns_available

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))


def test_tags_rotate_and_match_only_the_right_identity():
    now = 1_700_000_000.0
    data = lan.encode_announcement(ALICE, 4242, now)
    epoch, port, value = lan.decode_announcement(data)
    assert port == 4242
    assert lan.match([BOB, ALICE], epoch, value, now) == ALICE
    assert lan.match([BOB], epoch, value, now) is None
    later = lan.encode_announcement(ALICE, 4242, now + lan.TAG_PERIOD)
    assert lan.decode_announcement(later)[2] != value          # rotates
    assert lan.match([ALICE], epoch, value, now + 10 * lan.TAG_PERIOD) is None   # stale replay
    assert ALICE not in data and lan.lan_key(ALICE) not in data


@given(st.binary(max_size=64))
def test_garbage_announcements_are_rejected(data):
    try:
        lan.decode_announcement(data)
    except lan.AnnouncementError:
        return
    assert len(data) == lan.ANNOUNCE.size and data.startswith(lan.MAGIC)


def test_two_nodes_on_a_segment_find_each_other():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-lan-")
    nodes = []
    try:
        with lan_segment(2) as (ns_a, ns_b):
            args = ("--lan-discovery", "--p2p-host", "0.0.0.0")
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
