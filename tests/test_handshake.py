"""handshake: cookies, the Initiator and Listener/Responder state machines, with real keys.

Two in-memory parties exchange datagrams through a simulated network (loss, duplication,
reordering, on a simulated clock); the initiator retransmits its pending flight on timeout,
as the I/O layer will."""

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.crypto import handshake as hs, pqc
from chatp2p_core.codec import wire
from chatp2p_core.crypto.handshake import (
    Authenticated,
    CookieJar,
    Established,
    FailReason,
    Failed,
    Initiator,
    InitiatorState,
    Listener,
    ListenerConfig,
    ResponderState,
)
from chatp2p_core.crypto.identity import Identity
from chatp2p_core.crypto.session import Role, Session, Suite
from chatp2p_core.codec.wire import Msg, PacketType, Ping

ADDR_I = ("198.51.100.7", 40000)
ADDR_R = ("203.0.113.9", 50000)
RTO = 0.25

BACKEND = None
ALICE = BOB = CAROL = None


def setup_module():
    global BACKEND, ALICE, BOB, CAROL
    BACKEND = pqc.select_backend()
    ALICE, BOB, CAROL = (Identity.generate(BACKEND) for _ in range(3))


@dataclass
class Run:
    events_i: list = field(default_factory=list)
    events_r: list = field(default_factory=list)
    capture: list = field(default_factory=list)  # (direction, datagram), everything sent
    retransmits: int = 0
    now: float = 0.0


def run(initiator, listener, rnd=None, loss=0.0, dup=0.0, reorder=0.0, decide=None, until=20.0, drop=None):
    """Drive one handshake to its end on a simulated clock; ``decide(event) -> bool`` accepts."""
    result = Run()
    queue = []
    seq = 0

    def send(datagrams, to, now):
        nonlocal seq
        for data in datagrams:
            result.capture.append((to, data))
            if drop is not None and drop(to, data):
                continue
            if rnd is not None and rnd.random() < loss:
                continue
            copies = 2 if rnd is not None and rnd.random() < dup else 1
            for _ in range(copies):
                delay = 0.01 + (rnd.random() * 0.08 if rnd is not None and rnd.random() < reorder else 0.0)
                seq += 1
                heapq.heappush(queue, (now + delay, seq, to, data))

    now = 0.0
    send(initiator.start(now), "R", now)
    deadline = now + RTO
    while not initiator.done and now < until:
        if queue and queue[0][0] <= deadline:
            now, _, to, data = heapq.heappop(queue)
            if to == "R":
                out = listener.receive(data, ADDR_I, now)
                send(out.send, "I", now)
                if out.event is not None:
                    result.events_r.append(out.event)
                    if isinstance(out.event, Authenticated):
                        if decide is None or decide(out.event):
                            accepted = out.event.responder.accept(now)
                            result.events_r.append(accepted.event)
                            send(accepted.send, "I", now)
                        else:
                            out.event.responder.reject()
            else:
                out = initiator.receive(data, now)
                if out.event is not None:
                    result.events_i.append(out.event)
                if out.send:
                    deadline = now + RTO
                send(out.send, "R", now)
        else:
            now = deadline
            result.retransmits += 1
            send(initiator.pending, "R", now)
            deadline = now + RTO
    result.now = now
    return result


def established(events):
    found = [e for e in events if isinstance(e, Established)]
    assert len(found) == 1, events
    return found[0]


def check_pair(result):
    ei, er = established(result.events_i), established(result.events_r)
    assert ei.fingerprint == BOB.fingerprint and er.fingerprint == ALICE.fingerprint
    ki, kr = ei.keys, er.keys
    assert ki.role is Role.INITIATOR and kr.role is Role.RESPONDER
    assert ki.send_secret == kr.recv_secret and ki.recv_secret == kr.send_secret
    assert ki.send_secret != ki.recv_secret  # one key per direction
    assert ki.local_conn_id == kr.peer_conn_id and ki.peer_conn_id == kr.local_conn_id
    assert ki.transcript_hash == kr.transcript_hash
    return ki, kr


