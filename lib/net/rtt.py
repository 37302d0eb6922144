"""One round-trip-time estimator for every timer that needs one (pure, the caller's clock).

Links (handshakes, keepalives, chat messages) and the file sender's loss detection smooth
their samples the same way: RFC 6298's SRTT/RTTVAR (alpha 1/8, beta 1/4), which RFC 9002
keeps for QUIC. RFC 9002 adds two things, both no-ops for callers that do not use them: the
minimum RTT, and subtracting the peer's acknowledgement delay when that leaves a sample no
smaller than the minimum (chat acknowledgements are immediate, so links pass no delay)."""

from __future__ import annotations

from typing import Optional


class RttEstimator:
    """Smoothed RTT, its variation, the latest and the minimum sample (seconds), and the
    RFC 6298 retransmission timeout within [min_rto, max_rto] (`initial_rto` before any sample)."""

    __slots__ = ("srtt", "rttvar", "latest", "min_rtt", "initial_rto", "min_rto", "max_rto")

    def __init__(self, initial_rto: float = 1.0, min_rto: float = 0.0, max_rto: float = 60.0) -> None:
        self.srtt: Optional[float] = None
        self.rttvar = 0.0
        self.latest: Optional[float] = None
        self.min_rtt: Optional[float] = None
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, rtt: float, ack_delay: float = 0.0) -> None:
        """Take one measured round trip; `ack_delay` is how long the peer held its answer."""
        rtt = max(rtt, 0.0)
        self.latest = rtt
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        if ack_delay and rtt - ack_delay >= self.min_rtt:
            rtt -= ack_delay
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return self.initial_rto
        return min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))
