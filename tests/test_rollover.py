"""Key rollover: a contact follows a new identity key only when the old key signed the change.

Unit tests of the statement codec and of the handshake with statements (in memory, on the
simulated network of test_handshake), then real daemons: Bob rotates his identity and Alice
follows, as initiator and as responder; an impostor at Bob's address stays a key mismatch.
"""

import os
import pathlib
import shutil
import stat
import struct
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from chatp2p_core.crypto import handshake as hs, identity as ident, pqc
from chatp2p_core.codec import wire
from chatp2p_core.crypto.handshake import Authenticated, Established, FailReason, Failed, Initiator, Listener
from chatp2p_core.crypto.identity import Identity, IdentityError, Rollover, make_rollover, verify_rollover
from chatp2p_core.codec.wire import PacketType
from daemon import Daemon
from events import Events
from poll import wait_for
from test_handshake import run

BACKEND = None
ALICE = BOB_OLD = BOB = CAROL = None
STATEMENT = None  # BOB_OLD hands over to BOB


def setup_module():
    global BACKEND, ALICE, BOB_OLD, BOB, CAROL, STATEMENT
    BACKEND = pqc.select_backend()
    ALICE, BOB_OLD, BOB, CAROL = (Identity.generate(BACKEND) for _ in range(4))
    STATEMENT = make_rollover(BOB_OLD, BOB, BACKEND, 1_700_000_000.5)


def rejected(data, old_bundle):
    """True when `data` does not decode or does not verify under `old_bundle`."""
    try:
        statement = Rollover.decode(data)
    except IdentityError:
        return True
    return not verify_rollover(statement, old_bundle, BACKEND)


def forged(old_fingerprint, new_bundle, signer, created_ms=1):
    """A well-formed statement signed by `signer`, whatever key it claims to come from."""
    unsigned = Rollover(old_fingerprint, new_bundle, created_ms, b"")
    return Rollover(old_fingerprint, new_bundle, created_ms,
                    signer.sign(BACKEND, ident.ROLLOVER_LABEL + unsigned.signed_part()))


# -- statement codec ------------------------------------------------------------------------
def test_statement_round_trip_and_layout():
    data = STATEMENT.encode()
    assert data[:5] == b"CP2R\x01" and data[5:37] == BOB_OLD.fingerprint
    assert len(data) == 4 + 1 + 32 + 2 + 3209 + 8 + 2 + pqc.SIG_LEN == 6631
    decoded = Rollover.decode(data)
    assert decoded == STATEMENT and decoded.created_ms == 1_700_000_000_500
    assert decoded.new_fingerprint == BOB.fingerprint and decoded.new_bundle == BOB.bundle
    assert verify_rollover(decoded, BOB_OLD.bundle, BACKEND)


def test_tampered_statement_is_rejected():
    data = STATEMENT.encode()
    bundle_at = 37 + 2
    created_at = bundle_at + 3209
    positions = [0, 4, 5, 20, 36, 37, 38, bundle_at + 7, bundle_at + 1300, created_at, created_at + 7,
                 created_at + 8, created_at + 10, created_at + 10 + 2000,   # ML-DSA half
                 len(data) - 64, len(data) - 1]                             # Ed25519 half
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        assert rejected(bytes(damaged), BOB_OLD.bundle), pos


def test_each_signature_half_is_checked():
    data = STATEMENT.encode()
    sig_at = len(data) - pqc.SIG_LEN
    other = forged(BOB_OLD.fingerprint, BOB.bundle, BOB_OLD, created_ms=2).signature  # valid for another message
    only_mldsa = data[:sig_at] + data[sig_at:sig_at + pqc.MLDSA_SIG_LEN] + other[pqc.MLDSA_SIG_LEN:]
    only_ed25519 = data[:sig_at] + other[:pqc.MLDSA_SIG_LEN] + data[sig_at + pqc.MLDSA_SIG_LEN:]
    assert rejected(only_mldsa, BOB_OLD.bundle) and rejected(only_ed25519, BOB_OLD.bundle)


