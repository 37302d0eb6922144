"""LAN discovery: unlinkable rotating tags, and two nodes on one segment finding each other."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given, strategies as st

from chatp2p_core.net import lan
from daemon import Daemon
from netns import lan_segment, netns_available

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


class NsNode:
    """A chatp2pd inside a namespace; requests go through chatp2pctl run in that namespace."""

    def __init__(self, ns, directory):
        self.ns = ns
        self.data_dir = os.path.join(directory, "data")
        os.makedirs(directory, exist_ok=True)
        self.log = open(os.path.join(directory, "daemon.log"), "wb")
        cmd = Daemon.command(self.data_dir, "--lan-discovery", "--p2p-host", "0.0.0.0")
        self.proc = ns.popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=Daemon.environment(directory))
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(self.data_dir, "run.json")):
            assert self.proc.poll() is None, pathlib.Path(self.log.name).read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def request(self, command, action=None, data=None):
        body = json.dumps({"command": command, "action": action, "data": data})
        out = self.ns.run([sys.executable, "-c", "import chatp2p,sys; sys.exit(chatp2p.main_ctl())",
                           "--data-dir", self.data_dir, "--json", "raw", body], check=False)
        return json.loads(out.stdout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def test_two_nodes_on_a_segment_find_each_other():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-lan-")
    nodes = []
    try:
        with lan_segment(2) as (ns_a, ns_b):
            a, b = NsNode(ns_a, os.path.join(tmp, "a")), NsNode(ns_b, os.path.join(tmp, "b"))
            nodes = [a, b]
            id_a = a.request("status")["data"]["identity"]["fingerprint"]
            id_b = b.request("status")["data"]["identity"]["fingerprint"]
            assert a.request("contacts", "add", {"peer": "Bob", "public_key": id_b})["success"]
            assert b.request("contacts", "add", {"peer": "Alice", "public_key": id_a})["success"]
            deadline = time.monotonic() + 20
            peer = None
            while time.monotonic() < deadline:
                peer = a.request("p2p", "peers")["data"][0]
                if peer["state"] == "connected" and peer["path"] == "lan":
                    break
                time.sleep(0.3)
            assert peer["state"] == "connected" and peer["path"] == "lan", peer
            assert peer["address"].startswith(ns_b.address + ":")
            assert a.request("p2p", "send_message", {"peer": "Bob", "message": "over the LAN"})["data"] == "Message sent"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                history = b.request("p2p", "history", {"peer": "Alice"})["data"]
                if history:
                    break
                time.sleep(0.2)
            assert [m["body"] for m in history] == ["over the LAN"]
            status = b.request("status")["data"]["p2p"]["lan_discovery"]
            assert status["announced"] > 0 and status["matched"] > 0
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
