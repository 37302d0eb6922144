"""Loss detection and the BBR-lite controller of file transfers (lib/congestion.py): pure
state driven by a fake clock."""

import math

from hypothesis import given, settings, strategies as st

from chatp2p_core.services.congestion import (
    BETA, MIN_PTO, PACKET_THRESHOLD, RTT_FLOOR, TIME_THRESHOLD, Bbr, Recovery, SentRun, span_bytes,
)

MSS = 65507


def _send(recovery, bbr, pns, now, size=MSS):
    """Each packet number in a run of its own, stamped as sent alone."""
    runs = []
    for pn in pns:
        run = SentRun(pn, 1, size, now, pn)
        bbr.on_sent(run, recovery.bytes_in_flight, False, now)
        recovery.on_sent(run)
        runs.append(run)
    return runs


def _pns(spans):
    return [run.pn + i for run, first, last in spans for i in range(first, last + 1)]


def test_a_packet_is_lost_when_three_later_ones_are_acknowledged():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(10), 0.0)
    acked, lost = recovery.on_ack([(5, 9)], 0.0, 0.001)
    assert _pns(acked) == [5, 6, 7, 8, 9]
    assert _pns(lost) == [0, 1, 2, 3, 4]  # <= 9 - 3, and not acknowledged
    assert recovery.bytes_in_flight == 0


def test_a_late_packet_within_the_thresholds_is_not_lost_yet_then_is_by_time():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(3), 0.0)
    acked, lost = recovery.on_ack([(1, 2)], 0.0, 0.010)
    assert _pns(acked) == [1, 2] and not lost  # only 2 later: wait 9/8 RTT
    deadline = recovery.deadline()
    assert deadline is not None and 0.010 < deadline < 0.030
    lost, probe_timeout = recovery.on_timeout(deadline)
    assert _pns(lost) == [0] and not probe_timeout


def test_a_probe_timeout_declares_everything_in_flight_lost_and_backs_off():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(4), 0.0)
    first = recovery.deadline()
    assert first is not None and first >= MIN_PTO
    lost, probe_timeout = recovery.on_timeout(first)
    assert probe_timeout and _pns(lost) == [0, 1, 2, 3] and recovery.bytes_in_flight == 0
    _send(recovery, bbr, range(4, 6), first)
    assert recovery.deadline() - first >= 2 * MIN_PTO - 1e-9  # doubled


def _measured_bbr():
    """A controller that has measured ~100 MiB/s over a 1 ms path."""
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    now, pn = 0.0, 0
    for _ in range(40):
        _send(recovery, bbr, range(pn, pn + 8), now)
        now += 8 * MSS / (100 * 2**20)
        acked, lost = recovery.on_ack([(pn, pn + 7)], 0.0, now + 0.001)
        bbr.on_ack(acked, lost, 0.001, recovery.bytes_in_flight, now + 0.001)
        pn += 8
    return bbr


def test_the_window_is_two_bdp_with_the_rtt_floor():
    bbr = _measured_bbr()
    assert bbr.btl_bw > 50 * 2**20
    assert bbr.min_rtt is not None and bbr.min_rtt < RTT_FLOOR
    assert math.isclose(bbr.bdp(), bbr.btl_bw * RTT_FLOOR)  # the floor, not the 1 ms path
    assert bbr.mode == "probe_bw"  # startup ended: the rate stopped growing
    assert math.isclose(bbr.cwnd, 2 * bbr.bdp() + 2 * MSS, rel_tol=1e-6)


def test_one_probe_timeout_backs_off_to_0_7_two_in_a_row_to_the_minimum():
    bbr = _measured_bbr()
    window = min(bbr.inflight_hi, 2 * bbr.bdp() + 2 * MSS)
    bbr.on_timeout(1)
    assert math.isclose(bbr.inflight_hi, max(bbr.min_window, BETA * window))
    assert bbr.inflight_hi > bbr.min_window  # a stalled peer does not cost the whole window
    bbr.on_timeout(2)
    assert bbr.inflight_hi == bbr.min_window
    assert bbr.cwnd == bbr.min_window


def test_before_any_measurement_a_probe_timeout_goes_to_the_minimum():
    bbr = Bbr(MSS, 0.0)
    bbr.on_timeout(1)
    assert bbr.inflight_hi == bbr.min_window == max(4 * MSS, 64 * 1024)


