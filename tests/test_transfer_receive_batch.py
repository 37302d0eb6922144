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