def test_full_handshake_then_data_both_ways():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=BOB.fingerprint)
    result = run(initiator, listener)
    ki, kr = check_pair(result)
    assert initiator.state is InitiatorState.ESTABLISHED and initiator.pending == []
    assert result.retransmits == 0
    assert all(len(d) <= wire.MAX_DATAGRAM for _, d in result.capture)
    kinds = [wire.parse_prefix(d)[0] for _, d in result.capture]
    assert kinds[:2] == [PacketType.HELLO, PacketType.COOKIE] and kinds[-1] == PacketType.DONE
    assert kinds.count(PacketType.INIT) == 2 and kinds.count(PacketType.RESP) == 7
    a, b = Session(ki, 1.0), Session(kr, 1.0)
    assert b.open(a.seal([Ping(5)], 1.0)[0], 1.0) == [Ping(5)]
    assert a.open(b.seal([wire.Pong(5)], 1.0)[0], 1.0) == [wire.Pong(5)]


def test_capture_shows_nothing_identifying():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND)
    result = run(initiator, listener)
    ki, kr = check_pair(result)
    text = "Meet me at the old mill, Bob".encode()
    capture = [d for _, d in result.capture]
    capture += Session(ki, 0.0).seal([Msg(b"m" * 16, 1, 0, len(text), 0, text)], 0.0)
    blob = b"".join(capture)
    for who in (ALICE, BOB):
        bundle = who.bundle.encode()
        for pos in range(0, len(bundle) - 16, 16):
            assert bundle[pos : pos + 16] not in blob
        assert who.fingerprint[:12] not in blob
        assert who.id.encode() not in blob and who.short_id.encode() not in blob
    assert text not in blob and b"old mill" not in blob


@pytest.mark.parametrize("seed", range(6))
def test_lossy_duplicating_reordering_network(seed):
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=BOB.fingerprint)
    result = run(initiator, listener, random.Random(seed), loss=0.25, dup=0.25, reorder=0.5, until=60.0)
    check_pair(result)
    assert listener.stats["responses"] == 1  # M2 computed once, only resent afterwards
    assert all(len(d) <= wire.MAX_DATAGRAM for _, d in result.capture)


def test_duplicates_are_idempotent():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND)
    events = []

    def deliver(datagrams, to, now):
        for data in datagrams:
            for _ in range(3):
                if to == "R":
                    out = listener.receive(data, ADDR_I, now)
                    if isinstance(out.event, Authenticated):
                        events.append(out.event)
                        accepted = out.event.responder.accept(now)
                        deliver(accepted.send, "I", now)
                else:
                    out = initiator.receive(data, now)
                    if out.event is not None:
                        events.append(out.event)
                deliver(out.send, "R" if to == "I" else "I", now)

    deliver(initiator.start(0.0), "R", 0.0)
    assert [type(e) for e in events] == [Authenticated, Established]
    assert listener.stats["responses"] == 1 and listener.stats["cookies"] == 3
    assert initiator.stats["dropped_duplicate"] >= 2


def test_retransmitted_auth_gets_done_again():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND)
    lost = []

    def drop_first_done(to, data):
        if wire.parse_prefix(data)[0] == PacketType.DONE and not lost:
            lost.append(data)
            return True
        return False

    result = run(initiator, listener, drop=drop_first_done)
    check_pair(result)
    assert lost and result.retransmits == 1 and listener.stats["resent"] == 1
    assert sum(isinstance(e, Established) for e in result.events_r) == 1


def test_hello_gets_a_small_stateless_reply():
    listener = Listener(BOB, BACKEND)
    hello = wire.Hello(b"c" * 8, b"n" * 16).encode()
    out = listener.receive(hello, ADDR_I, 0.0)
    assert len(out.send) == 1 and len(out.send[0]) <= 3 * len(hello) and len(out.send[0]) <= len(hello)
    assert len(listener) == 0 and listener.buffered_bytes() == 0
    short = listener.receive(hello[:-1], ADDR_I, 0.0)
    assert short.send == [] and short.dropped == "malformed"


def init_fragments(cookie=None, address=ADDR_I, now=0.0, listener=None):
    """A real M1 flight; with ``cookie`` given, its cookie replaced."""
    listener = Listener(BOB, BACKEND) if listener is None else listener
    initiator = Initiator(ALICE, BACKEND)
    (hello,) = initiator.start(now)
    (cookie_packet,) = listener.receive(hello, address, now).send
    flight = initiator.receive(cookie_packet, now).send
    if cookie is not None:
        flight = [d[:10] + cookie + d[26:] for d in flight]
    return listener, initiator, flight


