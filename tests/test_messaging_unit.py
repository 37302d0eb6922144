"""messaging.Messenger in process, against a fake link layer: batching, ACK contents, loss
recovery. (End to end, with real daemons and a lossy path: test_messaging.py.)"""

import collections
import pathlib
import tempfile

import gevent
import pytest

from chatp2p_core.services import messaging
from chatp2p_core.services.messaging import Messenger
from chatp2p_core.net.peers import Link, LinkState, NetworkConfig
from chatp2p_core.store import Store
from chatp2p_core.codec.wire import Ack, Msg

from clock import FakeClock

FP = bytes(range(32))


class FakeNetwork:
    """What Messenger uses of peers.Network; `log` interleaves sends and events."""

    def __init__(self):
        self.config = NetworkConfig()
        self.counters = collections.Counter()
        self.observers = []
        self.links = {}
        self.log = []

    def send_records(self, link, records):
        self.log.append(("send", list(records)))
        return link.connected


@pytest.fixture
def setup():
    with tempfile.TemporaryDirectory(prefix="chatp2p-msgunit-") as tmp:
        store = Store(pathlib.Path(tmp) / "chatp2p.db")
        contact = store.contacts.add("Bob", FP, None)
        network = FakeNetwork()
        messenger = Messenger(store, network, lambda name, data: network.log.append((name, data)),
                              clock=FakeClock())
        link = Link(FP, "Bob", contact.id, state=LinkState.CONNECTED, session=object(), address=("127.0.0.1", 1))
        network.links[FP] = link
        messenger.link_up(link)
        gevent.sleep(0)
        network.log.clear()
        try:
            yield store, contact, network, messenger, link
        finally:
            store.close()


def send_all(messenger, contact, bodies, prefix="m"):
    """Like pipelined API requests: each send in its own greenlet, all in one loop pass."""
    jobs = [gevent.spawn(messenger.send, contact, body, f"{prefix}{i}") for i, body in enumerate(bodies)]
    gevent.joinall(jobs, raise_error=True)
    return [job.value for job in jobs]


def sent_msgs(network):
    return [(r.seq, r.offset) for kind, records in network.log if kind == "send" for r in records
            if isinstance(r, Msg)]


def events(network, name):
    return [data["message_id"] for kind, data in network.log if kind == name]


def test_sends_of_one_pass_share_a_commit_and_datagrams(setup):
    store, contact, network, messenger, link = setup
    results = send_all(messenger, contact, [f"hello {i}" for i in range(20)])
    assert [(m.seq, m.state, sent) for m, sent in results] == [(i + 1, "sent", True) for i in range(20)]
    sends = [records for kind, records in network.log if kind == "send"]
    assert len(sends) == 1 and [r.seq for r in sends[0]] == list(range(1, 21))  # one seal, in order
    assert {m.state for m in store.messages.history(contact.id)} == {"sent"}


def test_ack_ranges_deliver_segments_only_stop_retransmission(setup):
    store, contact, network, messenger, link = setup
    send_all(messenger, contact, ["one", "two", "three", "four"])
    state = messenger.states[FP]
    size = state.outbox[3].size
    network.log.clear()
    # 1 delivered; 3 received above a gap (in memory only at the receiver): not delivered.
    messenger.records(link, [Ack(((1, 1),), ((3, 0, size),))])
    gevent.sleep(0)
    assert events(network, "message_delivered") == ["m0"]
    states = {m.message_id: m.state for m in store.messages.history(contact.id)}
    assert states == {"m0": "delivered", "m1": "sent", "m2": "sent", "m3": "sent"}
    assert sorted(state.outbox) == [2, 3, 4] and state.outbox[3].sacked
    # A receiver crash forgets 3: a new session sends 2, 3 and 4 again.
    messenger.link_down(link)
    messenger.link_up(link)
    gevent.sleep(0)
    assert [seq for seq, _ in sent_msgs(network)] == [2, 3, 4]
    network.log.clear()
    messenger.records(link, [Ack(((1, 4),))])
    gevent.sleep(0)
    assert events(network, "message_delivered") == ["m1", "m2", "m3"]
    assert {m.state for m in store.messages.history(contact.id)} == {"delivered"}
    assert not state.outbox and state.flight_count == 0 and state.flight_bytes == 0


