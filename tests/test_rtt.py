"""The one RTT estimator links and the file sender share (chatp2p_core.net.rtt)."""

from __future__ import annotations

import pytest

from chatp2p_core.net.rtt import RttEstimator


def test_first_sample_then_rfc6298_smoothing():
    rtt = RttEstimator(initial_rto=0.25, min_rto=0.1, max_rto=3.0)
    assert rtt.srtt is None and rtt.rto == 0.25
    rtt.sample(0.1)
    assert (rtt.srtt, rtt.rttvar, rtt.latest, rtt.min_rtt) == (0.1, 0.05, 0.1, 0.1)
    assert rtt.rto == pytest.approx(0.3)
    rtt.sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert rtt.min_rtt == 0.1 and rtt.latest == 0.3


def test_rto_bounds_and_negative_samples():
    rtt = RttEstimator(initial_rto=0.25, min_rto=0.1, max_rto=3.0)
    rtt.sample(-1.0)  # a clock step: counted as zero
    assert rtt.srtt == 0.0 and rtt.rto == 0.1
    for _ in range(3):
        rtt.sample(10.0)
    assert rtt.rto == 3.0


def test_ack_delay_is_subtracted_only_above_the_minimum():
    rtt = RttEstimator()
    rtt.sample(0.010)
    rtt.sample(0.030, ack_delay=0.005)  # 25 ms stays above the 10 ms minimum: subtracted
    assert rtt.srtt == pytest.approx(0.875 * 0.010 + 0.125 * 0.025)
    assert rtt.latest == 0.030
    other = RttEstimator()
    other.sample(0.010)
    other.sample(0.012, ack_delay=0.005)  # 7 ms would undercut the minimum: kept whole
    assert other.srtt == pytest.approx(0.875 * 0.010 + 0.125 * 0.012)
