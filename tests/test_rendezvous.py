"""rendezvous: registration and introductions, server and client, in memory with real keys.

The sessions between the nodes and the rendezvous are simulated by handing records over
directly (the session layer has its own tests); everything the server emits is logged, so
the tests can assert over every record a requester ever receives."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.crypto import identity as ident, pqc
from chatp2p_core.codec import wire
from chatp2p_core.net import rendezvous as rv
from chatp2p_core.net.rendezvous import (
    Candidate,
    CandidateType,
    ClientConfig,
    FailCode,
    IntroAnswered,
    IntroFailed,
    IntroReceived,
    IntroTimedOut,
    RecordType,
    Registered,
    RendezvousClient,
    RendezvousError,
    RendezvousServer,
    Role,
    ServerConfig,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T0 = 1_750_000_000.0  # a wall-clock "now" for the clients; the server's clock is the same number
ADDR_A = ("198.51.100.7", 40000)  # requester (Alice), as the rendezvous sees her
ADDR_B = ("203.0.113.9", 50000)  # target (Bob)
ADDR_C = ("192.0.2.33", 41000)  # Carol, a third node
HOST_A = [Candidate(CandidateType.HOST, ("10.0.0.2", 40000))]
HOST_B = [Candidate(CandidateType.HOST, ("10.1.1.5", 50000)),
          Candidate(CandidateType.RELAY, ("192.0.2.200", 3479))]

BACKEND = None
ALICE = BOB = CAROL = None


def setup_module():
    global BACKEND, ALICE, BOB, CAROL
    BACKEND = pqc.select_backend()
    ALICE, BOB, CAROL = (ident.Identity.generate(BACKEND) for _ in range(3))


class Net:
    """One server, one client per identity; records travel instantly unless dropped."""

    def __init__(self, server_config=ServerConfig(), client_config=ClientConfig(), now=T0):
        self.server = RendezvousServer(server_config)
        self.clients = {}
        self.addresses = {}
        self.received = {}  # fingerprint -> every record the server sent it, in order
        self.now = now
        self.client_config = client_config

    def add(self, identity, address):
        fp = identity.fingerprint
        self.clients[fp] = RendezvousClient(identity, self.client_config)
        self.addresses[fp] = address
        self.received[fp] = []
        return self.clients[fp]

    def to_server(self, identity, records, drop=lambda record: False):
        """Send records from a client to the server; what the server emits (not yet delivered)."""
        fp = identity.fingerprint
        out = []
        for record in records:
            out += self.server.on_record(fp, self.addresses[fp], record.rtype, record.body, self.now)
        return [d for d in out if not drop(d)]

    def deliver(self, deliveries):
        """Hand the server's records to the clients; {fingerprint: Output merged}."""
        results = {}
        for fp, record in deliveries:
            self.received[fp].append(record)
            out = self.clients[fp].on_record(record.rtype, record.body, self.now)
            merged = results.setdefault(fp, rv.Output())
            merged.send += out.send
            merged.events += out.events
        return results

    def register(self, identity, ttl=600):
        client = self.clients[identity.fingerprint]
        results = self.deliver(self.to_server(identity, [client.register_record(ttl, self.now)]))
        return results[identity.fingerprint].events


def events_of(results, identity):
    out = results.get(identity.fingerprint)
    return out.events if out else []


def sends_of(results, identity):
    out = results.get(identity.fingerprint)
    return out.send if out else []


def net_ab(**kwargs):
    net = Net(**kwargs)
    net.add(ALICE, ADDR_A)
    net.add(BOB, ADDR_B)
    return net


def request(net, requester, target, bundle=True, candidates=HOST_A):
    client = net.clients[requester.fingerprint]
    rid, records = client.request_intro(target.fingerprint, target.bundle if bundle else None, candidates, net.now)
    return rid, records


# ---------------------------------------------------------------- the whole flow


@pytest.mark.parametrize("seal_request,seal_reply", [(True, True), (False, True), (True, False), (False, False)])
def test_register_intro_accept_reply(seal_request, seal_reply):
    net = net_ab()
    assert net.register(BOB) == [Registered(600, ADDR_B)]
    assert net.clients[BOB.fingerprint].registered(net.now)

    rid, records = request(net, ALICE, BOB, bundle=seal_request)
    assert len(rid) == rv.REQUEST_ID_LEN and all(r.rtype == RecordType.INTRO_REQUEST for r in records)
    results = net.deliver(net.to_server(ALICE, records))
    assert events_of(results, ALICE) == []
    [intro] = events_of(results, BOB)
    assert isinstance(intro, IntroReceived)
    assert (intro.request_id, intro.requester, intro.requester_observed) == (rid, ALICE.fingerprint, ADDR_A)
    assert intro.candidates == tuple(HOST_A) and intro.sealed == seal_request
    assert intro.timestamp_ms == int(T0 * 1000)

    # Bob's node checks that Alice is a contact, then accepts.
    accept = net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle if seal_reply else None, net.now)
    results = net.deliver(net.to_server(BOB, accept))
    assert events_of(results, BOB) == []
    [answer] = events_of(results, ALICE)
    assert answer == IntroAnswered(rid, BOB.fingerprint, ADDR_B, tuple(HOST_B), seal_reply)
    # The request is done: nothing left to retransmit or time out.
    assert net.clients[ALICE.fingerprint].tick(net.now + 30) == rv.Output()


