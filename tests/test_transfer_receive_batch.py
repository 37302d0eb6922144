"""The receiver's bookkeeping of a batch of DATA packets (one GRO buffer): packet numbers enter
the FILE_ACK ranges as runs, and a gap or a late packet asks for an ACK at once, exactly as
one packet at a time did. Pure state: a Channel and the caller's clock."""

from chatp2p_core.codec.filecodec import MAX_ACK_RANGES
from chatp2p_core.services.transfer.model import Channel
from chatp2p_core.services.transfer.receiver import Receiving


def channel():
    return Channel(link=None, now=0.0)  # the link is only carried


def ranges(ch):
    return list(ch.rx)


def test_packets_in_order_make_one_range_and_no_immediate_ack():
    ch = channel()
    Receiving._note_packets(ch, list(range(0, 44)), 44 * 1400, 1.0)
    Receiving._note_packets(ch, list(range(44, 88)), 44 * 1400, 2.0)
    assert ranges(ch) == [(0, 88)] and not ch.ack_now
    assert ch.rx_unacked == 88 and ch.rx_unacked_bytes == 88 * 1400
    assert ch.rx_largest == 87 and ch.rx_largest_time == 2.0


def test_a_gap_inside_a_batch_asks_for_an_ack_at_once():
    ch = channel()
    Receiving._note_packets(ch, [0, 1, 2, 3], 4, 1.0)
    assert not ch.ack_now
    Receiving._note_packets(ch, [4, 5, 7, 8], 4, 1.0)  # 6 was lost
    assert ranges(ch) == [(0, 6), (7, 9)] and ch.ack_now


def test_a_gap_between_batches_and_a_late_packet_ask_for_an_ack():
    ch = channel()
    Receiving._note_packets(ch, [0, 1], 2, 1.0)
    Receiving._note_packets(ch, [3, 4], 2, 1.0)  # the batch starts after a gap
    assert ch.ack_now and ranges(ch) == [(0, 2), (3, 5)]
    ch.ack_now = False
    Receiving._note_packets(ch, [2], 1, 1.5)  # late: fills the hole
    assert ch.ack_now and ranges(ch) == [(0, 5)] and ch.rx_largest == 4 and ch.rx_largest_time == 1.0


def test_the_ack_ranges_stay_bounded():
    ch = channel()
    Receiving._note_packets(ch, list(range(0, 4 * MAX_ACK_RANGES, 2)), 1, 1.0)  # every other one lost
    assert len(ch.rx) == MAX_ACK_RANGES and ranges(ch)[-1] == (4 * MAX_ACK_RANGES - 2, 4 * MAX_ACK_RANGES - 1)


# -- the bytes of a batch: runs of contiguous DATA are queued as one piece ------------------------
import collections  # noqa: E402

from chatp2p_core.codec.filecodec import data_record_header, decode_data_runs  # noqa: E402
from chatp2p_core.services.transfer.model import ACTIVE, Incoming, MAX_PENDING_WRITES  # noqa: E402

FINGERPRINT = b"f" * 32
SIZE = 1 << 20


class Link:
    fingerprint = FINGERPRINT
    name = "Bob"


class Receiver(Receiving):
    """Receiving's own state, nothing else: no store, no network, no writer (wakes are only set)."""

    def __init__(self):
        self.by_tid = {}
        self.pending_bytes = 0
        self.counters = collections.Counter()
        self.unexpected = []

    def _unexpected_data(self, channel, link, transfer, tid, now):
        self.unexpected.append(tid)


def incoming(receiver, transfer_id="0" * 32):
    row = {"transfer_id": transfer_id, "contact_id": 1, "file_name": "f.bin", "path": None, "size": SIZE,
           "chunk_size": 1 << 16, "tag": b"", "state": ACTIVE.value, "stopped_by": None, "sha256": None,
           "error": None, "part_path": None, "have": ""}
    transfer = Incoming(row, FINGERPRINT, "Bob")
    receiver.by_tid[(FINGERPRINT, transfer.tid, "in")] = transfer
    return transfer


def items(transfer, first_pn, offset, count, size=1400):
    """`count` DATA records as they arrive (encoded), packet numbers and bytes in a row."""
    data = bytes(range(256)) * 8
    return [data_record_header(transfer.tid, first_pn + i, offset + i * size, size) + data[:size]
            for i in range(count)]


def on_data(receiver, ch, batch):
    receiver._on_data(ch, Link, decode_data_runs(batch), 1.0)


def pending_bytes(transfer):
    return [(start, stop, sum(len(v) for v in views)) for start, stop, views in transfer.pending]


def test_a_contiguous_run_is_one_pending_piece_and_every_packet_is_acknowledged():
    receiver, ch = Receiver(), channel()
    transfer = incoming(receiver)
    on_data(receiver, ch, items(transfer, 0, 0, 44))
    on_data(receiver, ch, items(transfer, 44, 44 * 1400, 20))  # the next batch continues it
    assert pending_bytes(transfer) == [(0, 64 * 1400, 64 * 1400)]
    assert list(transfer.have) == [(0, 64 * 1400)] and receiver.pending_bytes == 64 * 1400
    assert ranges(ch) == [(0, 64)] and ch.rx_unacked_bytes == 64 * 1400 and transfer.wire_bytes == 64 * 1400