def test_wrong_old_key_is_rejected():
    assert not verify_rollover(STATEMENT, CAROL.bundle, BACKEND)       # checked against another key
    assert not verify_rollover(STATEMENT, BOB.bundle, BACKEND)         # ... or against the new one
    claim = forged(BOB_OLD.fingerprint, CAROL.bundle, CAROL)           # Carol claims Bob's old key
    assert not verify_rollover(claim, BOB_OLD.bundle, BACKEND)
    relabelled = forged(CAROL.fingerprint, BOB.bundle, BOB_OLD)        # Bob's key, Carol's name on it
    assert not verify_rollover(relabelled, BOB_OLD.bundle, BACKEND)


def test_same_bundle_is_rejected():
    with pytest.raises(IdentityError):
        make_rollover(BOB, BOB, BACKEND, 0.0)
    assert not verify_rollover(forged(BOB.fingerprint, BOB.bundle, BOB), BOB.bundle, BACKEND)


def test_truncated_or_extended_statement_is_refused():
    data = STATEMENT.encode()
    for size in list(range(0, 60)) + list(range(60, len(data), 97)) + [len(data) - 1]:
        with pytest.raises(IdentityError):
            Rollover.decode(data[:size])
    with pytest.raises(IdentityError):
        Rollover.decode(data + b"\x00")
    with pytest.raises(IdentityError):
        Rollover.decode(b"CP2B" + data[4:])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=6630))
def test_garbage_never_raises_anything_else(junk, cut):
    for data in (junk, STATEMENT.encode()[:cut] + junk, b"CP2R\x01" + junk):
        try:
            Rollover.decode(data)
        except IdentityError:
            pass


def test_rotate_writes_private_files_and_load_checks_them():
    directory = pathlib.Path(tempfile.mkdtemp(prefix="chatp2p-rot-"))
    try:
        old = ident.load_or_create(directory, BACKEND)
        assert ident.load_rollover(directory, old, BACKEND) is None
        new, statement = ident.rotate(directory, old, BACKEND, 1000.0)
        for name in (ident.KEY_FILE, ident.PREVIOUS_KEY_FILE, ident.ROLLOVER_FILE):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
        assert ident.load_or_create(directory, BACKEND).fingerprint == new.fingerprint
        assert ident.load(directory / ident.PREVIOUS_KEY_FILE, BACKEND).fingerprint == old.fingerprint
        assert ident.load_rollover(directory, new, BACKEND) == statement
        assert verify_rollover(statement, old.bundle, BACKEND)
        assert ident.load_rollover(directory, old, BACKEND) is None     # names another identity
        (directory / ident.ROLLOVER_FILE).write_bytes(forged(old.fingerprint, new.bundle, CAROL).encode())
        assert ident.load_rollover(directory, new, BACKEND) is None     # not signed by the previous key
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- handshake ------------------------------------------------------------------------------
def events(result, side, kind):
    return [e for e in (result.events_i if side == "I" else result.events_r) if isinstance(e, kind)]


def test_initiator_follows_a_signed_rollover():
    listener = Listener(BOB, BACKEND, rollover=STATEMENT.encode())
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=BOB_OLD.fingerprint, expected_bundle=BOB_OLD.bundle)
    result = run(initiator, listener)
    (done,) = events(result, "I", Established)
    assert done.fingerprint == BOB.fingerprint and done.rollover == STATEMENT
    (other,) = events(result, "R", Established)
    assert other.fingerprint == ALICE.fingerprint and other.keys.recv_secret == done.keys.send_secret
    assert initiator.stats["rollover_accepted"] == 1
    assert all(len(d) <= wire.MAX_DATAGRAM for _, d in result.capture)


def test_statement_travels_encrypted():
    listener = Listener(BOB, BACKEND, rollover=STATEMENT.encode())
    initiator = Initiator(ALICE, BACKEND, expected_bundle=BOB_OLD.bundle, rollover=STATEMENT.encode())
    result = run(initiator, listener)
    assert events(result, "I", Established)
    blob = b"".join(d for _, d in result.capture)
    statement = STATEMENT.encode()
    for pos in range(0, len(statement) - 16, 16):
        chunk = statement[pos:pos + 16]
        assert len(set(chunk)) < 8 or chunk not in blob  # (padding inside signatures is not secret)
    assert BOB_OLD.fingerprint[:12] not in blob and BOB.fingerprint[:12] not in blob