def test_records_fit_a_data_frame_and_round_trip_through_wire():
    net = net_ab()
    net.register(BOB)
    for max_datagram in (wire.MIN_DATAGRAM, wire.MAX_DATAGRAM):
        config = dataclasses.replace(ClientConfig(), max_datagram=max_datagram)
        client = RendezvousClient(ALICE, config)
        eight = [Candidate(CandidateType.HOST, (f"10.0.0.{i + 1}", 1000 + i)) for i in range(rv.MAX_CANDIDATES)]
        _, records = client.request_intro(BOB.fingerprint, BOB.bundle, eight, T0)
        assert 2 <= len(records) <= rv.MAX_PARTS
        for record in records:
            assert wire.record_size(record) <= wire.payload_capacity(max_datagram)
            assert wire.decode_records(wire.encode_record(record)) == [record]
            assert record.rtype in wire.RENDEZVOUS_RECORD_TYPES
    # The largest message, INTRO (server -> target), fits the server's configured datagrams too.
    _, records = request(net, ALICE, BOB, candidates=eight)
    for _, record in net.to_server(ALICE, records):
        assert record.rtype == RecordType.INTRO
        assert wire.record_size(record) <= wire.payload_capacity(wire.MAX_DATAGRAM)


def test_record_types_are_in_the_control_range():
    assert {int(t) for t in RecordType} == set(range(0x10, 0x17))
    assert all(t in wire.RENDEZVOUS_RECORD_TYPES for t in RecordType)
    assert rv.SERVER_BOUND | rv.CLIENT_BOUND == set(RecordType)
    assert not rv.SERVER_BOUND & rv.CLIENT_BOUND


# ---------------------------------------------------------------- what the requester learns


def _scenario(kind):
    """Everything Alice receives from the server while asking for Bob, who is `kind`:
    "refusing" (registered, but Alice is not his contact: his node never accepts) or
    "unregistered"."""
    net = net_ab()
    if kind != "unregistered":
        net.register(BOB)
    bob_events = []
    alice = net.clients[ALICE.fingerprint]
    for _ in range(12):  # past the per-requester cap of 8
        _, records = request(net, ALICE, BOB)
        bob_events += events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    timeouts = []
    for _ in range(8):  # retransmissions, then the timeout
        net.now += 1.5
        tick = alice.tick(net.now)
        timeouts += tick.events
        bob_events += events_of(net.deliver(net.to_server(ALICE, tick.send)), BOB)
    return net, bob_events, timeouts


@pytest.mark.parametrize("kind", ["refusing", "unregistered"])
def test_requester_never_gets_the_target_address_without_acceptance(kind):
    net, bob_events, _ = _scenario(kind)
    assert bool(bob_events) == (kind == "refusing")  # a refusing Bob did hear of every request
    target_bytes = [rv.encode_address(ADDR_B)] + [c.encode()[1:] for c in HOST_B]
    for record in net.received[ALICE.fingerprint]:
        assert record.rtype == RecordType.INTRO_FAILED, record  # nothing else, ever
        assert not any(part in record.body for part in target_bytes)
        assert BOB.fingerprint not in record.body


def test_unregistered_and_refusing_target_look_the_same():
    def transcript(kind):
        net, bob_events, timeouts = _scenario(kind)
        alice = net.received[ALICE.fingerprint]
        return [(r.rtype, r.body[rv.REQUEST_ID_LEN:]) for r in alice], len(timeouts)

    refusing, unregistered = transcript("refusing"), transcript("unregistered")
    assert refusing == unregistered
    records, timeouts = refusing
    # 12 requests, 8 pending slots: the last 4 are refused for the requester's own rate,
    # whether or not Bob is registered; every other request just times out.
    assert [FailCode(body[0]) for _, body in records] == [FailCode.RATE_LIMITED] * 4
    assert timeouts == 8


def test_requester_over_its_cap_looks_like_an_unregistered_target():
    config = dataclasses.replace(ServerConfig(), requester_intros_per_minute=2)
    net = net_ab(server_config=config)
    net.register(BOB)
    intros = 0
    for _ in range(4):
        _, records = request(net, ALICE, BOB)
        results = net.deliver(net.to_server(ALICE, records))
        intros += len(events_of(results, BOB))
        assert events_of(results, ALICE) == [] and sends_of(results, ALICE) == []
    assert intros == 2
    assert net.server.counters["dropped_intro_requester_capped"] == 2
    assert not net.received[ALICE.fingerprint]
    # The allowance refills: 2 per minute.
    net.now += 60
    _, records = request(net, ALICE, BOB)
    assert len(events_of(net.deliver(net.to_server(ALICE, records)), BOB)) == 1