def test_a_run_stamped_at_once_is_what_stamping_each_packet_gives():
    """The pump stamps a burst once (Bbr.stamp) and keeps it as one SentRun: both controllers
    must end up exactly as with each packet sent and stamped alone (mid-flight, after an ACK;
    app-limited or not), through its ACK too."""
    def burst(app_limited, by_run):
        recovery, bbr = Recovery(), Bbr(1472, 0.0)
        _send(recovery, bbr, range(4), 0.0, size=1500)
        acked, lost = recovery.on_ack([(0, 1)], 0.0, 0.002)
        bbr.on_ack(acked, lost, 0.002, recovery.bytes_in_flight, 0.002)
        if by_run:
            run = SentRun(4, 5, 1500, 0.003, "run", last_size=700)
            bbr.on_sent(run, recovery.bytes_in_flight, app_limited, 0.003)
            recovery.on_sent(run)
            stamps = [run.stamp] * 5
        else:
            runs = [SentRun(pn, 1, 1500 if pn < 8 else 700, 0.003, pn) for pn in range(4, 9)]
            for i, run in enumerate(runs):
                bbr.on_sent(run, recovery.bytes_in_flight, app_limited and i == 0, 0.003)
                recovery.on_sent(run)
            stamps = [run.stamp for run in runs]
        sent = (stamps, recovery.bytes_in_flight, recovery.last_sent, recovery.in_flight(),
                bbr.first_sent_time, bbr.delivered_time, bbr.app_limited_until, bbr.delivered)
        acked, lost = recovery.on_ack([(6, 8)], 0.0, 0.005)
        bbr.on_ack(acked, lost, 0.002, recovery.bytes_in_flight, 0.005)
        return sent, (_pns(acked), _pns(lost), span_bytes(acked), recovery.bytes_in_flight, recovery.in_flight(),
                      bbr.delivered, bbr.btl_bw, bbr.round_count, bbr._window_acked, bbr._window_lost)

    for app_limited in (False, True):
        assert burst(app_limited, by_run=True) == burst(app_limited, by_run=False)
    assert burst(True, True)[0][0][0][0] > 0  # the first ACK counted: stamps are not all zero
    assert burst(False, True)[1][2] == 2 * 1500 + 700


def test_a_burst_sent_with_nothing_in_flight_starts_a_new_delivery_interval():
    recovery, bbr = Recovery(), Bbr(1472, 0.0)
    run = SentRun(0, 3, 1500, 0.5, "run")
    bbr.on_sent(run, recovery.bytes_in_flight, True, 0.5)
    recovery.on_sent(run)
    assert bbr.first_sent_time == bbr.delivered_time == 0.5
    assert run.first_sent == 0.5 and run.app_limited
    assert recovery.bytes_in_flight == 4500 and recovery.in_flight() == [0, 1, 2]


def test_an_ack_of_several_ranges_gives_its_packets_in_order():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(12), 0.0, size=1000)
    acked, lost = recovery.on_ack([(9, 11), (5, 6), (2, 3)], 0.0, 0.001)  # highest first, as sent
    assert _pns(acked) == [2, 3, 5, 6, 9, 10, 11]
    assert _pns(lost) == [0, 1, 4, 7, 8]  # each 3 or more below the largest acknowledged
    assert recovery.bytes_in_flight == 0


def test_spans_cut_a_run_where_acks_and_losses_cut_it():
    recovery = Recovery(max_ack_delay=0.002)
    run = SentRun(10, 8, 1000, 0.0, "run", last_size=300)
    recovery.on_sent(run)
    assert recovery.bytes_in_flight == 7 * 1000 + 300
    assert recovery.on_ack([(17, 12)], 0.0, 0.001) == ([], [])  # reversed: nothing (the codec refuses it)
    acked, lost = recovery.on_ack([(16, 17), (12, 12)], 0.0, 0.001)
    assert [(first, last) for _, first, last in acked] == [(2, 2), (6, 7)]
    assert span_bytes(acked) == 1000 + 1000 + 300
    assert _pns(lost) == [10, 11, 13, 14]  # 3 or more below 17; 15 waits for the time threshold
    assert recovery.in_flight() == [15] and recovery.bytes_in_flight == 1000
    lost, probe_timeout = recovery.on_timeout(recovery.deadline())
    assert _pns(lost) == [15] and not probe_timeout
    assert recovery.runs == [] and recovery.bytes_in_flight == 0 and recovery.deadline() is None