def test_a_run_overlapping_bytes_held_is_taken_record_by_record():
    receiver, ch = Receiver(), channel()
    transfer = incoming(receiver)
    on_data(receiver, ch, items(transfer, 0, 0, 4))
    # A retransmission of records 2-3 (new packet numbers) and two new ones, in one run.
    on_data(receiver, ch, items(transfer, 4, 2 * 1400, 4))
    assert receiver.counters["file_data_duplicate"] == 2
    assert list(transfer.have) == [(0, 6 * 1400)] and receiver.pending_bytes == 6 * 1400
    assert sum(stop - start for start, stop, _ in transfer.pending) == 6 * 1400
    assert ranges(ch) == [(0, 8)]  # duplicates are acknowledged too


def test_a_run_beyond_the_backlog_keeps_what_fits_and_leaves_the_rest_unacknowledged():
    receiver, ch = Receiver(), channel()
    transfer = incoming(receiver)
    receiver.pending_bytes = MAX_PENDING_WRITES - 3 * 1400  # another transfer's bytes wait for the disk
    on_data(receiver, ch, items(transfer, 0, 0, 5))
    assert list(transfer.have) == [(0, 3 * 1400)] and receiver.counters["file_data_backlog_drops"] == 2
    assert ranges(ch) == [(0, 3)]


def test_runs_break_at_another_transfer_and_at_a_gap():
    receiver, ch = Receiver(), channel()
    one, two = incoming(receiver, "1" * 32), incoming(receiver, "2" * 32)
    batch = items(one, 0, 0, 3) + items(two, 3, 0, 2) + items(one, 5, 10 * 1400, 2)
    on_data(receiver, ch, batch)
    assert pending_bytes(one) == [(0, 3 * 1400, 3 * 1400), (10 * 1400, 12 * 1400, 2 * 1400)]
    assert pending_bytes(two) == [(0, 2 * 1400, 2 * 1400)]
    assert ranges(ch) == [(0, 7)] and not receiver.unexpected


def test_data_beyond_the_end_of_the_file_is_never_queued_in_a_run():
    receiver, ch = Receiver(), channel()
    transfer = incoming(receiver)
    failed = []
    receiver._fail = lambda t, reason, *args, **kw: failed.append(reason)
    receiver._answer = lambda *args: None
    on_data(receiver, ch, items(transfer, 0, SIZE - 2 * 1400, 3))  # the third ends beyond
    assert failed and "beyond the end" in failed[0]
    assert list(transfer.have) == [(SIZE - 2 * 1400, SIZE)]


# -- flow control: room made again is announced, and a sender held by the window hears it -------
import gevent.event  # noqa: E402

from chatp2p_core.codec import wire  # noqa: E402
from chatp2p_core.codec.filecodec import AckRecord, decode_file_record  # noqa: E402
from chatp2p_core.services.transfer.sender import Sending  # noqa: E402


class ConnectedLink(Link):
    connected = True


class Network:
    def __init__(self):
        self.sent = []

    def send_payloads(self, link, payloads):
        self.sent += payloads
        return True


def sent_acks(network):
    records = [wire.decode_records(payload)[0] for payload in network.sent]
    return [decode_file_record(record) for record in records]


def test_a_receiver_that_refused_data_for_want_of_room_announces_the_room_once_it_is_back():
    receiver, ch = Receiver(), Channel(link=ConnectedLink, now=0.0)
    receiver.network, receiver.channels = Network(), {FINGERPRINT: ch}
    transfer = incoming(receiver)
    receiver.pending_bytes = MAX_PENDING_WRITES - 1400  # another transfer's bytes fill the room
    on_data(receiver, ch, items(transfer, 0, 0, 3))  # one fits, two are refused
    assert ch.window_starved and receiver.counters["file_data_backlog_drops"] == 2
    receiver._window_opened(1.1)
    assert receiver.network.sent == []  # the writer has not made room yet
    receiver.pending_bytes = 1400  # it wrote the other transfer's bytes
    receiver._window_opened(1.2)
    [ack] = sent_acks(receiver.network)
    assert isinstance(ack, AckRecord) and ack.ranges == ((0, 0),)
    assert ack.window == MAX_PENDING_WRITES - 1400 and not ch.window_starved
    receiver._window_opened(1.3)
    assert len(receiver.network.sent) == 1  # once per refusal, not at every write


def test_a_receiver_with_room_sends_no_window_updates():
    receiver, ch = Receiver(), Channel(link=ConnectedLink, now=0.0)
    receiver.network, receiver.channels = Network(), {FINGERPRINT: ch}
    on_data(receiver, ch, items(incoming(receiver), 0, 0, 3))
    receiver._window_opened(1.1)
    assert not ch.window_starved and receiver.network.sent == []


class Sender(Sending):
    def __init__(self):
        self._wake = gevent.event.Event()


def test_an_ack_that_only_opens_the_window_wakes_the_pump():
    # The sender waits for the receiver's room with nothing to acknowledge: the window update
    # must wake it (before, it slept until a probe timeout, which also made BBR back off).
    sender, ch = Sender(), Channel(link=ConnectedLink, now=0.0)
    ch.peer_window = 0
    sender._on_ack(ch, AckRecord(((0, 0),), 0, MAX_PENDING_WRITES), 1.0)
    assert sender._wake.is_set() and ch.peer_window == MAX_PENDING_WRITES
    sender._wake.clear()
    sender._on_ack(ch, AckRecord(((0, 0),), 0, MAX_PENDING_WRITES), 1.1)  # nothing new at all
    assert not sender._wake.is_set()