def test_a_flooding_requester_cannot_starve_real_introductions_to_a_target():
    """Introductions are charged to the requester and its IP address, never to the target:
    throwaway identities spend their own allowance, and Carol still reaches Bob."""
    net = net_ab()
    net.add(CAROL, ADDR_C)
    net.register(BOB)
    throwaways = [ident.Identity.generate(BACKEND) for _ in range(3)]
    flood = 0
    for number, throwaway in enumerate(throwaways):
        net.add(throwaway, (ADDR_A[0], 40001 + number))     # one host, several identities
        for _ in range(8):                                 # its 8 pending slots, again and again
            _, records = request(net, throwaway, BOB)
            flood += len(events_of(net.deliver(net.to_server(throwaway, records)), BOB))
        net.now += 11                                      # the requests time out: slots free
        for _ in range(8):
            _, records = request(net, throwaway, BOB)
            flood += len(events_of(net.deliver(net.to_server(throwaway, records)), BOB))
        net.now += 11
    # More introductions than a target-wide cap (20 a minute) would have let through before
    # Carol's, and fewer than the host's own allowance with what refilled meanwhile.
    assert 24 <= flood <= ServerConfig().source_intros_per_minute + net.now - T0
    _, records = request(net, CAROL, BOB)
    assert len(events_of(net.deliver(net.to_server(CAROL, records)), BOB)) == 1


def test_identities_on_one_host_share_its_introduction_allowance():
    config = dataclasses.replace(ServerConfig(), source_intros_per_minute=3)
    net = net_ab(server_config=config)
    net.register(BOB)
    intros = 0
    for number in range(3):
        throwaway = ident.Identity.generate(BACKEND)
        net.add(throwaway, (ADDR_A[0], 40001 + number))
        for _ in range(2):
            _, records = request(net, throwaway, BOB)
            intros += len(events_of(net.deliver(net.to_server(throwaway, records)), BOB))
    assert intros == 3 and net.server.counters["dropped_intro_requester_capped"] == 3
    _, records = request(net, ALICE, BOB)                  # same host: refused as well
    assert events_of(net.deliver(net.to_server(ALICE, records)), BOB) == []
    net.add(CAROL, ADDR_C)                                 # another host: through
    _, records = request(net, CAROL, BOB)
    assert len(events_of(net.deliver(net.to_server(CAROL, records)), BOB)) == 1


def test_requester_learns_its_own_address_only():
    net = net_ab()
    [event] = net.register(ALICE)
    assert event.observed == ADDR_A and net.clients[ALICE.fingerprint].observed == ADDR_A


# ---------------------------------------------------------------- sealing


def test_sealed_blob_hides_candidates_and_opens_only_for_its_recipient_and_request():
    rid = bytes(range(16))
    content = rv.BlobContent(Role.REQUEST, ALICE.fingerprint, BOB.fingerprint, 123, tuple(HOST_A))
    blob = rv.seal_blob(content, rid, BOB.bundle)
    assert blob[0] == rv.SEALED and len(blob) == 1 + 1120 + len(content.encode()) + 16
    assert HOST_A[0].encode() not in blob and ALICE.fingerprint not in blob
    args = (Role.REQUEST, rid, ALICE.fingerprint, BOB.fingerprint)
    assert rv.open_blob(blob, *args, BOB.kem_seed) == (content, True)
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, *args, CAROL.kem_seed)  # not the recipient (the server has no key either)
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, Role.REQUEST, bytes(16), ALICE.fingerprint, BOB.fingerprint, BOB.kem_seed)  # other id
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, Role.ACCEPT, rid, ALICE.fingerprint, BOB.fingerprint, BOB.kem_seed)  # other role
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, Role.REQUEST, rid, CAROL.fingerprint, BOB.fingerprint, BOB.kem_seed)  # other pair
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(RendezvousError):
        rv.open_blob(bytes(tampered), *args, BOB.kem_seed)


def test_clear_blob_is_bound_too_and_visible():
    rid = bytes(16)
    content = rv.BlobContent(Role.ACCEPT, ALICE.fingerprint, BOB.fingerprint, 5, tuple(HOST_B))
    blob = rv.seal_blob(content, rid, None)
    assert blob == bytes([rv.CLEAR]) + content.encode()  # documented: the rendezvous sees these
    assert rv.open_blob(blob, Role.ACCEPT, rid, ALICE.fingerprint, BOB.fingerprint, CAROL.kem_seed) == (content, False)
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, Role.ACCEPT, rid, CAROL.fingerprint, BOB.fingerprint, CAROL.kem_seed)


def test_server_forwards_sealed_blobs_it_cannot_read():
    net = net_ab()
    net.register(BOB)
    _, records = request(net, ALICE, BOB)
    deliveries = net.to_server(ALICE, records)
    payload = b"".join(r.body[20:] for _, r in deliveries)
    assert HOST_A[0].encode()[1:] not in payload


def test_tampered_intro_is_dropped_by_the_target():
    net = net_ab()
    net.register(BOB)
    _, records = request(net, ALICE, BOB)
    deliveries = net.to_server(ALICE, records)
    fp, last = deliveries[-1]
    body = bytearray(last.body)
    body[-3] ^= 0x40
    deliveries[-1] = rv.Delivery(fp, wire.RawRecord(last.rtype, bytes(body)))
    assert events_of(net.deliver(deliveries), BOB) == []
    assert net.clients[BOB.fingerprint].counters["dropped_bad_blob"] == 1


def test_stale_blob_is_refused_and_skew_check_can_be_disabled():
    net = net_ab()
    net.register(BOB)
    _, records = request(net, ALICE, BOB)
    deliveries = net.to_server(ALICE, records)
    net.now += 601  # Bob's clock is 10 minutes ahead
    assert events_of(net.deliver(deliveries), BOB) == []
    assert net.clients[BOB.fingerprint].counters["dropped_stale_blob"] == 1
    lenient = RendezvousClient(BOB, dataclasses.replace(ClientConfig(), max_clock_skew=None))
    events = []
    for _, record in deliveries:
        events += lenient.on_record(record.rtype, record.body, net.now).events
    assert len(events) == 1