def test_a_message_sent_before_an_acknowledged_one_is_lost_after_9_8_rtt(setup):
    store, contact, network, messenger, link = setup
    clock = messenger.clock
    link.rtt.sample(0.010)
    send_all(messenger, contact, ["a"])
    send_all(messenger, contact, ["b"], "n")   # sent after "a", in another pass
    state = messenger.states[FP]
    sent_at = state.outbox[1].last_sent
    network.log.clear()
    clock.advance(0.010)                       # "b" is acknowledged one RTT later
    messenger.records(link, [Ack((), ((2, 0, state.outbox[2].size),))])
    gevent.sleep(0)
    assert sent_msgs(network) == []            # "a" is younger than 9/8 RTT: a loss timer
    assert state.loss_time == pytest.approx(sent_at + 9 / 8 * 0.010)
    messenger.tick(state.loss_time - 0.0005)
    gevent.sleep(0)
    assert sent_msgs(network) == []
    messenger.tick(state.loss_time + 0.001)
    gevent.sleep(0)
    assert sent_msgs(network) == [(1, 0)]
    assert network.counters["messages_retransmitted"] == 1 and network.counters["messages_lost"] == 1


def test_rto_probes_only_the_oldest_message_and_backs_off(setup):
    store, contact, network, messenger, link = setup
    send_all(messenger, contact, [f"x{i}" for i in range(50)])
    state = messenger.states[FP]
    network.log.clear()
    start = state.timer_base
    rto = link.rtt.rto
    messenger.tick(start + rto / 2)
    gevent.sleep(0)
    assert sent_msgs(network) == []
    messenger.tick(start + rto + 0.001)
    gevent.sleep(0)
    assert sent_msgs(network) == [(1, 0)]        # one probe, not the window
    messenger.tick(start + rto + 0.002 + rto)    # the timeout doubled: not yet
    gevent.sleep(0)
    assert sent_msgs(network) == [(1, 0)]
    messenger.tick(start + rto + 0.002 + 2 * rto)
    gevent.sleep(0)
    assert sent_msgs(network) == [(1, 0), (1, 0)] and state.backoff == 2
    # The probe is acknowledged with everything: progress resets the backoff.
    messenger.records(link, [Ack(((1, 50),))])
    gevent.sleep(0)
    assert state.backoff == 0 and not state.outbox


def test_receiver_commits_a_burst_then_acks_then_publishes(setup):
    store, contact, network, messenger, link = setup
    records = []
    for seq in (1, 2, 3, 5):
        blob = messaging.encode_blob(f"in{seq}", f"body {seq}")
        records.append(Msg(messaging.wire_id(f"in{seq}"), seq, 1000, len(blob), 0, blob))
    messenger.records(link, records)
    assert store.messages.in_seq(contact.id) == 0        # nothing committed before the pass
    gevent.sleep(0)
    assert store.messages.in_seq(contact.id) == 3
    kinds = [kind for kind, _ in network.log]
    assert kinds == ["send", "p2p_message_received", "p2p_message_received", "p2p_message_received"]
    (ack,) = network.log[0][1]
    size = len(messaging.encode_blob("in5", "body 5"))
    assert ack == Ack(((1, 3),), ((5, 0, size),))  # 5 waits for 4: reported, not delivered
    assert events(network, "p2p_message_received") == ["in1", "in2", "in3"]
    # A copy of a delivered message is acknowledged again, not delivered twice.
    network.log.clear()
    messenger.records(link, records[:1])
    gevent.sleep(0)
    assert [kind for kind, _ in network.log] == ["send"]
    assert network.counters["messages_duplicate"] == 1


def test_ack_records_fit_a_datagram(setup):
    store, contact, network, messenger, link = setup
    records = []
    for seq in range(2, 400, 2):               # 199 messages, each above a gap
        blob = messaging.encode_blob(f"g{seq}", "x")
        records.append(Msg(messaging.wire_id(f"g{seq}"), seq, 1000, len(blob), 0, blob))
    messenger.records(link, records)
    gevent.sleep(0)
    (ack,) = network.log[0][1]
    assert ack.ranges == () and len(ack.segments) == messaging.MAX_ACK_ITEMS
    from chatp2p_core.codec import wire
    assert len(wire.encode_record(ack)) <= wire.payload_capacity(wire.MAX_DATAGRAM)


def _timeout(messenger, state, link):
    messenger.tick(state.timer_base + link.rtt.rto + 0.001)
    gevent.sleep(0)


def test_a_spurious_timeout_resends_one_message_not_the_window(setup):
    # The peer was only slow: its ACK covers the probe AND originals sent before it.
    store, contact, network, messenger, link = setup
    send_all(messenger, contact, [f"x{i}" for i in range(50)])
    state = messenger.states[FP]
    network.log.clear()
    _timeout(messenger, state, link)
    assert sent_msgs(network) == [(1, 0)]
    messenger.records(link, [Ack(((1, 10),))])
    gevent.sleep(0)
    messenger.tick(time_after_losses(messenger, state))
    gevent.sleep(0)
    assert sent_msgs(network) == [(1, 0)] and network.counters["messages_lost"] == 0
    assert sorted(state.in_flight) == list(range(11, 51))


