"""The receiving side of transfers: offers, DATA into the writer, ACKs, sync, finishing."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import time
from typing import Optional, Union

import gevent
import gevent.event

from ...codec import wire
from ...codec.filecodec import (
    DataRun, FileRecordType, MAX_ACK_RANGES, MAX_CHUNK, MAX_FILE_SIZE, MAX_TRANSFER_ID_CHARS, MIN_CHUNK, AckRecord,
    Answer, AnswerRecord, End, Offer, RangeSet, UnsafeName, check_file_name, chunk_ranges,
    format_ranges, to_raw, transfer_wire_id,
)
from ...contract import Direction
from ...net.peers import Link
from ...store import DuplicateError

from .model import (
    HASH_STEP, WRITE_BATCH, WRITE_WAIT, MAX_PENDING_WRITES, MAX_DIRECT_STAGES, SYNC_BYTES, SYNC_INTERVAL,
    WINDOW_UPDATE_AT, MAX_OFFERS_PER_PEER, MAX_OFFERS, REFUSAL_EVENTS_PER_MINUTE, MAX_REFUSED_REMEMBERED, OFFERED, ACTIVE,
    PAUSED, COMPLETED, FAILED, REJECTED, CANCELLED, LOCAL, PEER, TransferError, os_reason, Incoming,
    Channel,
)
from .direct import DirectStage
from .disk import write_and_hash, open_part, finalize, sync_and_release

log = logging.getLogger("chatp2p.transfer")


class Receiving:
    """The receiving side of transfers: offers, DATA into the writer, ACKs, sync, finishing. Part of `Transfers`."""

    def _answer(self, transfer: Incoming, code: Answer, reason: str = "") -> None:
        link = self.network.links.get(transfer.fingerprint)
        if link is None or not link.connected:
            return
        have = transfer.have_chunks() if code == Answer.ACCEPT else ()
        self._send_control(link, [to_raw(AnswerRecord(transfer.tid, code, have, reason))])

    def _state_answer(self, transfer: Incoming) -> AnswerRecord:
        """What the receiver says about a transfer it knows, whatever the question."""
        state = transfer.state
        if state == OFFERED:
            return AnswerRecord(transfer.tid, Answer.PENDING)
        if state == ACTIVE:
            return AnswerRecord(transfer.tid, Answer.ACCEPT, transfer.have_chunks())
        if state == PAUSED:
            return AnswerRecord(transfer.tid, Answer.PAUSED)
        if state == COMPLETED:
            return AnswerRecord(transfer.tid, Answer.COMPLETE)
        if state == REJECTED:
            return AnswerRecord(transfer.tid, Answer.REJECT, reason="rejected by the receiver")
        if state == CANCELLED:
            return AnswerRecord(transfer.tid, Answer.CANCELLED, reason="cancelled by the receiver")
        return AnswerRecord(transfer.tid, Answer.FAILED, reason=(transfer.error or "failed")[:200])

    # -- receiver: offers -------------------------------------------------------------------
    def _on_offer(self, link: Link, offer: Offer, now: float) -> None:
        transfer = self.by_tid.get((link.fingerprint, offer.tid, "in"))
        log.info("offer %s from %s: %s", offer.transfer_id[:MAX_TRANSFER_ID_CHARS], link.name,
                 transfer.state if transfer is not None else "new")
        if transfer is None and (link.fingerprint, offer.tid) not in self._refused:
            row = self._known_incoming(link, offer)
            if row is not None:  # finished earlier: answer from the store
                self._send_control(link, [to_raw(self._row_answer(offer.tid, row))])
                return
        if isinstance(transfer, Incoming):
            if offer.tag != transfer.tag or offer.size != transfer.size:
                self._source_changed(transfer, offer)
            if transfer.state == PAUSED and transfer.stopped_by == PEER:
                self._set_state(transfer, ACTIVE)
                self._start_incoming(transfer)
            elif transfer.state == FAILED and transfer.stopped_by == PEER and transfer.part_path:
                if transfer.fd is None:
                    self._reopen_part(transfer)
                self._set_state(transfer, ACTIVE, error=None)
                self._start_incoming(transfer)
            else:
                self._send_control(link, [to_raw(self._state_answer(transfer))])
            return
        refused = self._refused.get((link.fingerprint, offer.tid))
        if refused is not None:
            self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.FAILED, reason=refused))])
            return
        group_id = self._offer_group(link, offer)
        reason = self._check_offer(link, offer, group_id)
        if reason is not None:
            self._refuse(link, offer, reason)
            return
        try:
            name = check_file_name(offer.name)
            row = self.store.transfers.add(transfer_id=offer.transfer_id, contact_id=link.contact_id,
                                          direction="in", file_name=name, size=offer.size,
                                          chunk_size=offer.chunk_size, tag=offer.tag, state=OFFERED,
                                          group_id=group_id,
                                          peer_fingerprint=link.fingerprint if link.contact_id is None else None)
        except (UnsafeName, DuplicateError) as exc:
            self._refuse(link, offer, str(exc))
            return
        transfer = Incoming(row, link.fingerprint, link.name)
        self._register(transfer)
        self.counters["file_offers"] += 1
        if group_id is not None:
            self.publish("file_offer", self._event(transfer, chunk_size=transfer.chunk_size, group=group_id.hex()))
        else:
            self.publish("file_offer", self._event(transfer, chunk_size=transfer.chunk_size))
        contact = self.store.contacts.get_by_id(link.contact_id) if link.contact_id is not None else None
        if self.auto_accept and contact is not None and contact.verified:
            try:
                self.accept(transfer.transfer_id, None)
                return
            except TransferError as exc:
                log.warning("cannot auto-accept %s: %s", transfer.transfer_id, exc)
        self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.PENDING))])

    def _offer_group(self, link: Link, offer: Offer) -> Optional[bytes]:
        """The group whose file announcement this offer belongs to (PROTOCOL §13.4: its
        transfer id is 32 hex digits the group service knows), else None."""
        check = self._group_offer_check
        text = offer.transfer_id
        if check is None or len(text) != 32 or any(ch not in "0123456789abcdef" for ch in text):
            return None
        try:
            group_id = check(link, bytes.fromhex(text))
        except Exception:  # the group service's bug: the offer is judged as an ordinary one
            log.exception("group offer check failed for %s", link.name)
            return None
        return group_id if isinstance(group_id, bytes) and len(group_id) == 16 else None

    def _finished_answer(self, link: Link, tid: bytes) -> AnswerRecord:
        """The answer about a transfer no longer in memory (finished this run, or unknown)."""
        return _state_answer(tid, self._finished.get((link.fingerprint, tid, "in")), "unknown transfer")

    def _known_incoming(self, link: Link, offer: Offer) -> Optional[dict]:
        if not offer.transfer_id or transfer_wire_id(offer.transfer_id) != offer.tid:
            return None
        row = self.store.transfers.get(offer.transfer_id)
        if row is None or row["direction"] != "in":
            return None
        same_peer = row["contact_id"] == link.contact_id if link.contact_id is not None \
            else row["peer_fingerprint"] == link.fingerprint
        return row if same_peer else None

    def _row_answer(self, tid: bytes, row: dict) -> AnswerRecord:
        return _state_answer(tid, row["state"], (row["error"] or row["state"])[:200])

    def _check_offer(self, link: Link, offer: Offer, group_id: Optional[bytes]) -> Optional[str]:
        """Why an offer must be refused, or None. A group peer's must be a group file's."""
        if link.contact_id is None and (group_id is None or not link.group_peer):
            return "not a contact: offers are accepted from contacts only"
        if not offer.transfer_id or len(offer.transfer_id) > MAX_TRANSFER_ID_CHARS \
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in offer.transfer_id):
            return "invalid transfer id"
        if transfer_wire_id(offer.transfer_id) != offer.tid:
            return "transfer id does not match its wire id"
        if offer.size > MAX_FILE_SIZE:
            return f"file too large ({offer.size} bytes, at most {MAX_FILE_SIZE})"
        if not MIN_CHUNK <= offer.chunk_size <= MAX_CHUNK:
            return f"chunk size {offer.chunk_size} out of bounds ({MIN_CHUNK}-{MAX_CHUNK})"
        try:
            check_file_name(offer.name)
        except UnsafeName as exc:
            return str(exc)
        if offer.transfer_id in self.transfers or self.store.transfers.get(offer.transfer_id) is not None:
            return "transfer id already in use"
        waiting = [t for t in self.transfers.values() if isinstance(t, Incoming) and t.state == OFFERED]
        if sum(1 for t in waiting if t.fingerprint == link.fingerprint) >= MAX_OFFERS_PER_PEER:
            return f"too many offers waiting for an answer (at most {MAX_OFFERS_PER_PEER} per contact)"
        if len(waiting) >= MAX_OFFERS:
            return f"too many offers waiting for an answer (at most {MAX_OFFERS})"
        return None

    def _refuse(self, link: Link, offer: Offer, reason: str) -> None:
        """Answer FAILED; tell the user (at most a few times a minute per peer); remember it."""
        self.counters["file_offers_refused"] += 1
        key = (link.fingerprint, offer.tid)
        self._refused[key] = reason
        while len(self._refused) > MAX_REFUSED_REMEMBERED:
            self._refused.popitem(last=False)
        self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.FAILED, reason=reason[:200]))])
        now = time.monotonic()
        recent = self._refusal_events.setdefault(link.fingerprint, collections.deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= REFUSAL_EVENTS_PER_MINUTE:
            self.counters["file_refusal_events_suppressed"] += 1
            return
        recent.append(now)
        log.warning("refused a file offer from %s: %s", link.name, reason)
        self.publish("file_transfer_failed", {
            "transfer_id": offer.transfer_id[:MAX_TRANSFER_ID_CHARS], "peer": link.name, "direction": Direction.IN,
            "file_name": offer.name[:255], "size": offer.size, "reason": f"offer refused: {reason}"})

    def _source_changed(self, transfer: Incoming, offer: Offer) -> None:
        """The sender's file changed since it was offered: start again from nothing."""
        log.info("transfer %s: the source changed, starting over", transfer.transfer_id)
        transfer.size, transfer.tag = offer.size, offer.tag
        transfer.have, transfer.written = RangeSet(), RangeSet()
        transfer.pending.clear()
        self.pending_bytes -= transfer.pending_bytes
        transfer.pending_bytes = 0
        transfer.hasher, transfer.hash_pos, transfer.expected = hashlib.sha256(), 0, None
        transfer.released = 0  # the new bytes' pages: released as they are synced, from the start
        if transfer.fd is not None:
            try:
                os.ftruncate(transfer.fd, 0)
            except OSError:
                pass
        self._save(transfer, size=offer.size, tag=offer.tag, have="")

    # -- receiver: data ---------------------------------------------------------------------
    def _start_incoming(self, transfer: Incoming) -> None:
        now = time.monotonic()
        if transfer.started_at is None:
            transfer.started_at = now
            self.publish("file_transfer_started", self._event(transfer))
        transfer.accept_pending = True
        transfer.control_sent, transfer.control_tries = now, 1
        self._answer(transfer, Answer.ACCEPT)
        self._ensure_writer(transfer)

    def _ensure_writer(self, transfer: Incoming) -> None:
        if transfer.fd is not None and (transfer.writer is None or transfer.writer.dead):
            transfer.writer = gevent.spawn(self._writer, transfer)

    def _reopen_part(self, transfer: Incoming) -> None:
        """After a restart: open the .part and trust only what it really holds."""
        assert transfer.part_path is not None
        try:
            transfer.fd, size = self.pool.apply(open_part, (transfer.part_path, False))
        except OSError as exc:
            log.warning("cannot reopen %s: %s", transfer.part_path, exc)
            transfer.have, transfer.written = RangeSet(), RangeSet()
            return
        if size > transfer.size:  # never more than the file: what lies beyond is not ours
            self.pool.apply(os.ftruncate, (transfer.fd, transfer.size))
        if size < transfer.size:
            transfer.have.remove(size, transfer.size)
            transfer.written.remove(size, transfer.size)

    def _on_data(self, channel: Channel, link: Link, runs: list[DataRun], now: float) -> None:
        """DATA records of one batch of frames, in order, as runs of consecutive bytes of one
        transfer (`decode_data_runs`): new bytes are queued for the writers, packet numbers kept
        for the next FILE_ACK. A run of a transfer that is receiving, all new, is queued as one
        piece (a steady flow); anything else record by record."""
        fingerprint = link.fingerprint
        tid: Optional[bytes] = None
        transfer = None
        pns: list[int] = []   # accepted (acknowledged) packet numbers, in order
        size = 0              # and their file bytes
        for run_tid, start, end, pieces, run_pns in runs:
            if run_tid != tid:
                tid = run_tid
                transfer = self.by_tid.get((fingerprint, tid, "in"))
            if not isinstance(transfer, Incoming) or transfer.state != ACTIVE:
                for _ in run_pns:
                    self._unexpected_data(channel, link, transfer, run_tid, now)
                pns += run_pns
                size += end - start
                continue
            if len(pieces) > 1 and self._take_run(transfer, start, end, pieces):
                pns += run_pns
                size += end - start
                continue
            offset = start
            for pn, piece in zip(run_pns, pieces):
                if self._take_data(transfer, offset, piece):
                    pns.append(pn)
                    size += len(piece)
                else:
                    channel.window_starved = True
                offset += len(piece)
        if pns:
            self._note_packets(channel, pns, size, now)

    def _take_run(self, transfer: Incoming, start: int, end: int, views: list[memoryview]) -> bool:
        """Queue contiguous bytes [start, end) of several DATA records as one piece, when they
        are all new and fit: True. False (nothing done) for anything else, which the caller
        takes record by record."""
        if end > transfer.size or transfer.have.overlaps(start, end) \
                or self.pending_bytes + (end - start) > MAX_PENDING_WRITES:
            return False
        transfer.accept_pending = False
        transfer.wire_bytes += end - start
        self._queue(transfer, start, end, views)
        return True

    def _take_data(self, transfer: Incoming, offset: int, view: memoryview) -> bool:
        """Queue the new bytes of one DATA record for the writer; False if the disk is too far
        behind to take them (then they are not acknowledged)."""
        length = len(view)
        end = offset + length
        transfer.accept_pending = False
        transfer.wire_bytes += length
        if end > transfer.size:
            self._fail(transfer, f"protocol violation: data beyond the end of the file "
                                 f"({end} > {transfer.size} bytes)", LOCAL, keep_part=False)
            self._answer(transfer, Answer.FAILED, "data beyond the end of the file")
            return True
        have = transfer.have
        new = length and not have.overlaps(offset, end)  # all new: the usual case
        if not new and (not length or have.contains(offset, end)):
            self.counters["file_data_duplicate"] += 1
            return True
        if self.pending_bytes + length > MAX_PENDING_WRITES:
            self.counters["file_data_backlog_drops"] += 1
            return False
        if new:
            self._queue(transfer, offset, end, [view])
        else:
            for start, stop in have.complement(offset, end):
                self._queue(transfer, start, stop, [view[start - offset:stop - offset]])
        return True

    def _queue(self, transfer: Incoming, start: int, stop: int, views: list[memoryview]) -> None:
        """Bytes [start, stop), new, held in `views`: pending for the writer, and held."""
        was = transfer.pending_bytes
        pending = transfer.pending
        if pending and pending[-1][1] == start:  # continues the last run: the usual case
            run = pending[-1]
            run[1] = stop
            run[2] += views
        else:
            pending.append([start, stop, views])
        transfer.have.add(start, stop)
        transfer.pending_bytes += stop - start
        self.pending_bytes += stop - start
        # The writer gathers a batch: wake it for the first bytes, a full batch, the last.
        if not was or transfer.pending_bytes >= WRITE_BATCH or transfer.have.total >= transfer.size:
            transfer.wake.set()

    def _unexpected_data(self, channel: Channel, link: Link, transfer, tid: bytes, now: float) -> None:
        """DATA for a transfer that is not receiving: tell the sender (at most 5 times a second
        per transfer) what became of it."""
        self.counters["file_data_unexpected"] += 1
        last = channel.answer_sent.get(tid, 0.0)
        if now - last > 0.2:
            channel.answer_sent[tid] = now
            if isinstance(transfer, Incoming):
                self._send_control(link, [to_raw(self._state_answer(transfer))])
            else:
                self._send_control(link, [to_raw(self._finished_answer(link, tid))])

    @staticmethod
    def _note_packets(channel: Channel, pns: list[int], size: int, now: float) -> None:
        """Packet numbers received (in arrival order) for the next FILE_ACK; a gap or a late
        one asks for that ACK at once."""
        rx = channel.rx
        start = stop = -1
        for pn in pns:
            if pn == stop:
                stop += 1
                continue
            if stop >= 0:
                rx.add(start, stop)
            last = rx.last()
            if last is not None and pn != last[1]:
                channel.ack_now = True
            start, stop = pn, pn + 1
        rx.add(start, stop)
        if len(rx) > MAX_ACK_RANGES:
            rx.keep_last(MAX_ACK_RANGES)
        top = max(pns)
        if top > channel.rx_largest:
            channel.rx_largest, channel.rx_largest_time = top, now
        channel.rx_unacked += len(pns)
        channel.rx_unacked_bytes += size

    def _send_ack(self, channel: Channel, now: float) -> None:
        if channel.ack_timer is not None:
            channel.ack_timer.kill(block=False)
            channel.ack_timer = None
        channel.rx_unacked = channel.rx_unacked_bytes = 0
        channel.ack_now = False
        ranges = tuple((start, end - 1) for start, end in reversed(list(channel.rx)))[:MAX_ACK_RANGES]
        if not ranges:
            return
        delay = max(0, int((now - channel.rx_largest_time) * 1e6))
        window = max(0, MAX_PENDING_WRITES - self.pending_bytes)
        body = AckRecord(ranges, min(delay, 0xFFFFFFFF), window).encode()
        self.network.send_payloads(channel.link, [wire.RECORD_HEADER.pack(FileRecordType.ACK, len(body)) + body])

    def _window_opened(self, now: float) -> None:
        """Room was made for received bytes: a link whose DATA was refused for want of it hears
        the new window at once (an ACK), instead of from a probe timeout that would also make
        its sender back off."""
        if MAX_PENDING_WRITES - self.pending_bytes < WINDOW_UPDATE_AT:
            return
        for channel in self.channels.values():
            if channel.window_starved:
                channel.window_starved = False
                if channel.link.connected:
                    self.counters["file_window_updates"] += 1
                    self._send_ack(channel, now)

    def _ack_timeout(self, channel: Channel) -> None:
        channel.ack_timer = None
        if channel.rx_unacked and channel.link.connected:
            self._send_ack(channel, time.monotonic())

    def _on_end(self, link: Link, end: End) -> None:
        transfer = self.by_tid.get((link.fingerprint, end.tid, "in"))
        if not isinstance(transfer, Incoming):
            self._send_control(link, [to_raw(self._finished_answer(link, end.tid))])
            return
        if transfer.state != ACTIVE:
            self._send_control(link, [to_raw(self._state_answer(transfer))])
            return
        if end.size != transfer.size:
            self._fail(transfer, "protocol violation: END gives another size", LOCAL, keep_part=False)
            self._answer(transfer, Answer.FAILED, "END size does not match the offer")
            return
        transfer.expected = end.sha256
        transfer.wake.set()

    def _writer(self, transfer: Incoming) -> None:
        """Writes, hashes and syncs one incoming transfer's data; finishes it."""
        try:
            while not self._stopping and transfer.state in (ACTIVE, PAUSED) and transfer.fd is not None:
                if not transfer.pending and transfer.written.prefix_end(0) <= transfer.hash_pos:
                    # Caught up. A paused transfer, or one whose data stopped for a while (a
                    # peer gone quiet), gives its direct-write buffer back: a transfer that
                    # moves can take it, and memory stays flat. Everything it held is in the
                    # file; a new stage reads back the partial block when the data resumes.
                    if transfer.state == PAUSED:
                        self._release_stage(transfer)
                    if not transfer.wake.wait(SYNC_INTERVAL):
                        self._release_stage(transfer)
                    transfer.wake.clear()
                if (transfer.pending and transfer.pending_bytes < WRITE_BATCH
                        and transfer.have.total < transfer.size and not self._stopping):
                    # Gather a batch: every hand-off to a thread costs the event loop a GIL
                    # round trip, so a few MiB go at once (the ACK window allows 16).
                    transfer.wake.clear()
                    transfer.wake.wait(WRITE_WAIT)
                    transfer.wake.clear()
                self._write_pending(transfer)
                if transfer.fd is None or transfer.state not in (ACTIVE, PAUSED):
                    break
                caught_up = not transfer.pending and transfer.written.prefix_end(0) <= transfer.hash_pos
                if transfer.unsynced and (transfer.syncer is None or transfer.syncer.dead) and (
                        transfer.unsynced >= SYNC_BYTES
                        or caught_up and time.monotonic() - transfer.synced_at >= SYNC_INTERVAL):
                    # In the background, never in the writer's way: a steady flow would otherwise
                    # wait for the whole file's final fsync, and a writer waiting for a sync
                    # (tens to hundreds of ms) lets the ACK window fill, and DATA is dropped.
                    transfer.syncer = gevent.spawn(self._background_sync, transfer)
                if not caught_up:
                    continue  # more to write or hash: no waiting yet
                if (transfer.state == ACTIVE and transfer.expected is not None and not transfer.pending
                        and transfer.written.total == transfer.size and transfer.hash_pos == transfer.size):
                    self._finish_incoming(transfer)
                    return
            if self._stopping and transfer.fd is not None:
                self._write_pending(transfer)
                self._join_syncer(transfer)
                if transfer.unsynced:
                    self._sync(transfer)
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {os_reason(exc)}", LOCAL)
        finally:
            self._join_syncer(transfer)  # it uses the file: done before the file is closed
            transfer.writer = None
            if transfer.transfer_id not in self.transfers or self._stopping or transfer.release:
                transfer.release = False
                self._close_fd(transfer)

    def _write_pending(self, transfer: Incoming) -> None:
        """Write what is pending and hash what then continues the hashed prefix, in one
        hand-off to the thread pool."""
        if transfer.fd is None:
            return
        runs: list[tuple[int, list]] = []
        size = 0
        before = transfer.written
        written = before
        if transfer.pending:
            # Runs of contiguous bytes, as they came; a late piece starts a run of its own:
            # sorted, and neighbours joined, each run is one pwritev.
            batch, transfer.pending = sorted(transfer.pending, key=lambda run: run[0]), []
            written = before.copy()
            run_end = -1
            for start, stop, views in batch:
                size += stop - start
                written.add(start, stop)
                if start == run_end:
                    runs[-1][1].extend(views)
                else:
                    runs.append((start, views))
                run_end = stop
            transfer.pending_bytes -= size
            self.pending_bytes -= size
        hasher, start = transfer.hasher, transfer.hash_pos
        frontier = min(written.prefix_end(0), start + HASH_STEP)
        if not runs and frontier <= start:
            return
        stage = transfer.stage
        if stage is None and transfer.part_path is not None and runs and self._direct_stages() < MAX_DIRECT_STAGES:
            stage = transfer.stage = DirectStage(transfer.part_path)
        direct_before = stage.direct_bytes if stage is not None else 0
        position, hashed = self.pool.apply(write_and_hash, (transfer.fd, runs, hasher, start, frontier, stage))
        if stage is not None:
            if stage.direct_bytes != direct_before:
                self.counters["file_direct_bytes"] += stage.direct_bytes - direct_before
            if stage.retired and stage is transfer.stage and stage.refusal is not None:
                log.info("writing %s through the page cache: direct I/O refused (%s)",
                         transfer.part_path, stage.refusal)
                self.counters["file_direct_refused"] += 1
                stage.refusal = None  # said once
        if runs:
            self._window_opened(time.monotonic())
        if runs and transfer.written is before:  # else the source changed meanwhile: start over
            transfer.written = written
            transfer.unsynced += size
        if hasher is transfer.hasher and transfer.hash_pos == start:  # else the source changed meanwhile
            transfer.hasher, transfer.hash_pos = hashed, position

    @staticmethod
    def _release_stage(transfer: Incoming) -> None:
        """Free the transfer's direct-write buffer and descriptor (the bytes it held are in the
        file already), so that its slot goes to the next transfer that writes."""
        if transfer.stage is not None:
            transfer.stage.close()
            transfer.stage = None

    def _direct_stages(self) -> int:
        """Direct-write buffers held now (a retired stage holds none)."""
        return sum(1 for t in self.transfers.values()
                   if isinstance(t, Incoming) and t.stage is not None and not t.stage.retired)

    def _sync(self, transfer: Incoming) -> None:
        """Make the written bytes durable, then (only then) record the chunks they complete.
        Bytes written while the sync runs count as unsynced: the next sync covers them."""
        chunks = chunk_ranges(transfer.written, transfer.chunk_size, transfer.size)
        if transfer.fd is None:
            return
        transfer.unsynced = 0
        hashed = transfer.hash_pos  # written before this sync starts: it covers them
        released = self.pool.apply(sync_and_release, (transfer.fd, transfer.released, hashed))
        transfer.released = max(transfer.released, released)
        transfer.synced_at = time.monotonic()
        self._save(transfer, have=format_ranges(chunks))

    def _background_sync(self, transfer: Incoming) -> None:
        try:
            self._sync(transfer)
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {os_reason(exc)}", LOCAL)

    @staticmethod
    def _join_syncer(transfer: Incoming) -> None:
        syncer = transfer.syncer
        if syncer is not None and syncer is not gevent.getcurrent():
            syncer.join()

    def _finish_incoming(self, transfer: Incoming) -> None:
        # The part file holds exactly the declared size before the hash decides: bytes beyond
        # it, whatever put them there, must not reach the verified file.
        assert transfer.fd is not None
        try:
            self.pool.apply(os.ftruncate, (transfer.fd, transfer.size))
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {os_reason(exc)}", LOCAL)
            return
        digest = transfer.hasher.digest()
        if digest != transfer.expected:
            self._fail(transfer, "SHA-256 mismatch: the bytes received are not the file sent", LOCAL,
                       keep_part=False)
            self._answer(transfer, Answer.FAILED, "SHA-256 mismatch")
            return
        self._join_syncer(transfer)
        self._release_stage(transfer)
        fd, transfer.fd = transfer.fd, None
        assert fd is not None and transfer.part_path is not None
        try:
            path = self.pool.apply(finalize, (fd, transfer.part_path, self.downloads_dir, transfer.name))
        except OSError as exc:
            self._fail(transfer, f"cannot save {transfer.name}: {os_reason(exc)}", LOCAL)
            return
        transfer.path, transfer.sha256 = path, digest.hex()
        self._set_state(transfer, COMPLETED, path=path, sha256=transfer.sha256,
                        have=format_ranges(chunk_ranges(transfer.written, transfer.chunk_size, transfer.size)))
        self._answer(transfer, Answer.COMPLETE)
        elapsed = time.monotonic() - (transfer.started_at or time.monotonic())
        self.counters["files_received"] += 1
        self.publish("file_received", self._event(transfer, path=path, sha256=transfer.sha256))
        self.publish("file_transfer_completed", self._event(transfer, path=path, sha256=transfer.sha256,
                                                             seconds=round(elapsed, 3), wire_bytes=transfer.wire_bytes))
        self._forget(transfer)

    def _discard_part(self, transfer: Incoming) -> None:
        self._release_fd(transfer)
        if transfer.part_path:
            try:
                os.unlink(transfer.part_path)
            except OSError:
                pass


def _state_answer(tid: bytes, state: Optional[str], failure: str) -> AnswerRecord:
    """The ANSWER for a transfer that ended in `state`; `failure` says why when it did not end well."""
    if state == COMPLETED:
        return AnswerRecord(tid, Answer.COMPLETE)
    if state == REJECTED:
        return AnswerRecord(tid, Answer.REJECT, reason="rejected by the receiver")
    if state == CANCELLED:
        return AnswerRecord(tid, Answer.CANCELLED, reason="cancelled")
    return AnswerRecord(tid, Answer.FAILED, reason=failure)
