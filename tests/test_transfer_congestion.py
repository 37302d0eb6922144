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


def test_a_burst_stamped_at_once_is_what_stamping_each_packet_gives():
    """The pump stamps a burst once (Bbr.stamp, the tuple shared by its packets) and enters it
    with Recovery.on_sent_run: every packet, and both controllers, must end up exactly as with
    on_sent one packet at a time (mid-flight, after an ACK; app-limited or not)."""
    def burst(app_limited, by_run):
        recovery, bbr = Recovery(), Bbr(1472, 0.0)
        _send(recovery, bbr, range(4), 0.0, size=1500)
        acked, lost = recovery.on_ack([(0, 1)], 0.0, 0.002)
        bbr.on_ack(acked, lost, 0.002, recovery.bytes_in_flight, 0.002)
        packets = [SentPacket(pn, 1500 - pn, 0.003, pn) for pn in range(4, 9)]
        if by_run:
            stamp = bbr.stamp(recovery.bytes_in_flight, app_limited, packets[0].size, 0.003)
            packets = [SentPacket(p.pn, p.size, p.sent, p.item, stamp) for p in packets]
            recovery.on_sent_run(packets, sum(p.size for p in packets))
        else:
            for i, packet in enumerate(packets):
                bbr.on_sent(packet, recovery.bytes_in_flight, app_limited and i == 0, 0.003)
                recovery.on_sent(packet)
        return ([(p.pn, p.size, p.delivered, p.delivered_time, p.first_sent, p.app_limited) for p in packets],
                recovery.bytes_in_flight, recovery.last_sent, list(recovery.sent),
                bbr.first_sent_time, bbr.delivered_time, bbr.app_limited_until, bbr.delivered)

    for app_limited in (False, True):
        assert burst(app_limited, by_run=True) == burst(app_limited, by_run=False)
    assert burst(True, True)[0][0][2] > 0  # the ACK counted: stamps are not all zero


def test_a_burst_sent_with_nothing_in_flight_starts_a_new_delivery_interval():
    recovery, bbr = Recovery(), Bbr(1472, 0.0)
    packets = [SentPacket(pn, 1500, 0.5, pn) for pn in range(3)]
    stamp = bbr.stamp(recovery.bytes_in_flight, True, 1500, 0.5)
    packets = [SentPacket(p.pn, p.size, p.sent, p.item, stamp) for p in packets]
    recovery.on_sent_run(packets)
    assert bbr.first_sent_time == bbr.delivered_time == 0.5
    assert all(p.first_sent == 0.5 and p.app_limited for p in packets)
    assert recovery.bytes_in_flight == 4500 and list(recovery.sent) == [0, 1, 2]


def test_an_ack_of_several_ranges_gives_its_packets_in_order():
    recovery, bbr = Recovery(max_ack_delay=0.002), Bbr(MSS, 0.0)
    _send(recovery, bbr, range(12), 0.0, size=1000)
    acked, lost = recovery.on_ack([(9, 11), (5, 6), (2, 3)], 0.0, 0.001)  # highest first, as sent
    assert [p.pn for p in acked] == [2, 3, 5, 6, 9, 10, 11]
    assert [p.pn for p in lost] == [0, 1, 4, 7, 8]  # each 3 or more below the largest acknowledged
    assert recovery.bytes_in_flight == 0
