"""Loss detection and congestion control of file transfers: pure state, the caller's clock.

`Recovery` keeps the packets in flight of one link, by the runs (bursts) they were sent in,
and turns FILE_ACK ranges into spans of acked and lost packets (RFC 9002 rules: a packet is
lost when 3 later ones were acknowledged, or when it is 9/8 RTT older than one acknowledged;
a probe timeout declares everything in flight lost).
Packet numbers are never reused, so RTT samples are unambiguous.

`Bbr` decides how fast to send: a BBR-lite (after BBR v1, draft-cardwell-iccrg-bbr) with the
loss bound of BBR v2. Why BBR and not a loss-based AIMD (NewReno/CUBIC): on loopback and LANs
the bottleneck is the receiving process's CPU and the "queue" is its 4 MiB socket buffer; a
loss-based controller fills that buffer until it overflows, so every chat message would wait
behind ~20 ms of file data and each overflow costs a burst of retransmissions. BBR measures
the delivery rate and the minimum RTT, paces at the measured rate and keeps about two
bandwidth-delay products in flight: the queue stays short, and random loss (1 % on a lossy
link) does not halve the rate as it would with AIMD. It still backs off under real loss: when
more than 5 % of the packets of a measurement window (at least one round trip and 64 packets)
are lost, the in-flight cap drops to 0.7 of what was in flight (multiplicative decrease), and
grows again by 1.25x per clean window.
"""

from __future__ import annotations

import bisect
import collections
import math
from typing import Any, Iterable, Optional, Sequence

from ..net.rtt import RttEstimator

# -- loss detection (RFC 9002) -----------------------------------------------------------------
PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
GRANULARITY = 0.001          # s: timers are not finer than this
MIN_PTO = 0.1                # s: a user-space peer (GC, a disk sync) can pause for tens of ms;
                             # a shorter probe timeout would resend a whole window for nothing
INITIAL_RTT = 0.1            # s, before any sample (RFC 9002 says 333 ms; we start on LANs)
MAX_PTO = 2.0                # s: probe timeouts back off up to this


class SentRun:
    """Datagrams sent back to back in one burst: packet numbers `pn` .. `pn + count - 1`, each
    `size` bytes on the wire but the last, `last_size`, all sent at `sent` in the delivery
    state `stamp` (`Bbr.stamp`). `item` is the I/O layer's (what the run carries).

    Loss recovery stays per packet: bit i of `pending` is set while packet `pn + i` is in
    flight, and ACKs and losses come back as spans of packets. Only the bookkeeping is per run:
    an object per datagram, made when it is sent and looked up when it is acknowledged, cost a
    Python sender a sixth of its time at a 1500-byte MTU."""

    __slots__ = ("pn", "count", "size", "last_size", "sent", "item", "stamp", "pending")

    def __init__(self, pn: int, count: int, size: int, sent: float, item: Any,
                 stamp: "Stamp" = (0, 0.0, 0.0, False), last_size: Optional[int] = None) -> None:
        self.pn = pn
        self.count = count
        self.size = size
        self.last_size = size if last_size is None else last_size
        self.sent = sent
        self.item = item
        self.stamp = stamp
        self.pending = (1 << count) - 1

    @property
    def total(self) -> int:
        """Bytes of the whole run on the wire."""
        return (self.count - 1) * self.size + self.last_size

    def bytes(self, first: int, last: int) -> int:
        """Bytes on the wire of its packets `first` .. `last` (indices in the run, inclusive)."""
        size = (last - first + 1) * self.size
        return size + self.last_size - self.size if last == self.count - 1 else size

    # The stamp's fields by name (rate sampling unpacks the tuple at once).
    delivered = property(lambda self: self.stamp[0], doc="bytes delivered when it was sent")
    delivered_time = property(lambda self: self.stamp[1], doc="when that delivery count was reached")
    first_sent = property(lambda self: self.stamp[2], doc="send time of the first packet of its interval")
    app_limited = property(lambda self: self.stamp[3], doc="sent while the sender had too little to send")


