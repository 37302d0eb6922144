"""The sending side of transfers: offers, answers, the reader, ACKs and losses, END."""

from __future__ import annotations

import logging
import os
from typing import Optional

import gevent
import gevent.event

from ..congestion import Span
from ...codec.filecodec import (
    MAX_FILE_SIZE, AckRecord, Answer, AnswerRecord, End, Halt, HaltRecord, Offer, RangeSet,
    chunks_to_bytes, to_raw,
)
from ...net.peers import Link

from .model import (
    READ_BLOCK, SEND_CACHE, QUEUED, OFFERED, ACTIVE, PAUSED, COMPLETED, FAILED, REJECTED, CANCELLED,
    TERMINAL, LOCAL, PEER, os_reason, Outgoing, Channel,
)
from .disk import open_source, read_block

log = logging.getLogger("chatp2p.transfer")


class Sending:
    """The sending side of transfers: offers, answers, the reader, ACKs and losses, END. Part of `Transfers`."""

    def _offer_record(self, transfer: Outgoing) -> Offer:
        return Offer(transfer.tid, transfer.size, transfer.chunk_size, transfer.tag, transfer.transfer_id,
                     transfer.name)

    def _offer(self, link: Link, transfer: Outgoing, now: float) -> None:
        """(Re)offer: check the source is still the same file first (reopening it if needed)."""
        try:
            fd, size, _, tag = self.pool.apply(open_source, (transfer.path, transfer.chunk_size))
        except OSError as exc:
            self._fail(transfer, f"cannot read {transfer.path}: {os_reason(exc)}", LOCAL)
            return
        if tag != transfer.tag or transfer.fd is None:
            if tag != transfer.tag:
                log.info("source of transfer %s changed: it starts over", transfer.transfer_id)
                if size > MAX_FILE_SIZE:
                    os.close(fd)
                    self._fail(transfer, "the source file grew too large", LOCAL)
                    return
                transfer.size, transfer.tag = size, tag
                self._save(transfer, size=size, tag=tag)
                self._stop_sending(transfer)  # an ACCEPT for the old version does not count
            if transfer.reader is not None:
                transfer.release = True  # the reader closes the old file when it is done
                transfer.wake.set()
            else:
                self._close_fd(transfer)
            transfer.fd = fd
            transfer.reset_source()
        else:
            os.close(fd)
        if transfer.accepted or transfer.state in TERMINAL or (transfer.state == PAUSED and transfer.stopped_by == LOCAL):
            return  # the receiver already answered this session, or the user acted meanwhile
        transfer.answered = False
        if transfer.state != OFFERED:
            self._set_state(transfer, OFFERED)
        log.info("offering %s (%s, %d bytes) to %s", transfer.transfer_id, transfer.name, transfer.size, link.name)
        self._send_control(link, [to_raw(self._offer_record(transfer))])
        transfer.control_sent, transfer.control_tries = now, 1

    def _halt(self, transfer: Outgoing, code: Halt, reason: str) -> None:
        link = self.network.links.get(transfer.fingerprint)
        if link is not None and link.connected:
            self._send_control(link, [to_raw(HaltRecord(transfer.tid, code, reason))])

    # -- sender -----------------------------------------------------------------------------
    def _on_answer(self, link: Link, answer: AnswerRecord, now: float) -> None:
        transfer = self.by_tid.get((link.fingerprint, answer.tid, "out"))
        if not isinstance(transfer, Outgoing):
            if answer.code == Answer.ACCEPT:  # something we no longer send: say so
                self._send_control(link, [to_raw(HaltRecord(answer.tid, Halt.CANCELLED, "unknown transfer"))])
            return
        transfer.answered = True
        code = answer.code
        if code == Answer.PENDING:
            return
        if code == Answer.ACCEPT:
            revivable = (transfer.state in (QUEUED, OFFERED, ACTIVE)
                         or (transfer.state in (PAUSED, FAILED) and transfer.stopped_by == PEER))
            if transfer.accepted or not revivable or transfer.fd is None:
                return
            have = chunks_to_bytes(((first, last + 1) for first, last in answer.have), transfer.chunk_size,
                                   transfer.size)
            transfer.restart_session(have)
            transfer.accepted = True
            log.info("%s accepted %s: %d of %d bytes to send", link.name, transfer.transfer_id,
                     transfer.need.total, transfer.size)
            transfer.control_tries = 0  # END goes out (and is retransmitted) once all is delivered
            if transfer.state != ACTIVE:
                self._set_state(transfer, ACTIVE)
            if transfer.started_at is None:
                transfer.started_at = now
                self.publish("file_transfer_started", self._event(transfer))
            channel = self.channels.get(link.fingerprint)
            if channel is not None and transfer not in channel.senders:
                channel.senders.append(transfer)
            if transfer.reader is None or transfer.reader.dead:
                transfer.reader = gevent.spawn(self._reader, transfer)
            transfer.wake.set()
            self._wake.set()
        elif code == Answer.PAUSED:
            if transfer.state in (OFFERED, ACTIVE):
                self._stop_sending(transfer)
                self._set_state(transfer, PAUSED, PEER)
                self.publish("file_transfer_paused", self._event(transfer, by=PEER))
        elif code == Answer.COMPLETE:
            if transfer.state in (OFFERED, ACTIVE, PAUSED, FAILED):
                self._stop_sending(transfer)
                sha = transfer.digest.hex() if transfer.digest is not None else None
                transfer.sha256 = sha
                self._set_state(transfer, COMPLETED, sha256=sha)
                transfer.need = RangeSet()
                self.counters["files_sent"] += 1
                elapsed = now - (transfer.started_at or now)
                self.publish("file_transfer_completed", self._event(transfer, path=transfer.path, sha256=sha,
                                                                     seconds=round(elapsed, 3),
                                                                     wire_bytes=transfer.wire_bytes))
                self._forget(transfer)
        elif code == Answer.REJECT:
            self._stop_sending(transfer)
            self._set_state(transfer, REJECTED, PEER, f"rejected by {transfer.peer}")
            self.publish("file_transfer_failed", self._event(transfer, reason=f"rejected by {transfer.peer}"))
            self._forget(transfer)
        elif code == Answer.CANCELLED:
            self._stop_sending(transfer)
            self._set_state(transfer, CANCELLED, PEER, f"cancelled by {transfer.peer}")
            self.publish("file_transfer_failed", self._event(transfer, reason=f"cancelled by {transfer.peer}"))
            self._forget(transfer)
        elif code == Answer.FAILED:
            if transfer.state not in TERMINAL and transfer.state != FAILED:
                self._fail(transfer, f"{transfer.peer}: {answer.reason or 'failed'}", PEER)

    def _stop_sending(self, transfer: Outgoing) -> None:
        transfer.accepted = False
        channel = self.channels.get(transfer.fingerprint)
        if channel is not None:
            if transfer in channel.senders:
                channel.senders.remove(transfer)
            channel.recovery.forget(lambda item: item[0] is not transfer)
        transfer.blocks.clear()
        transfer.cache_bytes = 0
        transfer.wake.set()

    def _reader(self, transfer: Outgoing) -> None:
        """Reads (and hashes, in order) the source for one outgoing transfer."""
        try:
            while not self._stopping and transfer.transfer_id in self.transfers:
                if (transfer.state != ACTIVE or not transfer.accepted or transfer.fd is None
                        or transfer.cache_bytes >= SEND_CACHE or transfer.read_pos >= transfer.size):
                    if transfer.read_pos >= transfer.size and transfer.digest is None and transfer.hash_pos >= transfer.size:
                        transfer.digest = transfer.hasher.digest()
                        self._wake.set()
                    transfer.wake.wait(1.0)
                    transfer.wake.clear()
                    continue
                start = transfer.read_pos  # block-aligned, and never past hash_pos
                if start < transfer.hash_pos:  # behind the hash: read only the blocks still needed
                    found = transfer.need.next_from(start)
                    if found is None or found[0] >= transfer.hash_pos:
                        transfer.read_pos = transfer.hash_pos
                        continue
                    start = transfer.read_pos = max(start, (found[0] // READ_BLOCK) * READ_BLOCK)
                end = min(start + READ_BLOCK, transfer.size)
                index = start // READ_BLOCK
                hash_it = start == transfer.hash_pos
                wanted = transfer.need.overlaps(start, end) and index not in transfer.blocks
                if not wanted and not hash_it:
                    transfer.read_pos = end
                    continue
                gen, hasher = transfer.gen, transfer.hasher
                data = self.pool.apply(read_block, (transfer.fd, start, end - start, hasher if hash_it else None))
                if len(data) != end - start:
                    self._fail(transfer, "the source file changed during the transfer (it is shorter)", LOCAL)
                    return
                if hash_it and hasher is transfer.hasher:
                    transfer.hash_pos = end
                    if end >= transfer.size:
                        transfer.digest = hasher.digest()
                if gen != transfer.gen:
                    continue
                transfer.read_pos = end
                if transfer.need.overlaps(start, end) and index not in transfer.blocks:
                    transfer.blocks[index] = data
                    transfer.cache_bytes += len(data)
                self._wake.set()
        except OSError as exc:
            self._fail(transfer, f"cannot read {transfer.path}: {os_reason(exc)}", LOCAL)
        finally:
            transfer.reader = None
            if transfer.transfer_id not in self.transfers or self._stopping or transfer.release:
                transfer.release = False
                self._close_fd(transfer)

    def _on_ack(self, channel: Channel, ack: AckRecord, now: float) -> None:
        recovery = channel.recovery
        opened = ack.window > channel.peer_window
        channel.peer_window = ack.window
        top = max((last for _, last in ack.ranges), default=-1)
        if top > channel.acked_top:  # large datagrams reach the peer, even if they were late
            channel.acked_top = top  # (declared lost by a probe timeout): no black hole
            channel.ptos = 0
        acked, lost = recovery.on_ack(ack.ranges, ack.delay_us / 1e6, now)
        if not acked and not lost:
            if opened:  # a window update: the pump may be waiting for the room
                self._wake.set()
            return
        rtt = now - acked[-1][0].sent if acked else None
        channel.bbr.on_ack(acked, lost, rtt, recovery.bytes_in_flight, now)
        if acked:
            channel.ptos = 0
        # Spans in a row usually carry consecutive bytes of one transfer: one range each run.
        run: Optional[list] = None  # [transfer, gen, start, end]
        for span in acked:
            transfer, gen, start, end = _bytes_of(span)
            if run is not None and transfer is run[0] and gen == run[1] and start == run[3]:
                run[3] = end
                continue
            if run is not None:
                self._delivered(*run)
            run = [transfer, gen, start, end]
        if run is not None:
            self._delivered(*run)
        for span in lost:
            self._lost(span)
        self._wake.set()

    @staticmethod
    def _delivered(transfer: Outgoing, gen: int, start: int, end: int) -> None:
        if gen == transfer.gen and transfer.accepted and transfer.delivered(start, end - start):
            transfer.wake.set()

    def _lost(self, span: Span) -> None:
        transfer, gen, start, end = _bytes_of(span)
        self.counters["file_packets_lost"] += span[2] - span[1] + 1
        if gen == transfer.gen and transfer.accepted:
            transfer.lost(start, end - start)

    def _maybe_end(self, channel: Channel, transfer: Outgoing, now: float) -> None:
        if transfer.accepted and not transfer.need and transfer.digest is not None and transfer.control_tries == 0:
            self._send_control(channel.link, [to_raw(End(transfer.tid, transfer.size, transfer.digest))])
            transfer.control_sent, transfer.control_tries = now, 1


def _bytes_of(span: Span) -> tuple[Outgoing, int, int, int]:
    """(transfer, generation, start, end) of the file bytes a span of a pump's run carried."""
    run, first, last = span
    transfer, gen, start, length, capacity = run.item
    return transfer, gen, start + first * capacity, start + min((last + 1) * capacity, length)