# ---------------------------------------------------------------- retransmission and duplicates


def test_lost_intro_is_retransmitted_and_reported_once():
    net = net_ab()
    net.register(BOB)
    rid, records = request(net, ALICE, BOB)
    assert net.to_server(ALICE, records)  # lost on the way to Bob
    alice = net.clients[ALICE.fingerprint]
    assert alice.tick(net.now + 0.5).send == []
    net.now += 1.0
    retry = alice.tick(net.now).send
    assert retry == records  # the same request id and blob
    [intro] = events_of(net.deliver(net.to_server(ALICE, retry)), BOB)
    # A third copy (network duplicate) reaches Bob: not reported again.
    net.now += 2.0
    retry = alice.tick(net.now).send
    results = net.deliver(net.to_server(ALICE, retry))
    assert events_of(results, BOB) == [] and sends_of(results, BOB) == []
    assert alice.tick(net.now + 5).send == []  # at most 3 sends
    assert intro.request_id == rid


def test_lost_accept_is_resent_when_the_intro_repeats():
    net = net_ab()
    net.register(BOB)
    rid, records = request(net, ALICE, BOB)
    [intro] = events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    accept = net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle, net.now)
    # lost: not given to the server
    net.now += 1.0
    results = net.deliver(net.to_server(ALICE, net.clients[ALICE.fingerprint].tick(net.now).send))
    assert events_of(results, BOB) == []
    assert sends_of(results, BOB) == accept  # Bob's node sends the same accept again
    [answer] = events_of(net.deliver(net.to_server(BOB, sends_of(results, BOB))), ALICE)
    assert isinstance(answer, IntroAnswered) and answer.request_id == rid


def test_lost_reply_is_repeated_by_the_server():
    net = net_ab()
    net.register(BOB)
    rid, records = request(net, ALICE, BOB)
    [intro] = events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    accept = net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle, net.now)
    reply = net.to_server(BOB, accept)
    assert reply and all(fp == ALICE.fingerprint for fp, _ in reply)  # lost
    net.now += 1.0
    repeated = net.to_server(ALICE, net.clients[ALICE.fingerprint].tick(net.now).send)
    assert repeated == reply and net.server.counters["reply_repeated"] == 1
    [answer] = events_of(net.deliver(repeated), ALICE)
    assert isinstance(answer, IntroAnswered)
    # A duplicate of the reply finds no pending request any more.
    assert net.deliver(reply)[ALICE.fingerprint] == rv.Output()


def test_server_forwards_one_request_at_most_max_forwards_times():
    net = net_ab()
    net.register(BOB)
    _, records = request(net, ALICE, BOB)
    forwarded = [net.to_server(ALICE, records) for _ in range(5)]
    assert [bool(f) for f in forwarded] == [True, True, True, False, False]


# ---------------------------------------------------------------- request ids


def test_accept_with_unknown_id_or_from_another_node_is_dropped():
    net = net_ab()
    net.add(CAROL, ADDR_C)
    net.register(BOB)
    net.register(CAROL)
    rid, records = request(net, ALICE, BOB)
    [intro] = events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    accept = net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle, net.now)
    assert net.to_server(CAROL, accept) == []  # Carol is not the target of this request
    forged = [wire.RawRecord(r.rtype, bytes(16) + r.body[16:]) for r in accept]
    assert net.to_server(BOB, forged) == []  # no such request
    assert net.server.counters["dropped_unknown_request"] == 2 * len(accept)
    assert net.to_server(BOB, accept)  # the real one still goes through


def test_client_drops_replies_and_failures_it_did_not_ask_for():
    net = net_ab()
    alice = net.clients[ALICE.fingerprint]
    rid, _ = request(net, ALICE, BOB)
    other = bytes(16)
    failed = rv.IntroFailedMsg(other, FailCode.BUSY).record()
    assert alice.on_record(failed.rtype, failed.body, T0) == rv.Output()
    blob = rv.seal_blob(rv.BlobContent(Role.ACCEPT, ALICE.fingerprint, BOB.fingerprint, int(T0 * 1000)), other, None)
    for record in rv.IntroReplyMsg(other, ADDR_B, blob).records():
        assert alice.on_record(record.rtype, record.body, T0) == rv.Output()
    # A reply for our request id but made for another pair does not answer it either.
    wrong = rv.seal_blob(rv.BlobContent(Role.ACCEPT, ALICE.fingerprint, CAROL.fingerprint, int(T0 * 1000)), rid, None)
    for record in rv.IntroReplyMsg(rid, ADDR_B, wrong).records():
        assert alice.on_record(record.rtype, record.body, T0).events == []
    assert alice.counters["dropped_unknown_request"] == 2
    assert alice.counters["dropped_bad_blob"] == 1
    failed = rv.IntroFailedMsg(rid, FailCode.BUSY).record()
    assert alice.on_record(failed.rtype, failed.body, T0).events == [IntroFailed(rid, BOB.fingerprint, FailCode.BUSY)]


