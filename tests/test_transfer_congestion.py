"""Loss detection and the BBR-lite controller of file transfers (lib/congestion.py): pure
state driven by a fake clock."""

import math

from chatp2p_core.services.congestion import (
    BETA, MIN_PTO, RTT_FLOOR, Bbr, Recovery, SentPacket,
)

MSS = 65507


def _send(recovery, bbr, pns, now, size=MSS):
    packets = []
    for pn in pns:
        packet = SentPacket(pn, size, now, pn)
        bbr.on_sent(packet, recovery.bytes_in_flight, False, now)
        recovery.on_sent(packet)
        packets.append(packet)
    return packets


def test_a_packet_is_lost_when_three_later_ones_are_acknowledged():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(10), 0.0)
    acked, lost = recovery.on_ack([(5, 9)], 0.0, 0.001)
    assert [p.pn for p in acked] == [5, 6, 7, 8, 9]
    assert [p.pn for p in lost] == [0, 1, 2, 3, 4]  # <= 9 - 3, and not acknowledged
    assert recovery.bytes_in_flight == 0


def test_a_late_packet_within_the_thresholds_is_not_lost_yet_then_is_by_time():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(3), 0.0)
    acked, lost = recovery.on_ack([(1, 2)], 0.0, 0.010)
    assert [p.pn for p in acked] == [1, 2] and not lost  # only 2 later: wait 9/8 RTT
    deadline = recovery.deadline()
    assert deadline is not None and 0.010 < deadline < 0.030
    lost, probe_timeout = recovery.on_timeout(deadline)
    assert [p.pn for p in lost] == [0] and not probe_timeout


def test_a_probe_timeout_declares_everything_in_flight_lost_and_backs_off():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(4), 0.0)
    first = recovery.deadline()
    assert first is not None and first >= MIN_PTO
    lost, probe_timeout = recovery.on_timeout(first)
    assert probe_timeout and len(lost) == 4 and recovery.bytes_in_flight == 0
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