def test_rollover_needs_the_old_bundle():
    """With only the contact's ID, the statement's signature cannot be checked: mismatch as before."""
    listener = Listener(BOB, BACKEND, rollover=STATEMENT.encode())
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=BOB_OLD.fingerprint)
    (failed,) = run(initiator, listener).events_i
    assert isinstance(failed, Failed) and failed.reason is FailReason.KEY_MISMATCH
    with pytest.raises(ValueError):
        Initiator(ALICE, BACKEND, expected_fingerprint=CAROL.fingerprint, expected_bundle=BOB_OLD.bundle)


@pytest.mark.parametrize("case", ["no_statement", "replayed", "claims_bob", "own_rollover", "garbage"])
def test_impostor_is_still_a_key_mismatch(case):
    """Carol answers for Bob: no statement, Bob's genuine statement (not her key), one she signed
    claiming Bob's old key, her own genuine rollover (signed by another key), or junk."""
    carol_old = Identity.generate(BACKEND) if case == "own_rollover" else None
    statement = {
        "no_statement": None,
        "replayed": STATEMENT.encode(),
        "claims_bob": forged(BOB_OLD.fingerprint, CAROL.bundle, CAROL).encode(),
        "own_rollover": make_rollover(carol_old, CAROL, BACKEND, 5.0).encode() if carol_old else None,
        "garbage": b"CP2R\x01" + bytes(100),
    }[case]
    listener = Listener(CAROL, BACKEND, rollover=statement)
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=BOB_OLD.fingerprint, expected_bundle=BOB_OLD.bundle)
    result = run(initiator, listener)
    (failed,) = result.events_i
    assert isinstance(failed, Failed) and failed.reason is FailReason.KEY_MISMATCH
    assert failed.bundle == CAROL.bundle
    assert PacketType.AUTH not in [wire.parse_prefix(d)[0] for to, d in result.capture if to == "R"]


def test_statement_is_ignored_when_the_key_is_the_expected_one():
    listener = Listener(BOB, BACKEND, rollover=STATEMENT.encode())
    initiator = Initiator(ALICE, BACKEND, expected_bundle=BOB.bundle)
    (done,) = events(run(initiator, listener), "I", Established)
    assert done.fingerprint == BOB.fingerprint and done.rollover is None


def test_responder_reports_the_initiator_statement_unverified():
    seen = []

    def decide(event):
        seen.append(event)
        return True

    run(Initiator(BOB, BACKEND, rollover=STATEMENT.encode()), Listener(ALICE, BACKEND), decide=decide)
    assert seen[0].fingerprint == BOB.fingerprint and seen[0].rollover == STATEMENT
    seen.clear()
    # a statement for another key than the one the initiator presents is dropped
    run(Initiator(CAROL, BACKEND, rollover=STATEMENT.encode()), Listener(ALICE, BACKEND), decide=decide)
    assert seen[0].fingerprint == CAROL.fingerprint and seen[0].rollover is None
    seen.clear()
    run(Initiator(BOB, BACKEND), Listener(ALICE, BACKEND), decide=decide)
    assert seen[0].rollover is None


def test_layout_without_statement_is_unchanged():
    """No statement: the field is left out, so M2 and M3 keep their v1 sizes (7 RESP datagrams)."""
    result = run(Initiator(ALICE, BACKEND), Listener(BOB, BACKEND))
    kinds = [wire.parse_prefix(d)[0] for _, d in result.capture]
    assert kinds.count(PacketType.RESP) == 7 and kinds.count(PacketType.AUTH) == 7
    assert hs._encode_sealed(b"b", b"s", b"cccc") == b"\x00\x01b\x00\x01scccc"
    assert hs._decode_sealed(b"\x00\x01b\x00\x01s\x00\x00cccc", 4) == (b"b", b"s", b"", b"cccc")  # empty field
    assert hs._decode_sealed(b"\x00\x01b\x00\x01s\x00\x02rrcccc", 4) == (b"b", b"s", b"rr", b"cccc")
    for bad in (b"\x00\x01b\x00\x01s\x00cccc", b"\x00\x01b\x00\x01s\x00\x03rrcccc"):
        with pytest.raises(wire.WireError):
            hs._decode_sealed(bad, 4)


