"""contacts and crypto commands against real daemons; request concurrency on one connection."""

import base64
import json
import os
import shutil
import socket
import tempfile
import time

import zmq

from daemon import Daemon, ok

TMP = None
A = None
B = None


def setup_module():
    global TMP, A, B
    TMP = tempfile.mkdtemp(prefix="chatp2p-cc-")
    A = Daemon(os.path.join(TMP, "a")).start()
    B = Daemon(os.path.join(TMP, "b")).start()


def teardown_module():
    for node in (A, B):
        node.stop()
    shutil.rmtree(TMP, ignore_errors=True)



def error(reply):
    assert reply["success"] is False, reply
    return reply["error"]


def identity(node):
    return ok(node.request("status"))["data"]["identity"]


def subscribe(node):
    """A SUB socket for contact_* events, returned once events are seen to arrive: PUB drops
    them until the subscription has reached it, so probe (add and remove a contact) until one
    gets through, then read up to the last probe's contact_removed."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"contact_")
    sub.connect(node.endpoints["events"][0])
    other = node.other_id()
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline:
        n += 1
        probe = f"zz-probe-{n}"
        ok(node.request("contacts", "add", {"peer": probe, "public_key": other}))
        ok(node.request("contacts", "remove", {"peer": probe}))
        if sub.poll(200):
            next_event(sub, "contact_removed", name=probe)  # every later event arrives: drain to it
            return sub
    sub.close()
    raise AssertionError("no event arrived on the SUB socket")


def next_event(sub, name, /, **match):
    """The next `name` event whose data fields equal `match`, skipping others."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sub.poll(500):
            topic, payload = sub.recv_multipart()
            event = json.loads(payload)
            if topic.decode() == name and all(event["data"].get(k) == v for k, v in match.items()):
                return event
    raise AssertionError(f"no {name} event {match or ''}")


def test_add_by_bundle_and_by_id_list_fields_and_events():
    sub = subscribe(A)
    try:
        bob = identity(B)
        assert ok(A.request("contacts", "add", {"peer": "Bob", "public_key": bob["public_key"]}))["data"] == "Contact added"
        event = next_event(sub, "contact_added")
        assert event["data"]["name"] == "Bob" and event["data"]["fingerprint"] == bob["fingerprint"]
        carol = ok(A.request("crypto", "generate_keypair"))["data"]
        assert ok(A.request("contacts", "add", {"peer": "Carol", "public_key": carol["fingerprint"]}))["data"]
        contacts = {c["name"]: c for c in ok(A.request("contacts", "list"))["data"]}
        assert set(contacts["Bob"]) >= {"name", "fingerprint", "public_key", "verified", "blocked", "online",
                                        "last_seen", "unread"}
        assert contacts["Bob"]["public_key"] == bob["public_key"]
        assert contacts["Carol"]["public_key"] is None and contacts["Carol"]["fingerprint"] == carol["fingerprint"]
        assert contacts["Bob"]["online"] is False and contacts["Bob"]["unread"] == 0
        assert ok(A.request("contacts", "rename", {"peer": "carol", "new_name": "Caroline"}))["data"]["name"] == "Caroline"
        assert next_event(sub, "contact_updated")["data"]["previous_name"] == "Carol"
        assert ok(A.request("contacts", "block", {"peer": "Caroline"}))["data"]["blocked"] is True
        assert ok(A.request("contacts", "unblock", {"peer": "Caroline"}))["data"]["blocked"] is False
        assert ok(A.request("contacts", "remove", {"peer": "Caroline"}))["data"] == "Contact removed"
        removed = next_event(sub, "contact_removed")["data"]
        assert removed["name"] == "Caroline"
    finally:
        sub.close()


def test_contact_errors_are_clear():
    bob = identity(B)
    assert error(A.request("contacts", "remove", {"peer": "Nobody"})) == "Peer not found: Nobody"
    first = ok(A.request("crypto", "generate_keypair"))["data"]["fingerprint"]
    ok(A.request("contacts", "add", {"peer": "Dup", "public_key": first}))
    other = ok(A.request("crypto", "generate_keypair"))["data"]["fingerprint"]
    assert "already exists" in error(A.request("contacts", "add", {"peer": "dup", "public_key": other}))
    assert "already a contact" in error(A.request("contacts", "add", {"peer": "Dup2", "public_key": first}))
    assert "own" in error(A.request("contacts", "add", {"peer": "Me", "public_key": identity(A)["fingerprint"]}))
    bad_id = bob["fingerprint"][:-1] + ("a" if bob["fingerprint"][-1] != "a" else "c")
    assert "Invalid ID" in error(A.request("contacts", "add", {"peer": "Typo", "public_key": bad_id}))
    assert "Invalid public key" in error(A.request("contacts", "add", {"peer": "G", "public_key": "AAAA" * 300}))
    assert error(A.request("contacts", "add", {"peer": "", "public_key": other}))
    assert error(A.request("contacts", "add", {"peer": "x\u202ey", "public_key": other}))
    ok(A.request("contacts", "remove", {"peer": "Dup"}))


