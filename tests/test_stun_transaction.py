"""The STUN/TURN client transaction's retransmission timing, on a fake clock (no sleeping)."""

from __future__ import annotations

from typing import Optional

import pytest

from clock import FakeClock
from chatp2p_core.codec.stun import Class, Message, Method
from chatp2p_core.net.stun_transaction import Retransmission, Transaction

SERVER = ("192.0.2.1", 3478)


class Harness:
    """A transaction on a fake clock: `wait` moves the clock instead of sleeping, and the
    answer (if any) arrives at `answer_at`."""

    def __init__(self, timing: Retransmission, answer_at: Optional[float] = None) -> None:
        self.clock = FakeClock(start=0.0)
        self.sends: list[float] = []
        self.answer_at = answer_at
        self.response = Message(Method.BINDING, Class.SUCCESS, b"t" * 12)
        self.transaction = Transaction(b"request", SERVER, timing, clock=self.clock, wait=self._wait)

    def _send(self, data: bytes, address) -> None:
        assert (data, address) == (b"request", SERVER)
        self.sends.append(self.clock.now)

    def _wait(self, seconds: float) -> bool:
        if self.answer_at is not None and self.clock.now + seconds >= self.answer_at:
            self.clock.now = self.answer_at
            self.transaction.answer(self.response)
            return True
        self.clock.advance(seconds)
        return False

    def run(self, timeout: Optional[float] = None) -> Optional[Message]:
        return self.transaction.run(self._send, timeout)


def test_rfc5389_defaults_send_7_requests_and_give_up_after_39_5_s():
    harness = Harness(Retransmission())
    assert harness.run() is None
    assert harness.sends == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    assert harness.clock.now == pytest.approx(39.5)  # the last wait: Rm x RTO = 16 x 0.5 s
    assert harness.transaction.sent == 7


def test_initial_rto_and_counts_are_configurable():
    timing = Retransmission(initial_rto=0.1, requests=3, final_factor=4)
    assert timing.waits() == pytest.approx([0.1, 0.2, 0.4])
    harness = Harness(timing)
    assert harness.run() is None
    assert harness.sends == pytest.approx([0.0, 0.1, 0.3])
    assert harness.clock.now == pytest.approx(0.7)


def test_a_cap_on_the_rto():
    assert Retransmission(initial_rto=0.1, requests=8, max_rto=0.5).waits() == pytest.approx(
        [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 1.6])


def test_an_overall_timeout_ends_it_at_the_deadline():
    harness = Harness(Retransmission())  # the schedule alone would run 39.5 s
    assert harness.run(timeout=3.0) is None
    assert harness.sends == pytest.approx([0.0, 0.5, 1.5])
    assert harness.clock.now == pytest.approx(3.0)


def test_the_node_clients_timing_within_3_s():
    # What StunClient and TurnClient use: RTO 100 ms capped at 500 ms, 8 requests, 3 s in all.
    harness = Harness(Retransmission(initial_rto=0.1, requests=8, max_rto=0.5))
    assert harness.run(timeout=3.0) is None
    assert harness.sends == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.2, 1.7, 2.2, 2.7])
    assert harness.clock.now == pytest.approx(3.0)  # the last wait stretches to the deadline


def test_an_answer_stops_the_resends():
    harness = Harness(Retransmission(), answer_at=2.0)
    assert harness.run() is harness.response
    assert harness.sends == pytest.approx([0.0, 0.5, 1.5])
    assert harness.clock.now == 2.0


def test_only_the_first_answer_counts():
    transaction = Transaction(b"request", SERVER, Retransmission())
    first = Message(Method.BINDING, Class.SUCCESS, b"a" * 12)
    transaction.answer(first)
    transaction.answer(Message(Method.BINDING, Class.ERROR, b"a" * 12))
    assert transaction.response is first
    assert transaction.run(lambda data, address: None) is first  # answered: one send, no wait
    assert transaction.sent == 1


def test_unusable_timing_is_refused():
    for bad in (dict(initial_rto=0), dict(requests=0), dict(final_factor=-1)):
        with pytest.raises(ValueError):
            Retransmission(**bad)