def test_rollover_over_a_lossy_network():
    import random
    for seed in range(3):
        listener = Listener(BOB, BACKEND, rollover=STATEMENT.encode())
        initiator = Initiator(ALICE, BACKEND, expected_bundle=BOB_OLD.bundle, rollover=STATEMENT.encode())
        result = run(initiator, listener, random.Random(seed), loss=0.2, dup=0.2, reorder=0.5, until=60.0)
        (done,) = events(result, "I", Established)
        assert done.rollover == STATEMENT and listener.stats["responses"] == 1


# -- real daemons ---------------------------------------------------------------------------
def call(daemon, command, action=None, data=None):
    reply = daemon.request(command, action, data)
    assert reply["success"], (command, action, reply, daemon.stderr_text()[-2000:])
    return reply["data"]


def identity_of(daemon):
    return call(daemon, "status")["identity"]


def p2p_port(daemon):
    return call(daemon, "status")["p2p"]["port"]


def bob_state(alice, name="Bob"):
    return next(p for p in call(alice, "p2p", "peers") if p["name"] == name)["state"]


def bodies(daemon, peer):
    return [(m["direction"], m["body"]) for m in call(daemon, "p2p", "history", {"peer": peer})]


def talk(alice, bob, tag):
    """One message each way; both delivered."""
    call(alice, "p2p", "send_message", {"peer": "Bob", "message": f"a->b {tag}"})
    call(bob, "p2p", "send_message", {"peer": "Alice", "message": f"b->a {tag}"})
    wait_for(lambda: ("in", f"a->b {tag}") in bodies(bob, "Alice"), message=f"a->b {tag}")
    wait_for(lambda: ("in", f"b->a {tag}") in bodies(alice, "Bob"), message=f"b->a {tag}")


@pytest.fixture
def tmp():
    path = tempfile.mkdtemp(prefix="chatp2p-rollover-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def befriend(tmp):
    """Alice and Bob, contacts by ID, connected once (so each stores the other's bundle)."""
    alice = Daemon(os.path.join(tmp, "a"), "--keepalive-interval", "2").start()
    bob = Daemon(os.path.join(tmp, "b"), "--keepalive-interval", "2").start()
    id_a, id_b = identity_of(alice)["fingerprint"], identity_of(bob)["fingerprint"]
    call(alice, "contacts", "add", {"peer": "Bob", "public_key": id_b})
    call(bob, "contacts", "add", {"peer": "Alice", "public_key": id_a})
    call(alice, "p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{p2p_port(bob)}"})
    call(alice, "contacts", "negotiate_keys", {"peer": "Bob"})
    call(alice, "contacts", "verify", {"peer": "Bob"})
    talk(alice, bob, "before")
    return alice, bob, id_a, id_b