def test_forget_drops_the_runs_of_one_item_only():
    recovery = Recovery()
    for pn, item in ((0, "a"), (3, "b"), (6, "a")):
        recovery.on_sent(SentRun(pn, 3, 100, 0.0, item))
    recovery.on_ack([(1, 1)], 0.0, 0.001)
    gone = recovery.forget(lambda item: item != "a")
    assert _pns(gone) == [0, 2, 6, 7, 8]
    assert recovery.in_flight() == [3, 4, 5] and recovery.bytes_in_flight == 300


class _PerPacket:
    """The reference: RFC 9002 loss detection with one record per packet (as before runs)."""

    def __init__(self):
        self.sent = {}  # pn -> (size, sent), in order
        self.largest_acked = -1
        self.bytes_in_flight = 0
        self.loss_sent = None  # send time of the packet the time-threshold timer waits for

    def on_sent(self, pn, size, now):
        self.sent[pn] = (size, now)
        self.bytes_in_flight += size

    def on_ack(self, ranges, delay):
        acked = sorted({pn for first, last in ranges for pn in range(first, last + 1) if pn in self.sent})
        for pn in acked:
            self.bytes_in_flight -= self.sent.pop(pn)[0]
        if acked:
            self.largest_acked = max(self.largest_acked, acked[-1])
        return acked, (self.detect_lost(delay) if acked else [])

    def detect_lost(self, delay_until):
        lost, self.loss_sent = [], None
        for pn, (size, sent) in list(self.sent.items()):
            if pn > self.largest_acked:
                break
            if pn <= self.largest_acked - PACKET_THRESHOLD or sent <= delay_until:
                del self.sent[pn]
                self.bytes_in_flight -= size
                lost.append(pn)
                continue
            self.loss_sent = sent
            break
        return lost


_bursts = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 1500)), min_size=1, max_size=8)
_acks = st.lists(st.lists(st.tuples(st.integers(0, 150), st.integers(0, 6)), min_size=1, max_size=4),
                 max_size=12)


@settings(max_examples=300, deadline=None)
@given(_bursts, _acks, st.integers(0, 3))
def test_runs_lose_and_acknowledge_exactly_the_packets_a_per_packet_record_would(bursts, acks, spacing):
    """Random bursts (sizes, a short last datagram or not), ACKs of random ranges at random
    times: the packets acked, lost and in flight, and the bytes in flight, are those of one
    record per packet, and so is the time-threshold loss timer."""
    recovery, reference = Recovery(max_ack_delay=0.002), _PerPacket()
    pn, now = 0, 0.0
    for count, last_size in bursts:
        recovery.on_sent(SentRun(pn, count, 1500, now, None, last_size=last_size))
        for i in range(count):
            reference.on_sent(pn + i, 1500 if i < count - 1 else last_size, now)
        pn += count
        now += 0.001 * spacing
    for ranges in acks:
        now += 0.001 * spacing
        ranges = sorted(((first, first + width) for first, width in ranges), reverse=True)
        acked, lost = recovery.on_ack(ranges, 0.0, now)
        delay = recovery._loss_delay()  # the same for both: the RTT estimate is not at stake here
        expected_acked, expected_lost = reference.on_ack(ranges, now - delay)
        assert _pns(acked) == expected_acked
        assert _pns(lost) == expected_lost
        sent = reference.loss_sent
        assert recovery.loss_time == (None if sent is None else sent + delay)
        assert recovery.in_flight() == list(reference.sent)
        assert recovery.bytes_in_flight == reference.bytes_in_flight == span_bytes(
            [(run, 0, run.count - 1) for run in recovery.runs]) - sum(
            span_bytes([(run, i, i)]) for run in recovery.runs for i in range(run.count) if not run.pending >> i & 1)


def test_the_loss_timer_waits_for_the_oldest_packet_not_yet_declared_lost():
    recovery = Recovery(max_ack_delay=0.002)
    recovery.on_sent(SentRun(0, 2, 1000, 0.000, "a"))
    recovery.on_sent(SentRun(2, 1, 1000, 0.004, "b"))
    recovery.on_sent(SentRun(3, 1, 1000, 0.008, "c"))
    acked, lost = recovery.on_ack([(3, 3)], 0.0, 0.088)  # an 80 ms RTT: none is lost by time yet
    assert _pns(acked) == [3] and _pns(lost) == [0]  # 1 and 2 are within 3 of the largest
    assert recovery.loss_time == 0.000 + recovery._loss_delay()  # packet 1's, not packet 2's