def test_a_real_timeout_resends_what_was_sent_before_the_probe(setup):
    # Only the probe got through (F-RTO): the rest of the window is lost, sent again.
    store, contact, network, messenger, link = setup
    send_all(messenger, contact, [f"x{i}" for i in range(50)])
    state = messenger.states[FP]
    network.log.clear()
    _timeout(messenger, state, link)
    messenger.records(link, [Ack(((1, 1),))])
    gevent.sleep(0)
    messenger.tick(time_after_losses(messenger, state))
    gevent.sleep(0)
    assert [seq for seq, _ in sent_msgs(network)] == list(range(1, 51))
    assert network.counters["messages_lost"] == 49


def time_after_losses(messenger, state):
    return max(state.loss_time or 0.0, messenger.clock()) + 0.01


# -- bounded receive buffers (a peer cannot pin memory with incomplete messages) --------------
def segments_of(message_id, body, seq, size):
    blob = messaging.encode_blob(message_id, body)
    wid = messaging.wire_id(message_id)
    return blob, [Msg(wid, seq, 1000, len(blob), offset, blob[offset:offset + size])
                  for offset in range(0, len(blob), size)]


def received(network):
    return [data["message"] for kind, data in network.log if kind == "p2p_message_received"]


def test_overlapping_segments_complete_a_message_only_when_every_byte_arrived(setup):
    store, contact, network, messenger, link = setup
    blob, _ = segments_of("over", "x" * 40, 1, 10)
    wid = messaging.wire_id("over")
    total = len(blob)
    # [0, 20) and [10, 30): 30 bytes announced twice over, 10 still missing.
    messenger.records(link, [Msg(wid, 1, 1000, total, 0, blob[0:20]), Msg(wid, 1, 1000, total, 10, blob[10:30])])
    gevent.sleep(0)
    assert received(network) == [] and messenger.states[FP].partial[1].filled == 30
    messenger.records(link, [Msg(wid, 1, 1000, total, 30, blob[30:])])
    gevent.sleep(0)
    assert received(network) == ["x" * 40]
    assert messenger.buffered == 0 and messenger.states[FP].buffered == 0


def test_a_message_split_into_too_many_ranges_is_dropped(setup):
    store, contact, network, messenger, link = setup
    blob, _ = segments_of("frag", "y" * 2000, 1, 1)
    wid = messaging.wire_id("frag")
    every_other_byte = [Msg(wid, 1, 1000, len(blob), offset, blob[offset:offset + 1])
                        for offset in range(0, 2 * (messaging.MAX_PARTIAL_RANGES + 1), 2)]
    messenger.records(link, every_other_byte)
    gevent.sleep(0)
    assert network.counters["dropped_msg_fragmented"] == 1
    assert 1 not in messenger.states[FP].partial and messenger.buffered == 0
    # The honest resend of the whole message still gets through.
    messenger.records(link, segments_of("frag", "y" * 2000, 1, 1000)[1])
    gevent.sleep(0)
    assert received(network) == ["y" * 2000]


def test_incomplete_messages_expire_and_free_their_bytes(setup):
    store, contact, network, messenger, link = setup
    _, segments = segments_of("slow", "z" * 5000, 1, 1000)
    messenger.records(link, segments[:2])
    gevent.sleep(0)
    assert messenger.buffered > 5000
    clock = messenger.clock
    messenger.tick(clock.advance(messaging.PARTIAL_TTL - 1))
    assert 1 in messenger.states[FP].partial
    messenger.tick(clock.advance(2))
    assert messenger.states[FP].partial == {} and messenger.buffered == 0
    assert network.counters["dropped_msg_expired"] == 1


def test_a_strangers_incomplete_messages_are_capped_by_bytes(setup):
    store, contact, network, messenger, link = setup
    stranger = Link(bytes(range(1, 33)), "stranger", None, state=LinkState.CONNECTED, session=object(),
                    address=("127.0.0.1", 2))
    network.links[stranger.fingerprint] = stranger
    messenger.link_up(stranger)
    gevent.sleep(0)
    big = "s" * (messaging.MAX_MESSAGE_BYTES - 300)
    for seq in range(1, messaging.MAX_PARTIAL + 1):     # first segment only: never completes
        messenger.records(stranger, [segments_of(f"s{seq}", big, seq, 1000)[1][0]])
    state = messenger.states[stranger.fingerprint]
    assert state.buffered <= messaging.STRANGER_BUFFER_BYTES
    assert len(state.partial) == messaging.STRANGER_BUFFER_BYTES // (len(big) + 5)
    assert network.counters["dropped_msg_buffer_full"] == messaging.MAX_PARTIAL - len(state.partial)
    # A contact may buffer more than a stranger, and the link going down frees everything.
    for seq in range(1, 9):
        messenger.records(link, [segments_of(f"c{seq}", big, seq, 1000)[1][0]])
    assert len(messenger.states[FP].partial) == 8
    messenger.link_down(stranger)
    messenger.link_down(link)
    assert messenger.buffered == 0
