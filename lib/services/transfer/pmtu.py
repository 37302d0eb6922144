"""Path MTU search of a link's file channel (PLPMTUD-style probes, black-hole fallback)."""

from __future__ import annotations

import logging
import time

from ...codec import wire
from ...codec.filecodec import Probe, ProbeAck, to_raw

from .model import PROBE_SIZES, PROBE_TRIES, PROBE_RETRY_AFTER, Channel

log = logging.getLogger("chatp2p.transfer")


class PathMtu:
    """Path MTU search of a link's file channel (PLPMTUD-style probes, black-hole fallback). Part of `Transfers`."""

    def _on_probe_ack(self, channel: Channel, ack: ProbeAck) -> None:
        if channel.check_id and ack.probe_id == channel.check_id and ack.size == wire.MAX_DATAGRAM:
            if channel.ptos >= 3 and channel.max_datagram > wire.MAX_DATAGRAM:
                log.info("path to %s lost large datagrams: back to %d bytes", channel.link.name, wire.MAX_DATAGRAM)
                self.counters["file_mtu_fallbacks"] += 1
                channel.max_datagram = wire.MAX_DATAGRAM
                channel.bbr.mss = wire.MAX_DATAGRAM
                channel.probe_done, channel.probe_size = False, 0
                channel.probe_after = time.monotonic() + PROBE_RETRY_AFTER
            return
        if ack.probe_id != channel.probe_id or ack.size != channel.probe_size:
            return
        channel.max_datagram = max(channel.max_datagram, ack.size)
        channel.bbr.mss = channel.max_datagram
        channel.probe_size = 0
        log.debug("path to %s carries %d-byte datagrams", channel.link.name, channel.max_datagram)
        self._probe(channel, time.monotonic())

    def _probe(self, channel: Channel, now: float) -> None:
        """PLPMTUD-style search: padded probes up the ladder; a size is used once acknowledged."""
        timeout = max(0.1, 2 * channel.link.rtt.rto)
        if channel.probe_size:
            if now - channel.probe_sent < timeout:
                return
            if channel.probe_tries >= PROBE_TRIES:
                channel.probe_size = 0
                channel.probe_done = True
                return
        else:
            if channel.probe_done or now < channel.probe_after:
                return
            bigger = [size for size in PROBE_SIZES if size > channel.max_datagram]
            if not bigger:
                channel.probe_done = True
                return
            channel.probe_size, channel.probe_tries = bigger[0], 0
            channel.probe_id = (channel.probe_id + 1) & 0xFFFFFFFF
        channel.probe_tries += 1
        channel.probe_sent = now
        self.network.send_records(channel.link, [to_raw(Probe(channel.probe_id, channel.probe_size))],
                                  max_datagram=channel.probe_size, pad=True)