def test_init_without_a_valid_cookie_allocates_nothing():
    listener, initiator, flight = init_fragments()
    for bad in (bytes(16), flight[0][10:26][::-1]):
        for data in (d[:10] + bad + d[26:] for d in flight):
            out = listener.receive(data, ADDR_I, 1.0)
            assert out.send == [] and out.dropped == "bad_cookie"
    for data in flight:  # the genuine cookie from another address
        assert listener.receive(data, ("198.51.100.8", 40000), 1.0).dropped == "bad_cookie"
        assert listener.receive(data, (ADDR_I[0], 40001), 1.0).dropped == "bad_cookie"
    other = Initiator(ALICE, BACKEND)  # another connection id with this cookie
    for data in flight:
        assert listener.receive(data[:2] + other.conn_id + data[10:], ADDR_I, 1.0).dropped == "bad_cookie"
    assert listener.buffered_bytes() == 0 and len(listener) == 0
    assert listener.stats["dropped_bad_cookie"] == 10
    out = listener.receive(flight[0], ADDR_I, 1.0)
    assert out.send == [] and out.dropped is None and listener.buffered_bytes() == hs.M1_LEN
    assert len(listener.receive(flight[1], ADDR_I, 1.0).send) == 7


def test_cookie_lifetime_and_binding():
    jar = CookieJar(rotation=120.0)
    cookie = jar.make(ADDR_I, b"c" * 8, 100.0)
    assert jar.check(ADDR_I, b"c" * 8, cookie, 100.0)
    assert jar.check(ADDR_I, b"c" * 8, cookie, 239.0)  # next rotation: previous secret kept
    assert not jar.check(ADDR_I, b"d" * 8, cookie, 100.0)
    assert not jar.check((ADDR_I[0], 1), b"c" * 8, cookie, 100.0)
    assert not jar.check(ADDR_I, b"c" * 8, cookie, 240.0)  # two rotations later
    assert not jar.check(("x", 99999), b"c" * 8, cookie, 240.0)  # unusable address: just False
    jar2 = CookieJar()
    assert not jar2.check(ADDR_I, b"c" * 8, cookie, 100.0)  # another responder's secret


def test_expired_cookie_stalls_until_a_new_initiator():
    listener, initiator, flight = init_fragments(now=0.0)
    for data in flight:
        assert listener.receive(data, ADDR_I, 400.0).dropped == "bad_cookie"
    assert listener.buffered_bytes() == 0


def test_key_mismatch_aborts_before_revealing_the_initiator():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BACKEND, expected_fingerprint=CAROL.fingerprint)
    result = run(initiator, listener)
    (failed,) = result.events_i
    assert isinstance(failed, Failed) and failed.reason is FailReason.KEY_MISMATCH
    assert failed.bundle.fingerprint() == BOB.fingerprint
    assert initiator.state is InitiatorState.FAILED and initiator.pending == [] and initiator.keys is None
    kinds = [wire.parse_prefix(d)[0] for to, d in result.capture if to == "R"]
    assert PacketType.AUTH not in kinds  # nothing about Alice was sent
    assert result.events_r == []
    # late RESP duplicates are ignored: nothing more is ever sent
    resp = [d for to, d in result.capture if to == "I" and wire.parse_prefix(d)[0] == PacketType.RESP]
    assert all(initiator.receive(d, 5.0).send == [] for d in resp)


def test_stranger_is_reported_and_can_be_rejected():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(CAROL, BACKEND)
    seen = []

    def decide(event):
        seen.append(event)
        return False  # blocked, or unknown and refused

    result = run(initiator, listener, decide=decide, until=3.0)
    (event,) = seen
    assert event.fingerprint == CAROL.fingerprint and event.bundle == CAROL.bundle
    assert event.responder.state is ResponderState.REJECTED and event.responder.pending == []
    assert initiator.state is InitiatorState.WAIT_DONE  # its caller times out
    kinds = [wire.parse_prefix(d)[0] for to, d in result.capture if to == "I"]
    assert PacketType.DONE not in kinds
    assert result.retransmits >= 5 and listener.stats["dropped_duplicate"] > 0