Stamp = tuple[int, float, float, bool]  # delivered, delivered_time, first_sent, app_limited
Span = tuple[SentRun, int, int]  # packets `first` .. `last` (inclusive indices) of a run


def span_bytes(spans: Iterable[Span]) -> int:
    """Bytes on the wire of the packets of `spans`."""
    return sum(run.bytes(first, last) for run, first, last in spans)


def span_packets(spans: Iterable[Span]) -> int:
    """How many packets `spans` hold."""
    return sum(last - first + 1 for _, first, last in spans)


def _spans(run: SentRun, mask: int) -> list[Span]:
    """The runs of set bits of `mask` (packets of `run`) as spans, lowest first."""
    spans = []
    while mask:
        first = (mask & -mask).bit_length() - 1
        ones = mask >> first
        length = (ones ^ (ones + 1)).bit_length() - 1  # how many set bits in a row from `first`
        spans.append((run, first, first + length - 1))
        mask &= ~(((1 << length) - 1) << first)
    return spans


def _mask(first: int, last: int) -> int:
    """Bits `first` .. `last` set."""
    return ((1 << (last - first + 1)) - 1) << first


class Recovery:
    """Packets in flight on one link, RTT estimates, loss detection, probe timeout."""

    def __init__(self, max_ack_delay: float = 0.005) -> None:
        self.runs: list[SentRun] = []  # with packets in flight, in packet-number order
        self._starts: list[int] = []   # their first packet numbers (bisect)
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.max_ack_delay = max_ack_delay
        self.rtt = RttEstimator()
        self.pto_count = 0
        self.last_sent = 0.0
        self.loss_time: Optional[float] = None

    def on_sent(self, run: SentRun) -> None:
        """A run just sent; its packet numbers follow those of every run sent before."""
        self.runs.append(run)
        self._starts.append(run.pn)
        self.bytes_in_flight += run.total
        self.last_sent = run.sent

    def in_flight(self) -> list[int]:
        """The packet numbers in flight, in order (for tests)."""
        return [run.pn + first + i for run in self.runs for _, first, last in _spans(run, run.pending)
                for i in range(last - first + 1)]

    def on_ack(self, ranges: Sequence[tuple[int, int]], ack_delay: float,
               now: float) -> tuple[list[Span], list[Span]]:
        """(newly acknowledged, newly lost) packets for an ACK's inclusive pn ranges, as spans
        in packet-number order."""
        acked: list[Span] = []
        runs, starts = self.runs, self._starts
        for first, last in ranges:
            if first > last:
                continue  # (the codec refuses them)
            index = bisect.bisect_right(starts, last) - 1  # the last run that starts by `last`
            while index >= 0:
                run = runs[index]
                top = run.pn + run.count - 1
                if top < first:
                    break  # runs are in order: every earlier one ends before this
                newly = run.pending & _mask(max(first - run.pn, 0), min(last, top) - run.pn)
                if newly:
                    run.pending ^= newly
                    acked += _spans(run, newly)
                index -= 1
        if not acked:
            return acked, []
        if len(acked) > 1:
            acked.sort(key=_span_start)
        self.bytes_in_flight -= span_bytes(acked)
        newest, _, index = acked[-1]
        if newest.pn + index > self.largest_acked:
            self.largest_acked = newest.pn + index
            self.rtt.sample(max(now - newest.sent, 1e-6), min(ack_delay, self.max_ack_delay))
        self.pto_count = 0
        lost = self.detect_lost(now)
        if not lost:
            self._prune()  # (detect_lost prunes when it finds losses)
        return acked, lost

    def _prune(self) -> None:
        """Forget the runs with nothing in flight any more."""
        runs = self.runs
        if all(run.pending for run in runs):
            return
        self.runs = [run for run in runs if run.pending]
        self._starts = [run.pn for run in self.runs]

    def _loss_delay(self) -> float:
        rtt = self.rtt
        base = max(rtt.latest or 0.0, rtt.srtt if rtt.srtt is not None else INITIAL_RTT)
        return max(TIME_THRESHOLD * base, GRANULARITY)

    def detect_lost(self, now: float) -> list[Span]:
        """Packets older than the largest acknowledged by 3 packets or 9/8 RTT."""
        lost: list[Span] = []
        self.loss_time = None
        delay = self._loss_delay()
        largest = self.largest_acked
        for run in self.runs:
            if run.pn > largest:
                break
            # Its packets in flight up to the largest acknowledged: lost by time, or those
            # PACKET_THRESHOLD below it; any left wait for the time threshold.
            candidates = run.pending & _mask(0, min(run.count - 1, largest - run.pn))
            if not candidates:
                continue
            if run.sent <= now - delay:
                gone = candidates
            else:
                below = largest - PACKET_THRESHOLD - run.pn
                gone = candidates & _mask(0, min(below, run.count - 1)) if below >= 0 else 0
            if gone:
                run.pending ^= gone
                lost += _spans(run, gone)
            if candidates != gone:
                self.loss_time = run.sent + delay
                break
        if lost:
            self.bytes_in_flight -= span_bytes(lost)
            self._prune()
        return lost

    def pto(self) -> float:
        rtt = self.rtt
        srtt = rtt.srtt if rtt.srtt is not None else INITIAL_RTT
        base = srtt + max(4 * rtt.rttvar, GRANULARITY) + self.max_ack_delay
        return min(MAX_PTO, max(base, MIN_PTO) * (2 ** self.pto_count))

    def deadline(self) -> Optional[float]:
        """When `on_timeout` must run: the time-threshold loss timer or the probe timeout."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.runs:
            return None
        return self.last_sent + self.pto()

    def on_timeout(self, now: float) -> tuple[list[Span], bool]:
        """(lost packets, whether it was a probe timeout). A probe timeout (no ACK for a PTO)
        declares every packet in flight lost: they are sent again, as new packets."""
        if self.loss_time is not None and now >= self.loss_time:
            return self.detect_lost(now), False
        if not self.runs:
            return [], False
        self.pto_count += 1
        lost = self._clear(self.runs)
        self.runs, self._starts = [], []
        self.bytes_in_flight = 0
        self.loss_time = None
        return lost, True

    def forget(self, keep: Any) -> list[Span]:
        """Drop the runs whose item fails `keep(item)` (a cancelled transfer): not in flight any more."""
        gone = [run for run in self.runs if not keep(run.item)]
        if not gone:
            return []
        spans = self._clear(gone)
        self.bytes_in_flight -= span_bytes(spans)
        self._prune()
        return spans

    @staticmethod
    def _clear(runs: list[SentRun]) -> list[Span]:
        """The packets in flight of `runs`, as spans; none is in flight after."""
        spans = []
        for run in runs:
            spans += _spans(run, run.pending)
            run.pending = 0
        return spans


def _span_start(span: Span) -> int:
    return span[0].pn + span[1]


# -- congestion control (BBR-lite) -------------------------------------------------------------
STARTUP_GAIN = 2.77          # 2/ln 2: doubles the delivery rate every round trip
# BBR cycles its pacing gain 1.25, 0.75, then 1 x 6. A user-space sender wakes late (timers
# fire a millisecond or more after they were asked for) and can only send less than it paces
# for, never more; pacing at exactly the estimate would let the estimate drift down. So the
# cruising gain is 1.25 and the probing one 1.5; the window (2 BDP) still bounds the queue.
PROBE_CYCLE = (1.5, 1.0, 1.25, 1.25, 1.25, 1.25, 1.25, 1.25)
CWND_GAIN = 2.0
BW_WINDOW_ROUNDS = 10
BW_WINDOW_SECONDS = 1.0      # ...and at least this long: rounds last ~1 ms on loopback, too short
                             # to ride out the pauses of a user-space receiver
MIN_RTT_WINDOW = 10.0        # s
RTT_FLOOR = 0.005            # s: a user-space receiver works in batches and pauses for a few ms
                             # (GIL hand-overs, disk syncs); a window sized on a 100 µs loopback
                             # RTT would starve the pipe at every pause. 2 x 5 ms of data in its
                             # socket buffer (~2 MiB at 200 MiB/s) is what a chat message queues
                             # behind; 10 ms (the first choice) doubled that for no measurable
                             # gain in throughput (bench_transfer, 2 CPUs)
INITIAL_WINDOW = 256 * 1024  # bytes in flight before the first measurement
MAX_WINDOW = 64 * 1024 * 1024
LOSS_THRESHOLD = 0.05
LOSS_MIN_PACKETS = 64
BETA = 0.7
REGROW = 1.25


class Bbr:
    """BBR-lite: see the module docstring. Rates in bytes per second, sizes in bytes."""

    def __init__(self, mss: int, now: float) -> None:
        self.mss = mss
        self.mode = "startup"
        self.btl_bw = 0.0
        self._bw_rounds: collections.deque[list[float]] = collections.deque()  # [round, time, max rate]
        self.min_rtt: Optional[float] = None
        self.min_rtt_stamp = now
        self.delivered = 0
        self.delivered_time = now
        self.first_sent_time = now
        self.app_limited_until = 0
        self.round_count = 0
        self.next_round_delivered = 0
        self.full_bw = 0.0
        self.full_bw_count = 0
        self.cycle_index = 0
        self.cycle_stamp = now
        self.inflight_hi = math.inf
        self._window_acked = 0
        self._window_lost = 0
        self._window_round = 0
        self.backoffs = 0

    # -- outputs ----------------------------------------------------------------------------
    @property
    def min_window(self) -> int:
        return max(4 * self.mss, 64 * 1024)

    def _gains(self) -> tuple[float, float]:
        if self.mode == "startup":
            return STARTUP_GAIN, STARTUP_GAIN
        if self.mode == "drain":
            return 1 / STARTUP_GAIN, CWND_GAIN
        return PROBE_CYCLE[self.cycle_index], CWND_GAIN

    def bdp(self) -> float:
        return self.btl_bw * max(self.min_rtt or RTT_FLOOR, RTT_FLOOR)

    @property
    def cwnd(self) -> int:
        if self.btl_bw <= 0:
            window = float(INITIAL_WINDOW)
        else:
            window = self._gains()[1] * self.bdp() + 2 * self.mss
        window = min(window, self.inflight_hi, MAX_WINDOW)
        return int(max(window, self.min_window))

    @property
    def pacing_rate(self) -> float:
        gain = self._gains()[0]
        if self.btl_bw <= 0:
            return gain * INITIAL_WINDOW / max(self.min_rtt or RTT_FLOOR, RTT_FLOOR)
        return gain * self.btl_bw

    # -- inputs -----------------------------------------------------------------------------
    def stamp(self, bytes_in_flight: int, app_limited: bool, size: int, now: float) -> Stamp:
        """The delivery state a packet of `size` bytes (or a burst starting with it, all sent
        at `now`) goes out in: what rate sampling compares its ACK with."""
        if bytes_in_flight == 0:
            self.first_sent_time = self.delivered_time = now
        if app_limited:
            self.app_limited_until = self.delivered + bytes_in_flight + size
        return self.delivered, self.delivered_time, self.first_sent_time, self.app_limited_until > self.delivered

    def on_sent(self, run: SentRun, bytes_in_flight: int, app_limited: bool, now: float) -> None:
        """Stamp a run with the delivery state it is sent in (rate sampling)."""
        run.stamp = self.stamp(bytes_in_flight, app_limited, run.size, now)

    def on_ack(self, acked: list[Span], lost: list[Span], rtt: Optional[float],
               bytes_in_flight: int, now: float) -> None:
        if rtt is not None and (self.min_rtt is None or rtt < self.min_rtt
                                or now - self.min_rtt_stamp > MIN_RTT_WINDOW):
            self.min_rtt, self.min_rtt_stamp = rtt, now
        self._window_lost += span_packets(lost)
        if not acked:
            return
        self.delivered += span_bytes(acked)
        self.delivered_time = now
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        newest = acked[-1][0]
        round_start = False
        if newest.stamp[0] >= self.next_round_delivered:
            self.next_round_delivered = self.delivered
            self.round_count += 1
            round_start = True
        self._sample_rate(newest, now)
        self.first_sent_time = newest.sent
        self._window_acked += span_packets(acked)
        self._check_loss(bytes_in_flight)
        self._advance_mode(round_start, newest.stamp[3], bytes_in_flight, now)

    def _sample_rate(self, newest: SentRun, now: float) -> None:
        delivered, delivered_time, first_sent, app_limited = newest.stamp
        interval = max(newest.sent - first_sent, now - delivered_time)
        if interval <= 0 or (self.min_rtt is not None and interval < self.min_rtt):
            return  # ACK compression: the sample would overestimate
        rate = (self.delivered - delivered) / interval
        if app_limited and rate < self.btl_bw:
            return  # an idle sender measures itself, not the path
        rounds = self._bw_rounds
        if rounds and rounds[-1][0] == self.round_count:
            rounds[-1][2] = max(rounds[-1][2], rate)
        else:
            rounds.append([self.round_count, now, rate])
        while rounds and rounds[0][0] <= self.round_count - BW_WINDOW_ROUNDS and now - rounds[0][1] > BW_WINDOW_SECONDS:
            rounds.popleft()
        self.btl_bw = max(r[2] for r in rounds)

    def _check_loss(self, bytes_in_flight: int) -> None:
        total = self._window_acked + self._window_lost
        if total < LOSS_MIN_PACKETS or self.round_count <= self._window_round:
            return
        if self._window_lost > LOSS_THRESHOLD * total:
            base = min(self.inflight_hi, self._gains()[1] * self.bdp() + 2 * self.mss)
            self.inflight_hi = max(float(self.min_window), BETA * base)
            self.backoffs += 1
            if self.mode == "startup":
                self.mode = "drain"
        elif self.inflight_hi != math.inf:
            self.inflight_hi = self.inflight_hi * REGROW + self.mss
            if self.btl_bw > 0 and self.inflight_hi > 4 * (CWND_GAIN * self.bdp() + 2 * self.mss):
                self.inflight_hi = math.inf
        self._window_acked = self._window_lost = 0
        self._window_round = self.round_count

    def _advance_mode(self, round_start: bool, app_limited: bool, bytes_in_flight: int, now: float) -> None:
        if self.mode == "startup" and round_start and not app_limited:
            if self.btl_bw >= self.full_bw * 1.25:
                self.full_bw, self.full_bw_count = self.btl_bw, 0
            else:
                self.full_bw_count += 1
                if self.full_bw_count >= 3:
                    self.mode = "drain"
        if self.mode == "drain" and bytes_in_flight <= self.bdp():
            self.mode = "probe_bw"
            self.cycle_index = 2  # start cruising; the cycle reaches the probing phase soon
            self.cycle_stamp = now
        if self.mode == "probe_bw" and now - self.cycle_stamp > max(self.min_rtt or RTT_FLOOR, RTT_FLOOR):
            self.cycle_index = (self.cycle_index + 1) % len(PROBE_CYCLE)
            self.cycle_stamp = now

    def on_timeout(self, consecutive: int = 1) -> None:
        """A probe timeout: nothing was acknowledged for a PTO. A first one is most often a
        user-space receiver that was not scheduled for a while (a loaded machine) or a lost
        burst: back off as for a lossy window (0.7). Two in a row mean persistent congestion or
        a broken path: down to the minimum window."""
        if consecutive >= 2 or self.btl_bw <= 0:
            self.inflight_hi = float(self.min_window)
        else:
            base = min(self.inflight_hi, self._gains()[1] * self.bdp() + 2 * self.mss)
            self.inflight_hi = max(float(self.min_window), BETA * base)
        self.backoffs += 1
        self._window_acked = self._window_lost = 0
        self._window_round = self.round_count
