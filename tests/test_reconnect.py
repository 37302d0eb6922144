"""A restarted node picks its sessions up again by itself, and queued messages go out."""

import os
import shutil
import tempfile
import time

from daemon import Daemon

TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-rc-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


def ok(reply):
    assert reply["success"], reply
    return reply["data"]


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_restarted_node_reconnects_and_queue_drains():
    alice = Daemon(os.path.join(TMP, "alice")).start()
    bob = Daemon(os.path.join(TMP, "bob")).start()
    try:
        a, b = ok(alice.request("status")), ok(bob.request("status"))
        ok(alice.request("contacts", "add", {"peer": "Bob", "public_key": b["identity"]["fingerprint"]}))
        ok(bob.request("contacts", "add", {"peer": "Alice", "public_key": a["identity"]["fingerprint"]}))
        ok(bob.request("p2p", "connect", {"peer": "Alice", "address": f"127.0.0.1:{a['p2p']['port']}"}))
        ok(bob.request("contacts", "negotiate_keys", {"peer": "Alice"}))
        assert bob.stop() == 0
        for i in range(5):
            assert ok(alice.request("p2p", "send_message", {"peer": "Bob", "message": f"while away {i}"})) \
                == "Message queued"
        bob.start()  # a new UDP port: only Bob knows where Alice is, and nobody tells him to call
        def received():
            messages = ok(bob.request("p2p", "history", {"peer": "Alice"}))
            return messages if len(messages) >= 5 else None

        history = wait_for(received)
        assert [(m["direction"], m["body"]) for m in history] == [("in", f"while away {i}") for i in range(5)]
        wait_for(lambda: all(m["state"] == "delivered"
                             for m in ok(alice.request("p2p", "history", {"peer": "Bob"}))))
        peers = ok(alice.request("p2p", "peers"))
        assert peers[0]["state"] == "connected"
    finally:
        alice.stop()
        bob.stop()
