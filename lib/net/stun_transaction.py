"""One STUN client transaction, shared by the Binding client (stun.py) and TURN (turn.py):
send a request, resend it on the RFC 5389 section 7.2.1 schedule until an answer comes, give up.

The schedule (`Retransmission`): the first request, then a resend after RTO, 2 RTO, 4 RTO...
(RTO starts at `initial_rto`, 500 ms by default, and doubles; `max_rto` may cap it) for `requests`
requests in all (Rc, 7 by default); after the last one the client waits `final_factor` (Rm, 16)
times the initial RTO before giving up: 39.5 s with the defaults. A caller that passes an
overall `timeout` gives up at that deadline instead, whichever schedule step it falls in.

The transaction never reads a socket: the client that owns it finds it by transaction id when
an answer arrives and calls `answer`. The clock and the wait are injectable so the timing is
unit-tested without sleeping.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import gevent.event

from ..codec.stun import Message
from ..util import Address

SendFunction = Callable[[bytes, Address], None]


@dataclasses.dataclass(frozen=True)
class Retransmission:
    """When to resend a request and when to give up (RFC 5389 section 7.2.1: RTO, Rc, Rm)."""

    initial_rto: float = 0.5
    requests: int = 7  # Rc: requests sent in all, the first included
    final_factor: int = 16  # Rm: the last request is waited for Rm x initial RTO
    max_rto: Optional[float] = None  # no cap in the RFC

    def __post_init__(self) -> None:
        if self.initial_rto <= 0 or self.requests < 1 or self.final_factor < 0:
            raise ValueError(f"unusable retransmission timing {self!r}")

    def waits(self) -> list[float]:
        """Seconds to wait after each request: before the next one, and after the last before
        giving up."""
        waits = []
        rto = self.initial_rto
        for _ in range(self.requests - 1):
            waits.append(rto)
            rto = rto * 2 if self.max_rto is None else min(rto * 2, self.max_rto)
        waits.append(self.final_factor * self.initial_rto)
        return waits


class Transaction:
    """One request to `destination` and its answer. `key` is the integrity key the request
    was sent with (TURN checks that a success answer carries it); `ignored` and `last_problem`
    let a client explain a timeout (datagrams from the server that were not a usable answer)."""

    def __init__(self, request: bytes, destination: Address, timing: Retransmission, *,
                 key: Optional[bytes] = None, clock: Callable[[], float] = time.monotonic,
                 wait: Optional[Callable[[float], bool]] = None) -> None:
        self.request = request
        self.destination = destination
        self.timing = timing
        self.key = key
        self.response: Optional[Message] = None
        self.sent = 0
        self.ignored = 0
        self.last_problem = ""
        self._clock = clock
        self._answered = gevent.event.Event()
        self._wait = wait if wait is not None else self._answered.wait

    def answer(self, response: Message) -> None:
        """The answer arrived (the first one counts)."""
        if self.response is None:
            self.response = response
            self._answered.set()

    def run(self, send: SendFunction, timeout: Optional[float] = None) -> Optional[Message]:
        """Send and resend until answered; the answer, or None when the schedule (or the
        `timeout` deadline, when given) ran out. Blocks the calling greenlet only."""
        deadline = None if timeout is None else self._clock() + timeout
        waits = self.timing.waits()
        for index, wait in enumerate(waits):
            send(self.request, self.destination)
            self.sent += 1
            if deadline is not None:
                remaining = deadline - self._clock()
                wait = remaining if index == len(waits) - 1 else min(wait, remaining)
            if wait <= 0 or self._wait(wait) or self.response is not None:
                break
            if deadline is not None and self._clock() >= deadline:
                break  # a request sent now could not be answered in time
        return self.response