def test_encrypt_on_one_daemon_decrypt_on_another():
    bob = identity(B)
    for aead in ("chacha20poly1305", "aes256gcm"):
        sealed = ok(A.request("crypto", "encrypt", {"message": "salut Bob ✓", "public_key": bob["public_key"],
                                                    "aead": aead}))["data"]["encrypted_data"]
        assert ok(B.request("crypto", "decrypt", {"encrypted_data": sealed}))["data"]["message"] == "salut Bob ✓"
        assert "Decryption failed" in error(A.request("crypto", "decrypt", {"encrypted_data": sealed}))


def test_generate_keypair_never_touches_the_identity_and_works_with_decrypt():
    before = identity(A)
    pair = ok(A.request("crypto", "generate_keypair"))["data"]
    assert set(pair) >= {"public_key", "private_key", "algorithm", "fingerprint"}
    assert identity(A) == before and pair["fingerprint"] != before["fingerprint"]
    sealed = ok(B.request("crypto", "encrypt", {"message": "x", "public_key": pair["public_key"]}))["data"]["encrypted_data"]
    assert ok(A.request("crypto", "decrypt", {"encrypted_data": sealed, "private_key": pair["private_key"]}))["data"] == \
        {"message": "x"}


def test_crypto_errors():
    bob = identity(B)
    sealed = ok(A.request("crypto", "encrypt", {"message": "m", "public_key": bob["public_key"]}))["data"]["encrypted_data"]
    raw = bytearray(base64.b64decode(sealed))
    raw[-5] ^= 1
    tampered = base64.b64encode(bytes(raw)).decode()
    assert "Decryption failed" in error(B.request("crypto", "decrypt", {"encrypted_data": tampered}))
    assert error(B.request("crypto", "decrypt", {"encrypted_data": "!!not base64!!"}))
    assert error(A.request("crypto", "encrypt", {"message": "m", "public_key": base64.b64encode(b"x" * 100).decode()}))
    assert error(A.request("crypto", "decrypt", {"encrypted_data": sealed, "private_key": "AAAA"}))
    assert error(A.request("crypto", "encrypt", {"message": "m", "public_key": bob["public_key"], "aead": "rot13"}))


def test_requests_on_one_connection_run_concurrently():
    """A slow request (a handshake to a silent address) does not hold up one with an id."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        other = ok(A.request("crypto", "generate_keypair"))["data"]["fingerprint"]
        ok(A.request("contacts", "add", {"peer": "Silent", "public_key": other}))
        ok(A.request("p2p", "connect", {"peer": "Silent", "address": "127.0.0.1:%d" % silent.getsockname()[1]}))
        conn = socket.create_connection(("127.0.0.1", A.port), timeout=20)
        reader = conn.makefile("rb")
        conn.sendall(json.dumps({"command": "contacts", "action": "negotiate_keys",
                                 "data": {"peer": "Silent", "timeout": 2}, "id": "slow"}).encode()
                     + json.dumps({"command": "status", "id": "fast"}).encode())
        first, second = json.loads(reader.readline()), json.loads(reader.readline())
        assert (first["id"], second["id"]) == ("fast", "slow")
        assert "Could not reach Silent" in second["error"]
        # Without ids the answers keep request order, even when the first is the slow one.
        conn.sendall(json.dumps({"command": "contacts", "action": "negotiate_keys",
                                 "data": {"peer": "Silent", "timeout": 1}}).encode()
                     + json.dumps({"command": "status"}).encode())
        first, second = json.loads(reader.readline()), json.loads(reader.readline())
        assert first["success"] is False and second["success"] is True
        conn.close()
    finally:
        silent.close()
        A.request("contacts", "remove", {"peer": "Silent"})