def test_accept_and_reject_are_state_checked():
    listener = Listener(BOB, BACKEND)
    result = run(Initiator(ALICE, BACKEND), listener)
    responder = next(e for e in result.events_r if isinstance(e, Authenticated)).responder
    with pytest.raises(RuntimeError):
        responder.accept(1.0)
    responder.reject()  # too late to reject: no effect
    assert responder.state is ResponderState.ESTABLISHED and responder.established_at is not None


class BadSigner:
    """A backend whose signatures never verify: an impostor without the private key."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def sign(self, private, message):
        sig = bytearray(self._backend.sign(private, message))
        sig[100] ^= 1
        return bytes(sig)


def test_bad_responder_signature_fails_the_initiator():
    listener = Listener(BOB, BadSigner(BACKEND))
    initiator = Initiator(ALICE, BACKEND)
    result = run(initiator, listener)
    (failed,) = result.events_i
    assert failed.reason is FailReason.BAD_SIGNATURE and initiator.pending == []


def test_bad_initiator_signature_fails_the_responder():
    listener = Listener(BOB, BACKEND)
    initiator = Initiator(ALICE, BadSigner(BACKEND))
    result = run(initiator, listener, until=2.0)
    assert [type(e) for e in result.events_r] == [Failed]
    assert result.events_r[0].reason is FailReason.BAD_SIGNATURE


def test_corrupted_fragments_are_dropped_and_the_resend_completes():
    listener, initiator, flight = init_fragments()
    m2 = []
    for data in flight:
        m2 += listener.receive(data, ADDR_I, 0.0).send
    corrupted = bytearray(m2[3])
    corrupted[500] ^= 0x40
    for data in [bytes(corrupted)] + m2[:3] + m2[4:]:
        out = initiator.receive(data, 0.0)
    assert out.dropped == "auth" and initiator.state is InitiatorState.WAIT_RESP
    resent = []
    for data in flight:  # the initiator's retransmission makes the responder resend M2
        resent += listener.receive(data, ADDR_I, 1.0).send
    assert resent == m2
    for data in resent:
        out = initiator.receive(data, 1.0)
    assert initiator.state is InitiatorState.WAIT_DONE and len(out.send) == 7
    # a corrupted M3 is dropped too; the genuine one then authenticates
    m3 = out.send
    bad = bytearray(m3[6])
    bad[-1] ^= 1
    for data in m3[:6] + [bytes(bad)]:
        out = listener.receive(data, ADDR_I, 1.0)
    assert out.dropped == "auth"
    for data in m3:
        out = listener.receive(data, ADDR_I, 2.0)
    assert isinstance(out.event, Authenticated)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hostile_datagrams_never_raise(data):
    listener, initiator, flight = init_fragments()
    m2 = []
    for d in flight:
        m2 += listener.receive(d, ADDR_I, 0.0).send
    samples = flight + m2 + [wire.Hello(b"c" * 8, b"n" * 16).encode(), initiator.pending[0]]
    for _ in range(6):
        base = data.draw(st.sampled_from(samples))
        choice = data.draw(st.integers(0, 2))
        if choice == 0:
            mutated = data.draw(st.binary(max_size=1300))
        elif choice == 1:
            mutated = base[: data.draw(st.integers(0, len(base)))]
        else:
            pos = data.draw(st.integers(0, len(base) - 1))
            mutated = base[:pos] + bytes([base[pos] ^ data.draw(st.integers(1, 255))]) + base[pos + 1 :]
        listener.receive(mutated, ADDR_I, 0.5)
        initiator.receive(mutated, 0.5)
        listener.receive(mutated, ADDR_R, 0.5)


def test_listener_limits_per_host():
    listener = Listener(BOB, BACKEND, ListenerConfig(max_responders_per_host=2))
    results = []
    for _ in range(3):
        _, initiator, flight = init_fragments(listener=listener)
        results.append([listener.receive(d, ADDR_I, 0.0) for d in flight][-1])
    assert [len(r.send) for r in results] == [7, 7, 0] and results[2].dropped == "busy_host"
    assert len(listener) == 2 and listener.buffered_bytes() == 0
    _, _, flight = init_fragments(listener=listener, address=ADDR_R)  # another address still served
    assert len([listener.receive(d, ADDR_R, 0.0) for d in flight][-1].send) == 7


def test_established_responders_do_not_count_toward_the_limits():
    # A peer reconnecting often (restarts, `p2p start`) from one address: each finished
    # handshake used to hold a slot for handshake_timeout, and the 9th in 30 s was dropped.
    listener = Listener(BOB, BACKEND, ListenerConfig(max_responders=3, max_responders_per_host=2, reserved_responders=0))
    for _ in range(6):
        check_pair(run(Initiator(ALICE, BACKEND), listener))
    assert len(listener) == 1          # the newest established one per peer, for a lost DONE
    carol = run(Initiator(CAROL, BACKEND), listener)
    assert established(carol.events_r).fingerprint == CAROL.fingerprint and established(carol.events_i)
    assert len(listener) == 2
    # Handshakes in progress still count: two from one address, a third is dropped...
    outs = []
    for _ in range(3):
        _, _, flight = init_fragments(listener=listener)
        outs.append([listener.receive(d, ADDR_I, 0.0) for d in flight][-1])
    assert [len(o.send) for o in outs] == [7, 7, 0] and outs[2].dropped == "busy_host"
    # ...and three in all (max_responders), the established ones not included.
    _, _, flight = init_fragments(listener=listener, address=ADDR_R)
    assert len([listener.receive(d, ADDR_R, 0.0) for d in flight][-1].send) == 7
    _, _, flight = init_fragments(listener=listener, address=("192.0.2.1", 1))
    assert [listener.receive(d, ("192.0.2.1", 1), 0.0) for d in flight][-1].dropped == "busy"
    # A rejected handshake keeps counting until it expires.
    listener = Listener(BOB, BACKEND, ListenerConfig(max_responders_per_host=1))
    run(Initiator(ALICE, BACKEND), listener, decide=lambda event: False, until=1.0)
    _, _, flight = init_fragments(listener=listener)
    assert [listener.receive(d, ADDR_I, 1.0) for d in flight][-1].dropped == "busy_host"
    listener.expire(100.0)
    assert len(listener) == 0


def test_established_responders_are_bounded():
    listener = Listener(BOB, BACKEND, ListenerConfig(max_established=1))
    check_pair(run(Initiator(ALICE, BACKEND), listener))
    established(run(Initiator(CAROL, BACKEND), listener).events_r)
    assert len(listener) == 1


def test_init_buffers_are_bounded():
    listener = Listener(BOB, BACKEND, ListenerConfig(max_init_buffers=3, reserved_init_buffers=0))
    outs = []
    for port in range(5):
        address = ("198.51.100.1", 1000 + port)
        _, _, flight = init_fragments(listener=listener, address=address)
        outs.append(listener.receive(flight[0], address, 0.0))  # first fragment only
    assert [o.dropped for o in outs] == [None, None, None, "busy_or_inconsistent", "busy_or_inconsistent"]
    assert listener.buffered_bytes() == 3 * hs.M1_LEN
    listener.expire(100.0)
    assert listener.buffered_bytes() == 0


def test_responders_expire_and_auth_must_come_from_the_same_address():
    listener = Listener(BOB, BACKEND, ListenerConfig(handshake_timeout=10.0))
    _, initiator, flight = init_fragments(listener=listener)
    m2 = [d for f in flight for d in listener.receive(f, ADDR_I, 0.0).send]
    m3 = [d for r in m2 for d in initiator.receive(r, 0.0).send]
    assert listener.receive(m3[0], ADDR_R, 1.0).dropped == "wrong_address"
    assert len(listener) == 1
    assert listener.receive(m3[0], ADDR_I, 10.0).dropped == "unknown_conn"
    assert len(listener) == 0 and listener.buffered_bytes() == 0


def test_unsupported_suite_is_dropped():
    listener = Listener(BOB, BACKEND, ListenerConfig(suites=(Suite.AES_256_GCM,)))
    initiator = Initiator(ALICE, BACKEND, suite=Suite.CHACHA20_POLY1305)
    result = run(initiator, listener, until=1.0)
    assert listener.stats["dropped_unsupported"] >= 1 and len(listener) == 0
    chacha = Listener(BOB, BACKEND)
    ki, _ = check_pair(run(Initiator(ALICE, BACKEND, suite=Suite.CHACHA20_POLY1305), chacha))
    assert ki.suite is Suite.CHACHA20_POLY1305


@pytest.mark.parametrize("size", [wire.MIN_DATAGRAM, 9000])
def test_other_datagram_sizes(size):
    listener = Listener(BOB, BACKEND, ListenerConfig(max_datagram=size))
    initiator = Initiator(ALICE, BACKEND, max_datagram=size)
    result = run(initiator, listener)
    check_pair(result)
    assert all(len(d) <= size for _, d in result.capture)
    if size == 9000:
        assert len(result.capture) == 6  # HELLO, COOKIE, INIT, RESP, AUTH, DONE


def test_keep_outgoing_is_antisymmetric():
    a, b = ALICE.fingerprint, BOB.fingerprint
    assert hs.keep_outgoing(a, b) != hs.keep_outgoing(b, a)


class Node:
    """The simultaneous-open policy a node applies (see handshake.accept_incoming)."""

    def __init__(self, identity, address):
        self.identity = identity
        self.address = address
        self.listener = Listener(identity, BACKEND)
        self.outgoing = None
        self.sessions = {}  # peer fingerprint -> SessionKeys (the newest replaces)

    def connect(self, peer_fp, now):
        self.outgoing = Initiator(self.identity, BACKEND, expected_fingerprint=peer_fp)
        return self.outgoing.start(now)

    def receive(self, data, source, now):
        ptype, conn_id = wire.parse_prefix(data)
        if ptype in (PacketType.HELLO, PacketType.INIT, PacketType.AUTH):
            out = self.listener.receive(data, source, now)
            send = list(out.send)
            if isinstance(out.event, Authenticated):
                peer = out.event.fingerprint
                if hs.accept_incoming(self.identity.fingerprint, peer, self.outgoing, now):
                    if self.outgoing is not None and not self.outgoing.done:
                        self.outgoing.abandon()
                    accepted = out.event.responder.accept(now)
                    self.sessions[peer] = accepted.event.keys
                    send += accepted.send
                else:
                    out.event.responder.reject()
            return send
        if self.outgoing is None or conn_id != self.outgoing.conn_id:
            return []
        out = self.outgoing.receive(data, now)
        if isinstance(out.event, Established):
            self.sessions[out.event.fingerprint] = out.event.keys
        return out.send


@pytest.mark.parametrize("seed", range(5))
def test_simultaneous_open_converges_on_one_session(seed):
    rnd = random.Random(seed)
    a, b = Node(ALICE, ADDR_I), Node(BOB, ADDR_R)
    nodes = {ADDR_I: a, ADDR_R: b}
    queue, seq = [], 0

    def send(datagrams, src, dst, now):
        nonlocal seq
        for data in datagrams:
            seq += 1
            heapq.heappush(queue, (now + 0.005 + rnd.random() * 0.02, seq, src, dst, data))

    send(a.connect(BOB.fingerprint, 0.0), ADDR_I, ADDR_R, 0.0)
    send(b.connect(ALICE.fingerprint, rnd.random() * 0.03), ADDR_R, ADDR_I, 0.0)
    while queue:
        now, _, src, dst, data = heapq.heappop(queue)
        send(nodes[dst].receive(data, src, now), dst, src, now)
    ka, kb = a.sessions[BOB.fingerprint], b.sessions[ALICE.fingerprint]
    assert ka.send_secret == kb.recv_secret and ka.local_conn_id == kb.peer_conn_id
    lower = a if ALICE.fingerprint < BOB.fingerprint else b
    assert lower.sessions[(BOB if lower is a else ALICE).fingerprint].role is Role.INITIATOR
    sa, sb = Session(ka, 1.0), Session(kb, 1.0)
    assert sb.open(sa.seal([Ping(1)], 1.0)[0], 1.0) == [Ping(1)]


def test_replayed_init_gets_a_bounded_number_of_resends():
    listener, _, flight = init_fragments(listener=Listener(BOB, BACKEND, ListenerConfig(max_resends=3)))
    first = [d for f in flight for d in listener.receive(f, ADDR_I, 0.0).send]
    assert len(first) == 7
    # One fragment (its cookie is visible on the path: anyone there can replay it) buys nothing.
    alone = [len(listener.receive(flight[0], ADDR_I, 1.0 + 0.05 * i).send) for i in range(20)]
    assert sum(alone) == 0
    # An INIT whose fragments are not the ones M2 answered buys nothing either.
    forged = flight[1][:-1] + bytes([flight[1][-1] ^ 1])
    assert listener.receive(flight[0], ADDR_I, 2.0).send == []
    assert listener.receive(forged, ADDR_I, 2.0).dropped == "duplicate_mismatch"
    # The whole INIT again (the initiator lost M2): M2 again, at most max_resends times.
    resent = [sum(len(listener.receive(d, ADDR_I, 3.0 + 0.2 * i).send) for d in flight) for i in range(20)]
    assert resent.count(7) == 3 and sum(resent) == 21
    assert listener.stats["dropped_resend_limit"] > 0 and listener.stats["responses"] == 1


def test_one_host_on_many_ports_cannot_shut_contacts_out():
    """Limits count hosts, not (host, port): one host with 64 cookies, each on its own port,
    sending only the first INIT fragment of each, and then whole INITs from 32 ports, leaves
    room for a stranger on another host and for a contact's known host."""
    contact_host = "203.0.113.50"
    listener = Listener(BOB, BACKEND, is_known_host=lambda host: host == contact_host)
    attacker = "198.51.100.66"
    for port in range(64):                                  # half-open INITs: buffers
        address = (attacker, 20000 + port)
        _, _, flight = init_fragments(listener=listener, address=address)
        listener.receive(flight[0], address, 0.0)
    for port in range(32):                                  # whole INITs: responders
        address = (attacker, 30000 + port)
        _, _, flight = init_fragments(listener=listener, address=address)
        for data in flight:
            listener.receive(data, address, 0.0)
    assert listener.buffered_bytes() <= 2 * ListenerConfig().max_responders_per_host * hs.M1_LEN
    assert len(listener) <= ListenerConfig().max_responders_per_host
    stranger = run(Initiator(CAROL, BACKEND), listener)       # ADDR_I: another host
    assert established(stranger.events_r).fingerprint == CAROL.fingerprint
    # A flood from many unknown hosts fills the shared part; the contact's host still gets in.
    for number in range(300):
        address = (f"192.0.2.{number % 250}", 40000 + number)
        _, _, flight = init_fragments(listener=listener, address=address)
        for data in flight:
            listener.receive(data, address, 0.0)
    assert listener.stats["dropped_busy"] > 0
    contact = Initiator(ALICE, BACKEND, expected_fingerprint=BOB.fingerprint)
    result = run_from(contact, listener, (contact_host, 41000))
    assert established(result.events_r).fingerprint == ALICE.fingerprint