def test_contact_follows_rollover_as_initiator_and_impostor_is_refused(tmp):
    alice, bob, id_a, old_b = befriend(tmp)
    carol = None
    events = Events(alice)
    bob_events = Events(bob)
    try:
        port_b = p2p_port(bob)
        rotated = call(bob, "crypto", "rotate_identity")
        new_b = rotated["fingerprint"]
        assert rotated["previous_fingerprint"] == old_b and new_b != old_b
        assert identity_of(bob)["fingerprint"] == new_b
        assert bob_events.wait_data("identity_changed", where=lambda d: d == {"fingerprint": new_b,
                                                                   "previous_fingerprint": old_b})
        for name in ("identity.key", "identity.previous.key", "rollover.stmt"):
            assert stat.S_IMODE(os.stat(os.path.join(bob.data_dir, name)).st_mode) == 0o600
        wait_for(lambda: bob_state(alice) != "connected", message="Bob's session to close")

        reply = call(alice, "contacts", "negotiate_keys", {"peer": "Bob"})   # Alice reconnects: follows
        assert reply["fingerprint"] == new_b
        shown = call(alice, "contacts", "show", {"peer": "Bob"})
        assert shown["fingerprint"] == new_b and shown["verified"] is True
        assert ident.Bundle.from_base64(shown["public_key"]).fingerprint() == ident.parse_id(new_b)
        (update,) = events.wait_data("contact_updated", where=lambda d: d.get("reason") == "key_rollover")
        assert update["name"] == "Bob" and update["fingerprint"] == new_b
        assert update["previous_fingerprint"] == old_b
        assert not events.wait_data("key_mismatch", 0.1, raise_=False)
        talk(alice, bob, "after")
        assert call(bob, "contacts", "show", {"peer": "Alice"})["fingerprint"] == id_a

        # Carol, another key, answers at Bob's address: no statement -> key mismatch
        bob.stop()
        carol = Daemon(os.path.join(tmp, "c"), "--p2p-port", str(port_b)).start()
        id_c = identity_of(carol)["fingerprint"]
        wait_for(lambda: bob_state(alice) != "connected", timeout=15, message="Alice to notice Bob left")
        reply = alice.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 5})
        assert not reply["success"] and "Key mismatch" in reply["error"], reply
        assert events.wait_data("key_mismatch", where=lambda d: d["got"] == id_c and d["expected"] == new_b)
        # Carol's own genuine rollover is signed by her old key, not Bob's: still a mismatch
        rotated_c = call(carol, "crypto", "rotate_identity")
        reply = alice.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 5})
        assert not reply["success"] and "Key mismatch" in reply["error"], reply
        assert events.wait_data("key_mismatch", where=lambda d: d["got"] == rotated_c["fingerprint"])
        # ... and reaching Alice with it, Carol is a stranger, not Bob
        call(carol, "contacts", "add", {"peer": "Alice", "public_key": id_a})
        call(carol, "p2p", "connect", {"peer": "Alice", "address": f"127.0.0.1:{p2p_port(alice)}"})
        assert events.wait_data("contact_request", where=lambda d: d["fingerprint"] == rotated_c["fingerprint"])
        assert call(alice, "contacts", "show", {"peer": "Bob"})["fingerprint"] == new_b
        assert len(events.wait_data("contact_updated", 0.1, where=lambda d: d.get("reason") == "key_rollover")) == 1
    finally:
        events.close()
        bob_events.close()
        for daemon in (alice, bob, carol):
            if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()


def test_contact_follows_rollover_as_responder_after_restart(tmp):
    alice, bob, id_a, old_b = befriend(tmp)
    events = Events(alice)
    try:
        new_b = call(bob, "crypto", "rotate_identity")["fingerprint"]
        bob.stop()
        bob.start()  # the new identity and its statement survive a restart
        assert identity_of(bob)["fingerprint"] == new_b
        wait_for(lambda: bob_state(alice) != "connected", timeout=15, message="Alice to notice Bob left")
        # Bob writes first: his handshake reaches Alice's listener with the statement in M3
        call(bob, "p2p", "send_message", {"peer": "Alice", "message": "new key, same Bob"})
        wait_for(lambda: ("in", "new key, same Bob") in bodies(alice, "Bob"), timeout=15, message="delivery")
        (update,) = events.wait_data("contact_updated", where=lambda d: d.get("reason") == "key_rollover")
        assert update["previous_fingerprint"] == old_b and update["fingerprint"] == new_b
        assert not events.wait_data("contact_request", 0.1, raise_=False)   # not taken for a stranger
        shown = call(alice, "contacts", "show", {"peer": "Bob"})
        assert shown["fingerprint"] == new_b and shown["verified"] is True
        session = call(alice, "contacts", "negotiate_keys", {"peer": "Bob"})
        assert session["role"] == "responder" and session["fingerprint"] == new_b
        assert call(alice, "status")["p2p"]["counters"]["rollover_followed"] == 1
        call(alice, "p2p", "send_message", {"peer": "Bob", "message": "welcome back"})
        wait_for(lambda: ("in", "welcome back") in bodies(bob, "Alice"), message="reply")
        assert [p["name"] for p in call(alice, "p2p", "peers")] == ["Bob"]
    finally:
        events.close()
        for daemon in (alice, bob):
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
