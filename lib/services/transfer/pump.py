"""The pump: paces DATA out on every link, as congestion control and windows allow."""

from __future__ import annotations

import logging
import time
from typing import Optional

import gevent
import gevent.event

from ...codec import wire
from ..congestion import SentRun
from ...codec.filecodec import Probe, data_capacity, data_record_header, to_raw

from .model import SEND_CACHE, BURST, BURST_BYTES, GSO_BURST_BYTES, ACTIVE, Outgoing, Channel

log = logging.getLogger("chatp2p.transfer")


class Pump:
    """The pump: paces DATA out on every link, as congestion control and windows allow. Part of `Transfers`."""

    # -- the pump ---------------------------------------------------------------------------
    def _pump_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = self._pump_once(time.monotonic())
            except Exception:
                log.exception("file pump failed")
                wait = 0.05
            if wait == 0.0:
                gevent.idle()
            else:
                self._wake.wait(wait)

    def _pump_once(self, now: float) -> Optional[float]:
        """Send what pacing and windows allow on every link; seconds until worth trying again."""
        wait: Optional[float] = None
        for channel in list(self.channels.values()):
            if not channel.senders or not channel.link.connected:
                continue
            deadline = channel.recovery.deadline()
            if deadline is not None and now >= deadline:
                self._on_timeout(channel, now)
            for transfer in list(channel.senders):
                if transfer.accepted and not transfer.need and transfer.digest is not None:
                    self._maybe_end(channel, transfer, now)
            result = self._send_burst(channel, now)
            if result is not None:
                wait = result if wait is None else min(wait, result)
            deadline = channel.recovery.deadline()
            if deadline is not None:
                left = max(deadline - now, 0.0005)
                wait = left if wait is None else min(wait, left)
        return wait

    def _on_timeout(self, channel: Channel, now: float) -> None:
        lost, probe_timeout = channel.recovery.on_timeout(now)
        if probe_timeout:
            channel.ptos += 1
            channel.bbr.on_timeout(channel.ptos)
            self.counters["file_probe_timeouts"] += 1
            if channel.ptos >= 3 and channel.max_datagram > wire.MAX_DATAGRAM:
                # A black hole for large datagrams (a route change), or a peer that is not
                # running (a loaded machine, a pause)? A small PROBE tells: if it is answered
                # while DATA still is not, large datagrams are lost (`_on_probe_ack` falls back).
                channel.check_id = 0x80000000 | (channel.check_id + 1) & 0x7FFFFFFF
                self.network.send_records(channel.link, [to_raw(Probe(channel.check_id, wire.MAX_DATAGRAM))],
                                          max_datagram=wire.MAX_DATAGRAM, pad=True)
        else:
            channel.bbr.on_ack([], lost, None, channel.recovery.bytes_in_flight, now)
        for span in lost:
            self._lost(span)

    def _send_burst(self, channel: Channel, now: float) -> Optional[float]:
        """One burst for a link: as many DATA datagrams as congestion control, the receiver's
        window and pacing allow (at most BURST), sealed in one pass and handed to the network in
        one batch (one GSO send per run of same-size datagrams). Seconds until worth trying again."""
        payloads: list[bytes] = []
        wait = self._fill_burst(channel, now, payloads)
        if payloads and not self.network.send_payloads(channel.link, payloads):
            return None
        return wait

    def _fill_burst(self, channel: Channel, now: float, payloads: list[bytes]) -> Optional[float]:
        """The DATA records of a burst, each alone in its datagram and built with one
        concatenation (per-datagram work is what limits a Python peer); the congestion
        controller and loss recovery see each one as a packet of its own (in one `SentRun` per
        burst)."""
        bbr, recovery = channel.bbr, channel.recovery
        size = channel.max_datagram
        capacity = data_capacity(size)
        rate = bbr.pacing_rate
        pacing, upload = channel.pacing, self._upload_bucket
        pacing.rate = rate
        # Paced per burst, not per datagram: a burst of up to one GSO send (64 KiB) may go at
        # once, and timers fire late: allow up to 4 ms of catching up.
        pacing.burst = max(4.0 * size, min(BURST * size, GSO_BURST_BYTES), rate * 0.004)
        pacing.refill(now)
        if self.upload_limit:
            upload.burst = max(4.0 * size, self.upload_limit * 0.01)
            upload.refill(now)
        cwnd = bbr.cwnd  # both change only when an ACK comes
        window = max(channel.peer_window, 2 * size)
        overhead = wire.DATA_OVERHEAD + wire.RECORD_HEADER_LEN + 32  # what a datagram counts beyond its file bytes
        budget = max(1, min(BURST, BURST_BYTES // size))  # datagrams left in this burst
        while budget > 0:
            in_flight = recovery.bytes_in_flight
            if in_flight + size > cwnd:
                self.counters["file_wait_cwnd"] += 1
                return None  # an ACK will wake the pump
            if in_flight + size > window:
                self.counters["file_wait_receiver"] += 1
                return None  # the receiver's disk is behind: an ACK will open the window
            if pacing.tokens < size:
                self.counters["file_wait_pacing"] += 1
                return pacing.wait_for(size)
            if self.upload_limit and upload.tokens < size:
                return upload.wait_for(size)
            # How many datagrams every limit allows (each counts at most `size`): taken from
            # the file as one run, then cut into datagrams.
            count = min(budget, (cwnd - in_flight) // size, (window - in_flight) // size, int(pacing.tokens // size))
            if self.upload_limit:
                count = min(count, int(upload.tokens // size))
            piece = self._next_piece(channel, capacity * count)
            if piece is None:
                self.counters["file_wait_disk"] += 1
                channel.idle = True
                return None  # a reader or an ACK will wake the pump
            transfer, start, run = piece
            tid, gen = transfer.tid, transfer.gen
            pn = channel.next_pn
            # One burst: BBR and loss recovery see each datagram, stamped as sent together
            # and kept as one run (the bookkeeping per datagram is what limits a Python sender).
            stamp = bbr.stamp(recovery.bytes_in_flight, channel.idle, min(len(run), capacity) + overhead, now)
            channel.idle = False
            length = len(run)
            packets = -(-length // capacity)
            recovery.on_sent(SentRun(pn, packets, capacity + overhead, now, (transfer, gen, start, length, capacity),
                                     stamp, length - (packets - 1) * capacity + overhead))
            for cut in range(0, length, capacity):
                view = run[cut:cut + capacity]
                payloads.append(data_record_header(tid, pn, start + cut, len(view)) + view)
                pn += 1
            channel.next_pn = pn
            spent = length + overhead * packets
            pacing.tokens -= spent
            if self.upload_limit:
                upload.tokens -= spent
            budget -= packets
            transfer.wire_bytes += length
        return 0.0

    def _next_piece(self, channel: Channel, capacity: int) -> Optional[tuple[Outgoing, int, memoryview]]:
        senders = channel.senders
        count = len(senders)
        for i in range(count):
            transfer = senders[(channel.rr + i) % count]
            if transfer.state != ACTIVE or not transfer.accepted:
                continue
            piece = transfer.next_piece(capacity)
            if piece is not None:
                channel.rr = (channel.rr + i + 1) % count
                if transfer.cursor >= transfer.size or transfer.cache_bytes < SEND_CACHE // 2:
                    transfer.wake.set()
                return transfer, piece[0], piece[1]
        return None
