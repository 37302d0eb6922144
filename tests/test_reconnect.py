"""A restarted node picks its sessions up again by itself, and queued messages go out."""

import os
import shutil
import tempfile
import time

from daemon import Daemon, ok
from poll import wait_for

TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-rc-")


def teardown_module():
    print("TMPDIR", TMP)  # DEBUG-DP



def test_restarted_node_reconnects_and_queue_drains():
    alice = Daemon(os.path.join(TMP, "alice")).start()
    bob = Daemon(os.path.join(TMP, "bob")).start()
    try:
        a, b = ok(alice.request("status"))["data"], ok(bob.request("status"))["data"]
        ok(alice.request("contacts", "add", {"peer": "Bob", "public_key": b["identity"]["fingerprint"]}))
        ok(bob.request("contacts", "add", {"peer": "Alice", "public_key": a["identity"]["fingerprint"]}))
        ok(bob.request("p2p", "connect", {"peer": "Alice", "address": f"127.0.0.1:{a['p2p']['port']}"}))
        ok(bob.request("contacts", "negotiate_keys", {"peer": "Alice"}))
        assert bob.stop() == 0
        for i in range(5):
            assert ok(alice.request("p2p", "send_message", {"peer": "Bob", "message": f"while away {i}"}))["data"] \
                == "Message queued"
        bob.start()  # a new UDP port: only Bob knows where Alice is, and nobody tells him to call
        def received():
            messages = ok(bob.request("p2p", "history", {"peer": "Alice"}))["data"]
            return messages if len(messages) >= 5 else None

        history = wait_for(received, 20, "the five queued messages at Bob")
        assert [(m["direction"], m["body"]) for m in history] == [("in", f"while away {i}") for i in range(5)]
        wait_for(lambda: all(m["state"] == "delivered"
                             for m in ok(alice.request("p2p", "history", {"peer": "Bob"}))["data"]),
                 20, "Alice's messages delivered")
        peers = ok(alice.request("p2p", "peers"))["data"]
        assert peers[0]["state"] == "connected"
    finally:
        alice.stop()
        bob.stop()


def test_higher_node_restarting_right_after_a_handshake_is_not_locked_out():
    """The lower node refuses a peer's handshake while its own is fresh (simultaneous open,
    PROTOCOL §4.5) — but not one the peer began afterwards, as a restarted peer does."""
    from chatp2p_core.crypto.identity import parse_id

    one = Daemon(os.path.join(TMP, "one")).start()
    two = Daemon(os.path.join(TMP, "two")).start()
    try:
        s1, s2 = ok(one.request("status"))["data"], ok(two.request("status"))["data"]
        ok(one.request("contacts", "add", {"peer": "Two", "public_key": s2["identity"]["fingerprint"]}))
        ok(two.request("contacts", "add", {"peer": "One", "public_key": s1["identity"]["fingerprint"]}))
        lower_is_one = parse_id(s1["identity"]["fingerprint"]) < parse_id(s2["identity"]["fingerprint"])
        lower, higher = (one, two) if lower_is_one else (two, one)
        higher_name, lower_name = ("Two", "One") if lower_is_one else ("One", "Two")
        higher_port = (s2 if lower_is_one else s1)["p2p"]["port"]
        ok(lower.request("p2p", "connect", {"peer": higher_name, "address": f"127.0.0.1:{higher_port}"}))
        ok(lower.request("contacts", "negotiate_keys", {"peer": higher_name}))   # the lower node's session
        # The higher node holds it too (and so has stored the lower node's address): the lower
        # one completes on DONE, which the higher one sends before it records the session.
        wait_for(lambda: any(p["name"] == lower_name and p["state"] == "connected"
                             for p in ok(higher.request("p2p", "peers"))["data"]),
                 10, "the higher node's side of the session")
        higher.kill()       # no CLOSE: the lower node still holds its fresh session
        higher.start()      # at once, on a new port: it calls the lower node at its known address
        started = time.monotonic()
        ok(higher.request("p2p", "send_message", {"peer": lower_name, "message": "back already"}))
        wait_for(lambda: any(m["body"] == "back already" for m in ok(lower.request("p2p", "history",
                                                                                   {"peer": higher_name}))["data"]),
                 15, "the restarted node's message at the lower node")
        assert time.monotonic() - started < 10   # not the 30 s of the simultaneous-open window
    finally:
        one.stop()
        two.stop()