def test_request_id_reused_by_another_requester_is_dropped():
    net = net_ab()
    net.add(CAROL, ADDR_C)
    net.register(BOB)
    rid, records = request(net, ALICE, BOB)
    assert net.to_server(ALICE, records)
    assert net.to_server(CAROL, records) == []
    assert net.server.counters["dropped_request_id_in_use"] == 1


def test_stale_registered_is_ignored():
    net = net_ab()
    alice = net.clients[ALICE.fingerprint]
    first = alice.register_record(600, T0)
    alice.register_record(600, T0)  # a newer REGISTER replaces the first
    [(_, answer)] = net.server.on_record(ALICE.fingerprint, ADDR_A, first.rtype, first.body, T0)
    assert alice.on_record(answer.rtype, answer.body, T0) == rv.Output()
    assert not alice.registered(T0)


# ---------------------------------------------------------------- limits


def test_source_rate_limit_and_refill():
    config = dataclasses.replace(ServerConfig(), source_rate=1.0, source_burst=5)
    net = net_ab(server_config=config)
    alice = net.clients[ALICE.fingerprint]
    answered = [bool(net.to_server(ALICE, [alice.register_record(600, net.now)])) for _ in range(8)]
    assert answered == [True] * 5 + [False] * 3
    _, records = request(net, ALICE, BOB)
    [(fp, failed)] = net.to_server(ALICE, records)  # answered once: for the first part only
    assert fp == ALICE.fingerprint and rv.IntroFailedMsg.decode(failed.body).code == FailCode.RATE_LIMITED
    net.now += 2.0
    assert net.to_server(ALICE, [alice.register_record(600, net.now)])


def test_source_limit_is_per_address():
    config = dataclasses.replace(ServerConfig(), source_rate=0.001, source_burst=2)
    net = net_ab(server_config=config)
    for identity in (ALICE, ALICE, ALICE, BOB):
        net.to_server(identity, [net.clients[identity.fingerprint].register_record(600, net.now)])
    assert net.server.counters["rate_limited"] == 1
    assert net.server.registered(BOB.fingerprint, net.now)


def test_pending_table_full_is_busy():
    config = dataclasses.replace(ServerConfig(), max_pending=3)
    net = net_ab(server_config=config)
    codes = []
    for _ in range(4):
        rid, records = request(net, ALICE, BOB)
        codes += [rv.IntroFailedMsg.decode(r.body).code for _, r in net.to_server(ALICE, records)]
    assert codes == [FailCode.BUSY]
    net.now += 10.0
    net.server.expire(net.now)
    assert net.server.pending == 0


def test_registration_cap():
    config = dataclasses.replace(ServerConfig(), max_registrations=1)
    net = net_ab(server_config=config)
    assert net.register(ALICE) == [Registered(600, ADDR_A)]
    assert net.register(BOB) == [Registered(0, ADDR_B)]
    assert not net.clients[BOB.fingerprint].registered(net.now)
    assert net.register(ALICE, ttl=900) == [Registered(900, ADDR_A)]  # a refresh is not a new entry
    # Refused: retry later, not at once.
    assert net.clients[BOB.fingerprint].next_refresh(net.now) == net.now + ClientConfig().refused_retry
    net.now += 901
    assert net.register(BOB) == [Registered(600, ADDR_B)]  # Alice expired: room again


def test_ttl_is_clamped_and_unregister():
    net = net_ab()
    assert net.register(BOB, ttl=100_00) == [Registered(rv.MAX_TTL, ADDR_B)]
    assert net.register(BOB, ttl=5) == [Registered(60, ADDR_B)]
    bob = net.clients[BOB.fingerprint]
    results = net.deliver(net.to_server(BOB, [bob.unregister_record(net.now)]))
    assert events_of(results, BOB) == [Registered(0, ADDR_B)]
    assert not net.server.registered(BOB.fingerprint, net.now) and not bob.registered(net.now)
    with pytest.raises(RendezvousError):
        bob.register_record(0, net.now)


def test_request_to_oneself_is_a_bad_request():
    net = net_ab()
    net.register(ALICE)
    blob = rv.seal_blob(rv.BlobContent(Role.REQUEST, ALICE.fingerprint, ALICE.fingerprint, 0), bytes(16), None)
    records = rv.IntroRequestMsg(bytes(16), ALICE.fingerprint, blob).records()
    [(_, failed)] = net.to_server(ALICE, records)
    assert rv.IntroFailedMsg.decode(failed.body) == rv.IntroFailedMsg(bytes(16), FailCode.BAD_REQUEST)
    with pytest.raises(RendezvousError):
        net.clients[ALICE.fingerprint].request_intro(ALICE.fingerprint, None, [], T0)


def test_malformed_request_gets_bad_request_when_its_id_is_readable():
    net = net_ab()
    rid = bytes(range(16))
    body = rid + bytes([0, 1]) + (40).to_bytes(2, "big") + b"\x07" * 40  # target + junk blob flag
    [(fp, failed)] = net.server.on_record(ALICE.fingerprint, ADDR_A, RecordType.INTRO_REQUEST, body, T0)
    assert fp == ALICE.fingerprint
    assert rv.IntroFailedMsg.decode(failed.body) == rv.IntroFailedMsg(rid, FailCode.BAD_REQUEST)
    assert net.server.on_record(ALICE.fingerprint, ADDR_A, RecordType.INTRO_REQUEST, b"short", T0) == []