def run_from(initiator, listener, address, now=0.0):
    """A handshake without loss from `address`, accepting the initiator."""
    out_i = initiator.start(now)
    events_r = []
    for _ in range(20):
        to_i = []
        for data in out_i:
            out = listener.receive(data, address, now)
            to_i += out.send
            if out.event is not None:
                events_r.append(out.event)
                if isinstance(out.event, Authenticated):
                    accepted = out.event.responder.accept(now)
                    to_i += accepted.send
                    events_r.append(accepted.event)
        out_i = [d for data in to_i for d in initiator.receive(data, now).send]
        if not out_i:
            break
    return Run(events_r=events_r)


def test_handshake_cpu_per_side_is_under_target():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bench_handshake.py"
    spec = importlib.util.spec_from_file_location("bench_handshake", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(rounds=5)
    print(result)
    assert result["initiator_median_ms"] < 10.0 and result["responder_median_ms"] < 10.0


def test_ephemeral_kem_keys_are_not_cached_beyond_their_handshake():
    """The initiator's ephemeral X-Wing key lives in the handshake only: the backend's key
    cache, which keeps derived keys for speed, holds nothing but the static identity keys."""
    backend = pqc.select_backend()
    alice, bob = Identity.generate(backend), Identity.generate(backend)
    for _ in range(3):
        initiator = Initiator(alice, backend, expected_fingerprint=bob.fingerprint)
        result = run(initiator, Listener(bob, backend))
        assert established(result.events_i).fingerprint == bob.fingerprint
        assert established(result.events_r).fingerprint == alice.fingerprint
        assert initiator._e_key is None
    cached = set(backend._kem._keys._items)
    assert cached <= {alice.kem_seed, bob.kem_seed}, "an ephemeral key outlived its handshake"