def test_server_ignores_client_bound_types_and_unusable_addresses():
    server = RendezvousServer()
    record = rv.RegisterMsg(600, bytes(8)).record()
    for rtype in rv.CLIENT_BOUND:
        assert server.on_record(ALICE.fingerprint, ADDR_A, rtype, record.body, T0) == []
    for unusable in (("ff02::1", 5), ("fe80::1%eth0", 5), ("::", 5), ("240.0.0.1", 5)):
        assert server.on_record(ALICE.fingerprint, unusable, record.rtype, record.body, T0) == []
    assert server.counters["dropped_unsupported_address"] == 4
    assert server.registrations == 0


def test_client_request_limits_and_bundle_checks():
    client = RendezvousClient(ALICE, dataclasses.replace(ClientConfig(), max_requests=2))
    with pytest.raises(RendezvousError):
        client.request_intro(BOB.fingerprint, CAROL.bundle, [], T0)  # not Bob's bundle
    with pytest.raises(RendezvousError):
        client.request_intro(BOB.fingerprint, None, HOST_A * 9, T0)
    client.request_intro(BOB.fingerprint, None, [], T0)
    client.request_intro(CAROL.fingerprint, None, [], T0)
    with pytest.raises(RendezvousError):
        client.request_intro(BOB.fingerprint, None, [], T0)
    intro = IntroReceived(bytes(16), BOB.fingerprint, ADDR_B, (), False, 0)
    with pytest.raises(RendezvousError):
        client.accept_intro(intro, [], None, T0)  # never received


def test_accept_checks_the_requester_bundle():
    net = net_ab()
    net.register(BOB)
    _, records = request(net, ALICE, BOB)
    [intro] = events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    with pytest.raises(RendezvousError):
        net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, CAROL.bundle, net.now)


# ---------------------------------------------------------------- expiry and timers


def test_registration_expires():
    net = net_ab()
    net.register(BOB, ttl=60)
    net.now += 61
    _, records = request(net, ALICE, BOB)
    assert net.to_server(ALICE, records) == []
    assert net.server.counters["dropped_intro_unknown_target"] == 1
    net.server.expire(net.now)
    assert net.server.registrations == 0


def test_forget_ends_registration():
    net = net_ab()
    net.register(BOB)
    net.server.forget(BOB.fingerprint)
    assert not net.server.registered(BOB.fingerprint, net.now)


def test_pending_request_expires_and_late_accept_is_dropped():
    net = net_ab()
    net.register(BOB)
    rid, records = request(net, ALICE, BOB)
    [intro] = events_of(net.deliver(net.to_server(ALICE, records)), BOB)
    net.now += 10.0
    accept = net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle, net.now)
    assert net.to_server(BOB, accept) == []
    assert net.clients[ALICE.fingerprint].tick(net.now).events == [IntroTimedOut(rid, BOB.fingerprint)]
    net.now += 6.0
    net.clients[BOB.fingerprint].tick(net.now)
    with pytest.raises(RendezvousError):  # Bob forgot it
        net.clients[BOB.fingerprint].accept_intro(intro, HOST_B, ALICE.bundle, net.now)


def test_refresh_timing():
    client = RendezvousClient(ALICE)
    assert client.next_refresh(T0) == T0  # never registered: now
    record = client.register_record(600, T0)
    assert client.next_refresh(T0) == T0 + ClientConfig().register_retry  # unanswered: retry
    answer = rv.RegisteredMsg(rv.RegisterMsg.decode(record.body).nonce, 600, ADDR_A).record()
    client.on_record(answer.rtype, answer.body, T0 + 0.1)
    assert client.registered(T0 + 1) and client.ttl == 600
    assert client.next_refresh(T0 + 1) == T0 + 0.1 + 300  # half the granted ttl
    assert client.next_refresh(T0 - 100) == T0 - 100  # the clock stepped back: refresh now
    assert not client.registered(T0 + 601)


def test_expire_drops_idle_rate_limit_state():
    net = net_ab()
    net.register(BOB)
    assert net.server._sources
    net.server.expire(net.now + 60)
    assert not net.server._sources


# ---------------------------------------------------------------- hostile input


def _decoders():
    return [
        rv.RegisterMsg.decode,
        rv.RegisteredMsg.decode,
        rv.IntroFailedMsg.decode,
        rv.decode_part,
        rv.BlobContent.decode,
        rv.check_blob,
        rv.decode_address,
        rv.Candidate.decode,
    ] + [lambda data, t=t: rv.decode_message(t, bytes(16), data) for t in RecordType]


@FAST
@given(st.binary(max_size=1400))
def test_decoders_raise_only_the_typed_error(data):
    for decode in _decoders():
        try:
            decode(data)
        except RendezvousError:
            pass


@FAST
@given(st.sampled_from(list(RecordType)), st.binary(max_size=1200))
def test_on_record_never_raises(rtype, body):
    server = RendezvousServer()
    assert isinstance(server.on_record(ALICE.fingerprint, ADDR_A, rtype, body, T0), list)
    client = RendezvousClient(BOB)
    client.request_intro(ALICE.fingerprint, None, [], T0)
    out = client.on_record(rtype, body, T0)
    assert out.events == [] or rtype in (RecordType.INTRO,)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=rv.MIN_CONTENT + 1120 + 16 + 1, max_size=rv.MAX_BLOB))
def test_random_sealed_blobs_never_open(data):
    blob = bytes([rv.SEALED]) + data[: 1120 + 16 + rv.MIN_CONTENT]
    with pytest.raises(RendezvousError):
        rv.open_blob(blob, Role.REQUEST, bytes(16), ALICE.fingerprint, BOB.fingerprint, BOB.kem_seed)


@FAST
@given(st.integers(0, 255), st.binary(min_size=1, max_size=20))
def test_mutated_records_of_a_real_flow_are_dropped_or_typed(position, noise):
    rid = bytes(16)
    content = rv.BlobContent(Role.REQUEST, ALICE.fingerprint, BOB.fingerprint, int(T0 * 1000), tuple(HOST_A))
    blob = rv.seal_blob(content, rid, None)
    [record] = rv.IntroMsg(rid, ALICE.fingerprint, ADDR_A, blob).records()
    body = bytearray(record.body)
    pos = position % len(body)
    body[pos:pos + len(noise)] = noise
    client = RendezvousClient(BOB)
    out = client.on_record(record.rtype, bytes(body), T0)
    for event in out.events:  # a mutation that still parses must still be bound to Bob
        assert isinstance(event, IntroReceived)


def test_address_and_candidate_checks():
    for bad in [("0.0.0.0", 1), ("224.0.0.1", 1), ("255.255.255.255", 1), ("10.0.0.1", 0),
                ("10.0.0.1", 70000), ("::", 1), ("ff02::1", 1), ("fe80::1", 1), ("::ffff:192.0.2.1", 1),
                ("example.org", 1), "1.2.3.4:5", ("1.2.3.4", True), ("2001:db8::1", 0)]:
        with pytest.raises(RendezvousError):
            rv.encode_address(bad)
    assert rv.decode_address(rv.encode_address(("192.0.2.1", 65535))) == ("192.0.2.1", 65535)
    with pytest.raises(RendezvousError):
        Candidate(9, ("10.0.0.1", 1))
    candidate = Candidate(CandidateType.SRFLX, ("198.51.100.1", 9))
    assert Candidate.decode(candidate.encode()) == candidate


def test_ipv6_addresses_are_tagged_and_ipv4_ones_keep_their_six_bytes():
    """PROTOCOL §9.1: IPv4 stays 4 + 2 bytes (what version-1 nodes read); IPv6 is 0xF6 ‖ 16 ‖ 2.
    A version-1 decoder reads the tag as the first byte of a 240/4 address and refuses it."""
    v4 = rv.encode_address(("192.0.2.1", 4000))
    assert v4 == bytes([192, 0, 2, 1]) + (4000).to_bytes(2, "big")
    v6 = rv.encode_address(("2001:db8::7", 4000))
    assert len(v6) == rv.ADDRESS6_LEN == 19
    assert v6 == bytes([0xF6]) + bytes.fromhex("20010db8000000000000000000000007") + (4000).to_bytes(2, "big")
    assert rv.decode_address(v6) == ("2001:db8::7", 4000)
    assert rv.decode_address(rv.encode_address(("::1", 9))) == ("::1", 9)
    assert rv.decode_address(rv.encode_address(("fd00::2", 9))) == ("fd00::2", 9)  # ULA: a LAN address
    with pytest.raises(RendezvousError):  # what an old decoder sees in the first 6 bytes: reserved
        rv.decode_address(v6[:6])
    candidate = Candidate(CandidateType.HOST, ("2001:db8:1::10", 5000))
    assert Candidate.decode(candidate.encode()) == candidate and len(candidate.encode()) == 20


def test_hostile_ipv6_encodings_are_refused():
    good = rv.encode_address(("2001:db8::7", 4000))
    for bad in [good[:-1], good + b"\x00", bytes([0xF6]), b"",
                bytes([0xF6]) + bytes(16) + b"\x00\x01",                                # ::
                bytes([0xF6]) + bytes.fromhex("ff020000000000000000000000000001") + b"\x00\x01",  # multicast
                bytes([0xF6]) + bytes.fromhex("fe800000000000000000000000000001") + b"\x00\x01",  # link-local
                bytes([0xF6]) + bytes.fromhex("00000000000000000000ffffc0000201") + b"\x00\x01",  # mapped
                bytes([0xF6]) + bytes.fromhex("20010db8000000000000000000000007") + b"\x00\x00"]:  # port 0
        with pytest.raises(RendezvousError):
            rv.decode_address(bad)
    registered = rv.RegisteredMsg(bytes(8), 600, ("2001:db8::7", 4000)).record()
    assert len(registered.body) == 8 + 2 + 19
    assert rv.RegisteredMsg.decode(registered.body).observed == ("2001:db8::7", 4000)
    for cut in (registered.body[:-1], registered.body + b"\x00", registered.body[:10] + good[:6]):
        with pytest.raises(RendezvousError):
            rv.RegisteredMsg.decode(cut)


@pytest.mark.parametrize("seal", [False, True])
def test_blob_and_intro_messages_carry_both_families(seal):
    rid = bytes(range(16))
    mixed = (Candidate(CandidateType.HOST, ("10.0.0.2", 40000)),
             Candidate(CandidateType.HOST, ("2001:db8:a::10", 40000)),
             Candidate(CandidateType.SRFLX, ("198.51.100.7", 40000)),
             Candidate(CandidateType.SRFLX, ("2001:db8:a::11", 40001)))
    content = rv.BlobContent(Role.REQUEST, ALICE.fingerprint, BOB.fingerprint, int(T0 * 1000), mixed)
    assert len(content.encode()) == rv.MIN_CONTENT + 2 * 7 + 2 * 20
    blob = rv.seal_blob(content, rid, BOB.bundle if seal else None)
    rv.check_blob(blob)  # what the server can check
    assert rv.open_blob(blob, Role.REQUEST, rid, ALICE.fingerprint, BOB.fingerprint, BOB.kem_seed) == (content, seal)
    intro = rv.IntroMsg(rid, ALICE.fingerprint, ("2001:db8:a::11", 40001), blob)
    parts = rv.split_parts(RecordType.INTRO, rid, intro.payload())
    assert all(len(p.body) <= wire.MAX_DATAGRAM for p in parts)
    assert rv.IntroMsg.from_payload(rid, intro.payload()) == intro
    reply = rv.IntroReplyMsg(rid, ("2001:db8:b::5", 50000), blob)
    assert rv.IntroReplyMsg.from_payload(rid, reply.payload()) == reply
    full = tuple(Candidate(CandidateType.HOST, (f"2001:db8::{i + 1}", 40000)) for i in range(8))
    biggest = rv.seal_blob(rv.BlobContent(Role.REQUEST, ALICE.fingerprint, BOB.fingerprint, 0, full), rid,
                           BOB.bundle if seal else None)
    payload = rv.IntroMsg(rid, ALICE.fingerprint, ("2001:db8::99", 1), biggest).payload()
    assert len(payload) <= rv.MAX_PAYLOAD
    for max_datagram in (576, wire.MAX_DATAGRAM):
        assert rv.split_parts(RecordType.INTRO, rid, payload, max_datagram)


def test_blob_with_a_candidate_count_or_length_that_does_not_add_up_is_refused():
    v6 = Candidate(CandidateType.HOST, ("2001:db8::1", 1)).encode()
    v4 = Candidate(CandidateType.HOST, ("192.0.2.1", 1)).encode()
    head = rv.BlobContent(Role.REQUEST, ALICE.fingerprint, BOB.fingerprint, 0).encode()[:-1]
    for count, body in [(2, v6), (1, v6 + v4), (1, v6[:-1]), (2, v4 + v6[:5]), (9, v4 * 9)]:
        with pytest.raises(RendezvousError):
            rv.BlobContent.decode(head + bytes([count]) + body)
    assert len(rv.BlobContent.decode(head + bytes([2]) + v4 + v6).candidates) == 2
    for size in (1, 6, 8, 13, 19, 21 + 160):  # no mix of 7- and 20-byte candidates (at most 8) is this long
        with pytest.raises(RendezvousError):
            rv.check_blob(bytes([rv.SEALED]) + bytes(1120 + rv.MIN_CONTENT + 16 + size))


def test_an_ipv6_source_is_rate_limited_by_its_64():
    """The per-source bucket counts an IPv6 requester by its /64: one subscriber's whole prefix."""
    server = RendezvousServer(dataclasses.replace(ServerConfig(), source_rate=0.001, source_burst=2))
    body = rv.RegisterMsg(600, bytes(8)).record().body
    answered = [server.on_record(ALICE.fingerprint, (f"2001:db8:1:2::{i + 1}", 4000), RecordType.REGISTER, body, T0)
                for i in range(3)]
    assert [bool(a) for a in answered] == [True, True, False]
    assert server.on_record(ALICE.fingerprint, ("2001:db8:1:3::1", 4000), RecordType.REGISTER, body, T0)


# ---------------------------------------------------------------- configuration


def test_parse_server():
    fp = BOB.fingerprint
    assert rv.parse_server("rv.example.org:4444") == rv.ServerSpec("rv.example.org", 4444, None)
    assert rv.parse_server(f" 192.0.2.1:4444#{ident.format_id(fp)} ") == rv.ServerSpec("192.0.2.1", 4444, fp)
    assert rv.parse_server("[2001:db8::1]:4444") == rv.ServerSpec("2001:db8::1", 4444, None)
    for bad in ["rv.example.org", "host:0", "host:70000", ":4444", "host:44#", "host:44#notanid", 5]:
        with pytest.raises(RendezvousError):
            rv.parse_server(bad)


def test_no_refresh_after_unregister():
    client = RendezvousClient(ALICE)
    client.register_record(600, T0)
    client.unregister_record(T0)
    assert client.next_refresh(T0 + 1e6) == float("inf")
    client.register_record(600, T0)
    assert client.next_refresh(T0) == T0 + ClientConfig().register_retry


def test_parts_over_the_buffer_limits_are_busy():
    server = RendezvousServer()
    codes = []
    for i in range(10):  # first halves only: each opens a buffer (8 per requester)
        rid = bytes([i]) * 16
        body = rid + bytes([0, 2]) + (200).to_bytes(2, "big") + bytes(100)
        codes += [rv.IntroFailedMsg.decode(r.body).code for _, r in server.on_record(ALICE.fingerprint, ADDR_A,
                                                                                   RecordType.INTRO_REQUEST, body, T0)]
    assert codes == [FailCode.BUSY] * 2
