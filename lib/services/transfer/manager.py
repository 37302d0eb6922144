"""File transfers over the encrypted links: offers, paced windowed sending, resume, verification.

The wire protocol is docs/PROTOCOL.md §10 (codecs in `filecodec`, loss detection and the
BBR-lite congestion controller in `congestion`). This module is the gevent I/O layer around
them, a `LinkObserver` of `peers.Network`:

* Sender: an `Outgoing` per transfer. Its reader greenlet reads the file in 4 MiB blocks in
  gevent's thread pool and hashes them in order while reading (SHA-256 runs in the thread, with
  the GIL released), so sending starts at once and the hash is ready at the end. One pump
  greenlet per node sends DATA records round-robin over the active transfers of each peer
  (`Channel`), paced by that link's congestion controller; ACK ranges free the blocks, losses
  queue exactly the missing bytes again. END carries the SHA-256 once everything is delivered.
* Receiver: an `Incoming` per transfer. Received bytes are queued for a writer greenlet that
  writes them to `DOWNLOADS/.chatp2p-partial/<id>.part` in the thread pool (pwritev, batches of a
  few MiB) and hashes what is contiguous in the same hand-off; every 16 MiB it fdatasyncs the .part and only then records the chunks held in
  the store, so after a crash the store never claims bytes the disk lost (and drops the
  synced, hashed prefix from the page cache). When the bytes are
  all there and the hash matches END's, the file is fsynced and linked to its final name in
  the downloads dir (never overwriting: `name (1).ext`).
* Resume: whenever a session comes up the sender offers its unfinished transfers again; the
  receiver answers ACCEPT with the chunks it holds, and only the rest is sent. The offer
  carries a tag of the source (size, mtime, hash of the first chunk): a changed file restarts
  from zero on both sides.

Chat is never queued behind files: messages are sealed and sent the moment they are written,
while file data goes out only as the pacing allows and only when the event loop is otherwise
idle (the pump waits in `gevent.idle`), and the transport yields between batches of received
datagrams."""

from __future__ import annotations

import collections
import logging
import os
import time
import uuid
from typing import Callable, Optional, Union

import gevent
import gevent.event

from ...codec import wire
from ..congestion import Bbr
from ...codec.filecodec import (
    DEFAULT_CHUNK, FILE_TYPES, MAX_CHUNK, MAX_FILE_SIZE, MAX_TRANSFER_ID_CHARS, MIN_CHUNK, AckRecord,
    Answer, AnswerRecord, End, FileRecordType, Halt, HaltRecord, Offer, Probe, ProbeAck, RangeSet,
    UnsafeName, check_file_name, DataRun, decode_data_runs, decode_file_record, as_raw_record, to_raw,
)
from ...contract import Direction, FileTransferProgress, Side, TransferRef, TransferState, TransferView
from ...crypto.identity import short_id
from ...net.peers import Link, Network
from ...store import Contact, DuplicateError, Store
from ...util import TokenBucket
from ...codec.wire import RawRecord, WireError

from .model import (
    ACK_EVERY, ACK_MIN_BYTES, ACK_BYTES, ACK_DELAY, PROGRESS_INTERVAL, CONTROL_RTO, CONTROL_MAX_RTO,
    MAX_REFUSED_REMEMBERED, Publish, QUEUED, OFFERED, ACTIVE, PAUSED, COMPLETED, FAILED, REJECTED,
    CANCELLED, TERMINAL, LOCAL, PEER, TransferError, InvalidTransferRequest, TransferNotFound, os_reason,
    Transfer, Outgoing, Incoming, Channel,
)
from .disk import open_source, part_path_for, open_part, free_space
from .receiver import Receiving
from .sender import Sending
from .pmtu import PathMtu
from .pump import Pump

log = logging.getLogger("chatp2p.transfer")
DATA_TYPE = int(FileRecordType.DATA)  # compared for every record received: a plain int

GroupOfferCheck = Callable[[Link, bytes], Optional[bytes]]  # (link, transfer id) -> group id or None


# -- the manager ----------------------------------------------------------------------------------
class Transfers(Receiving, Sending, PathMtu, Pump):
    """Every file transfer of one node; a LinkObserver of its Network."""

    takes_file_records = True  # the file protocol's records come here, and only here

    def __init__(self, store: Store, network: Network, publish: Publish, downloads_dir: str,
                 auto_accept: bool = False, upload_limit: int = 0) -> None:
        self.store = store
        self.network = network
        self.publish = publish
        self.downloads_dir = os.path.abspath(os.path.expanduser(downloads_dir))
        self.auto_accept = auto_accept
        self.upload_limit = float(upload_limit)      # bytes/s for all sending, 0 = none
        self.counters = network.counters
        self.pool = gevent.get_hub().threadpool
        self.transfers: dict[str, Transfer] = {}
        self.by_tid: dict[tuple[bytes, bytes, str], Transfer] = {}   # (peer fp, tid, direction)
        self.channels: dict[bytes, Channel] = {}
        self.pending_bytes = 0
        self._upload_bucket = TokenBucket(rate=self.upload_limit, burst=0.0, now=time.monotonic(), tokens=0.0)
        self._refused: collections.OrderedDict[tuple[bytes, bytes], str] = collections.OrderedDict()
        self._refusal_events: dict[bytes, collections.deque] = {}
        self._finished: collections.OrderedDict[tuple[bytes, bytes, str], str] = collections.OrderedDict()
        self._wake = gevent.event.Event()
        self._stopping = False
        self._pump: Optional[gevent.Greenlet] = None
        self._group_offer_check: Optional[GroupOfferCheck] = None
        network.observers.append(self)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load unfinished transfers and start the pump."""
        for row in reversed(self.store.transfers.recent((QUEUED, OFFERED, ACTIVE, PAUSED, FAILED), limit=100000)):
            peer = self._row_peer(row)
            if peer is None:
                continue
            transfer: Transfer
            if row["direction"] == "out":
                transfer = Outgoing(row, *peer)
            else:
                transfer = Incoming(row, *peer)
            self._register(transfer)
            if isinstance(transfer, Incoming) and transfer.state in (ACTIVE, PAUSED, FAILED) and transfer.part_path:
                self._reopen_part(transfer)
                if transfer.state in (ACTIVE, PAUSED):
                    self._ensure_writer(transfer)  # it re-hashes what the .part holds
        self._pump = gevent.spawn(self._pump_loop)

    def stop(self) -> None:
        """Flush what was received, record it, close files. Bounded: about a second at most."""
        self._stopping = True
        if self._pump is not None:
            self._pump.kill(block=False)
        workers = []
        for transfer in self.transfers.values():
            worker = transfer.reader if isinstance(transfer, Outgoing) else transfer.writer
            transfer.wake.set()
            if worker is not None:
                workers.append(worker)
        gevent.joinall(workers, timeout=1.5)
        for transfer in self.transfers.values():
            if isinstance(transfer, Incoming) and transfer.writer is None and transfer.fd is not None:
                self._close_fd(transfer)
            elif isinstance(transfer, Outgoing) and transfer.reader is None and transfer.fd is not None:
                self._close_fd(transfer)

    def _row_peer(self, row: dict) -> Optional[tuple[bytes, str]]:
        """(fingerprint, name) of a stored transfer's peer: its contact, or a group peer
        (named by its short ID); None if the contact is gone."""
        if row["contact_id"] is None:
            fingerprint = bytes(row["peer_fingerprint"])
            return fingerprint, short_id(fingerprint)
        try:
            contact = self.store.contacts.get_by_id(row["contact_id"])
        except Exception:
            return None
        return contact.fingerprint, contact.name

    def _close_fd(self, transfer: Transfer) -> None:
        if isinstance(transfer, Incoming):
            self._release_stage(transfer)
        if transfer.fd is not None:
            try:
                os.close(transfer.fd)
            except OSError:
                pass
            transfer.fd = None

    def _register(self, transfer: Transfer) -> None:
        self.transfers[transfer.transfer_id] = transfer
        self.by_tid[(transfer.fingerprint, transfer.tid, transfer.direction)] = transfer

    def _save(self, transfer: Transfer, **fields) -> None:
        try:
            self.store.transfers.update(transfer.transfer_id, **fields)
        except Exception as exc:  # the transfer goes on; the log says why its state may lag
            log.warning("cannot record transfer %s: %s", transfer.transfer_id, exc)

    def _set_state(self, transfer: Transfer, state: str, stopped_by: Optional[str] = None,
                   error: Optional[str] = None, **fields) -> None:
        transfer.state, transfer.stopped_by = state, stopped_by
        if error is not None or state not in (FAILED,):
            transfer.error = error
        self._save(transfer, state=state, stopped_by=stopped_by, error=transfer.error, **fields)

    # -- API --------------------------------------------------------------------------------
    def send_file(self, contact: Contact, file_path: str, chunk_size: Optional[int],
                  transfer_id: Optional[str]) -> tuple[Outgoing, bool]:
        """Offer a file to a contact (queued if it is offline). (transfer, offered now)."""
        if contact.blocked:
            raise TransferError(f"{contact.name} is blocked: unblock the contact to send it files")
        transfer_id = self._check_new_id(transfer_id)
        transfer = self._new_outgoing(contact.fingerprint, contact.name, file_path, chunk_size, transfer_id,
                                      contact_id=contact.id)
        link = self.network.links.get(contact.fingerprint)
        if link is not None and link.connected:
            self._offer(link, transfer, time.monotonic())
            return transfer, True
        return transfer, False

    def send_file_to_link(self, link: Link, file_path: str, transfer_id: bytes, group_id: bytes) -> Outgoing:
        """Offer a group file to one member (PROTOCOL §13.4): a contact or a group peer. The
        transfer id is the announcement's (32 hex digits of `transfer_id` on the wire); offered
        now if the link is up, else whenever a session with that member comes up."""
        if not isinstance(transfer_id, bytes) or len(transfer_id) != 16 \
                or not isinstance(group_id, bytes) or len(group_id) != 16:
            raise InvalidTransferRequest("a group file's transfer id and group id are 16 bytes each")
        if link.contact_id is None and not link.group_peer:
            raise TransferError(f"{link.name} is neither a contact nor a member of a group we are in")
        text_id = self._check_new_id(transfer_id.hex())
        transfer = self._new_outgoing(link.fingerprint, link.name, file_path, None, text_id,
                                      contact_id=link.contact_id, group_id=group_id)
        if link.connected:
            self._offer(link, transfer, time.monotonic())
        return transfer

    def set_group_offer_check(self, check: Optional[GroupOfferCheck]) -> None:
        """Offers whose transfer id `check(link, id)` maps to a group are a group file's: taken
        from group peers too (not only contacts), and `file_offer` names the group."""
        self._group_offer_check = check

    def _new_outgoing(self, fingerprint: bytes, peer: str, file_path: str, chunk_size: Optional[int],
                      transfer_id: str, contact_id: Optional[int], group_id: Optional[bytes] = None) -> Outgoing:
        """Open the source, record the transfer (QUEUED) and register it."""
        chunk_size = DEFAULT_CHUNK if chunk_size is None else chunk_size
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise InvalidTransferRequest(f"chunk_size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        path = os.path.expanduser(file_path)
        if not os.path.isabs(path):
            raise InvalidTransferRequest(f"file_path must be an absolute path, got {file_path!r}")
        try:
            name = check_file_name(os.path.basename(path))
        except UnsafeName as exc:
            raise InvalidTransferRequest(f"Cannot send {file_path}: {exc}") from None
        try:
            fd, size, _, tag = self.pool.apply(open_source, (path, chunk_size))
        except OSError as exc:
            reason = f"Cannot read {file_path}: {os_reason(exc)}"
            self.publish("file_transfer_failed", {"transfer_id": transfer_id, "peer": peer,
                                                  "direction": Direction.OUT, "file_name": name, "size": None,
                                                  "reason": reason})
            raise TransferError(reason) from None
        if size > MAX_FILE_SIZE:
            os.close(fd)
            raise TransferError(f"{file_path} is too large ({size} bytes, at most {MAX_FILE_SIZE})")
        try:
            row = self.store.transfers.add(transfer_id=transfer_id, contact_id=contact_id, direction="out",
                                          file_name=name, path=path, size=size, chunk_size=chunk_size,
                                          tag=tag, state=QUEUED, group_id=group_id,
                                          peer_fingerprint=fingerprint if contact_id is None else None)
        except DuplicateError as exc:
            os.close(fd)
            raise TransferError(str(exc)) from None
        transfer = Outgoing(row, fingerprint, peer)
        transfer.fd = fd
        self._register(transfer)
        return transfer

    def _check_new_id(self, transfer_id: Optional[str]) -> str:
        if transfer_id is None or transfer_id == "":
            return uuid.uuid4().hex
        if len(transfer_id) > MAX_TRANSFER_ID_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in transfer_id):
            raise InvalidTransferRequest(f"transfer_id must be 1-{MAX_TRANSFER_ID_CHARS} printable characters")
        if transfer_id in self.transfers or self.store.transfers.get(transfer_id) is not None:
            raise TransferError(f"transfer_id {transfer_id!r} is already used")
        return transfer_id

    def get(self, transfer_id: str) -> Transfer:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            row = self.store.transfers.get(transfer_id)
            if row is None:
                raise TransferNotFound(f"Transfer not found: {transfer_id}")
            raise TransferError(f"Transfer {transfer_id} is {row['state']}")
        return transfer

    def accept(self, transfer_id: str, save_as: Optional[str]) -> Incoming:
        transfer = self.get(transfer_id)
        if not isinstance(transfer, Incoming) or transfer.state != OFFERED:
            raise TransferError(f"Transfer {transfer_id} is not an offer waiting for an answer "
                                f"(it is {transfer.direction}, {transfer.state})")
        if save_as:
            try:
                name = check_file_name(save_as)
            except UnsafeName as exc:
                raise InvalidTransferRequest(f"save_as must be a bare file name: {exc}") from None
            if name != save_as:
                raise InvalidTransferRequest(f"save_as must be a bare file name that is valid everywhere, "
                                    f"for example {name!r}")
            transfer.name = name
        try:
            free = self.pool.apply(free_space, (self.downloads_dir,))
        except OSError as exc:
            raise TransferError(f"Cannot use the downloads dir {self.downloads_dir}: {os_reason(exc)}") from None
        if free < transfer.size:
            raise TransferError(f"Not enough space in {self.downloads_dir}: the file needs {transfer.size} bytes, "
                                f"{free} are free")
        transfer.part_path = part_path_for(self.downloads_dir, transfer.tid)
        try:
            transfer.fd, _ = self.pool.apply(open_part, (transfer.part_path, True))
        except OSError as exc:
            raise TransferError(f"Cannot write in {self.downloads_dir}: {os_reason(exc)}") from None
        self._set_state(transfer, ACTIVE, file_name=transfer.name, part_path=transfer.part_path)
        self._start_incoming(transfer)
        return transfer

    def reject(self, transfer_id: str) -> Incoming:
        transfer = self.get(transfer_id)
        if not isinstance(transfer, Incoming) or transfer.state != OFFERED:
            raise TransferError(f"Transfer {transfer_id} is not an offer waiting for an answer")
        self._set_state(transfer, REJECTED, LOCAL)
        self._answer(transfer, Answer.REJECT, "rejected by the receiver")
        self._forget(transfer)
        return transfer

    def cancel(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state in TERMINAL:
            raise TransferError(f"Transfer {transfer_id} is already {transfer.state}")
        self._set_state(transfer, CANCELLED, LOCAL, "cancelled")
        if isinstance(transfer, Outgoing):
            self._halt(transfer, Halt.CANCELLED, "cancelled by the sender")
        else:
            self._answer(transfer, Answer.CANCELLED, "cancelled by the receiver")
            self._discard_part(transfer)
        self.publish("file_transfer_failed", self._event(transfer, reason="cancelled"))
        self._forget(transfer)
        return transfer

    def pause(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state not in (QUEUED, OFFERED, ACTIVE):
            raise TransferError(f"Transfer {transfer_id} cannot be paused: it is {transfer.state}")
        self._set_state(transfer, PAUSED, LOCAL)
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
            self._halt(transfer, Halt.PAUSED, "paused by the sender")
        else:
            self._answer(transfer, Answer.PAUSED)
        self.publish("file_transfer_paused", self._event(transfer, by=LOCAL))
        return transfer

    def resume(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state == PAUSED and transfer.stopped_by == PEER:
            raise TransferError(f"Transfer {transfer_id} was paused by {transfer.peer}: only they can resume it")
        if transfer.state not in (PAUSED, FAILED):
            raise TransferError(f"Transfer {transfer_id} is not paused or failed (it is {transfer.state})")
        now = time.monotonic()
        link = self.network.links.get(transfer.fingerprint)
        connected = link is not None and link.connected
        if isinstance(transfer, Outgoing):
            self._set_state(transfer, QUEUED, error=None)
            if connected:
                self._offer(link, transfer, now)  # type: ignore[arg-type]
        else:
            if transfer.part_path is None:
                raise TransferError(f"Transfer {transfer_id} has no partial file to resume")
            if transfer.fd is None:
                self._reopen_part(transfer)
            self._set_state(transfer, ACTIVE, error=None)
            self._start_incoming(transfer)
        self.publish("file_transfer_resumed", self._event(transfer))
        return transfer

    def list(self) -> list[TransferView]:
        now = time.monotonic()
        views = [t.view(now) for t in self.transfers.values()]
        seen = set(self.transfers)
        for row in self.store.transfers.recent(limit=200):
            if row["transfer_id"] not in seen:
                known = self._row_peer(row)
                peer = known[1] if known is not None else None
                views.append({"transfer_id": row["transfer_id"], "peer": peer, "direction": Direction(row["direction"]),
                              "file_name": row["file_name"], "size": row["size"], "path": row["path"],
                              "state": TransferState(row["state"]),
                              "bytes": row["size"] if row["state"] == COMPLETED else 0,
                              "rate": 0, "eta": None, "sha256": row["sha256"], "error": row["error"],
                              "stopped_by": Side(row["stopped_by"]) if row["stopped_by"] else None,
                              "wire_bytes": 0})
        return views

    def contact_removed(self, fingerprint: bytes) -> None:
        """The contact is gone (its rows went with it): drop its transfers from memory."""
        for transfer in [t for t in self.transfers.values() if t.fingerprint == fingerprint]:
            if isinstance(transfer, Outgoing):
                self._stop_sending(transfer)
            self._forget(transfer)

    def _forget(self, transfer: Transfer) -> None:
        """A finished transfer leaves memory (its row stays): stop its workers, close its file."""
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
        self.transfers.pop(transfer.transfer_id, None)
        self.by_tid.pop((transfer.fingerprint, transfer.tid, transfer.direction), None)
        self._finished[(transfer.fingerprint, transfer.tid, transfer.direction)] = transfer.state
        while len(self._finished) > MAX_REFUSED_REMEMBERED:
            self._finished.popitem(last=False)
        self._release_fd(transfer)

    def _event(self, transfer: Transfer, **extra) -> TransferRef:
        """The fields every file event shares (contract.TransferRef), plus the event's own."""
        data: TransferRef = {"transfer_id": transfer.transfer_id, "peer": transfer.peer,
                             "direction": transfer.direction, "file_name": transfer.name, "size": transfer.size}
        data.update(extra)  # type: ignore[typeddict-item]
        return data

    # -- LinkObserver -----------------------------------------------------------------------
    def link_up(self, link: Link) -> None:
        now = time.monotonic()
        self.channels[link.fingerprint] = Channel(link, now)
        for transfer in list(self.transfers.values()):
            if transfer.fingerprint != link.fingerprint:
                continue
            if isinstance(transfer, Outgoing):
                transfer.accepted = transfer.answered = False
                if transfer.state in (QUEUED, OFFERED, ACTIVE):
                    gevent.spawn(self._offer, link, transfer, now)  # it reads the file: not here
            elif transfer.state == ACTIVE:
                self._ensure_writer(transfer)
                self._answer(transfer, Answer.ACCEPT)
                transfer.accept_pending = True
                transfer.control_sent, transfer.control_tries = now, 1

    def path_changed(self, link: Link) -> None:
        """The session moved to a validated new address: the datagram size probed on the old
        path does not hold there, nor does its bandwidth. Back to 1200-byte datagrams and a
        fresh congestion controller; the probe searches the new path again."""
        channel = self.channels.get(link.fingerprint)
        if channel is None:
            return
        now = time.monotonic()
        channel.max_datagram = wire.MAX_DATAGRAM
        channel.bbr = Bbr(wire.MAX_DATAGRAM, now)
        channel.probe_id = channel.probe_size = channel.probe_tries = channel.ptos = channel.check_id = 0
        channel.probe_done = False
        channel.probe_after = now
        self.counters["transfer_path_changes"] += 1

    def link_down(self, link: Link) -> None:
        channel = self.channels.pop(link.fingerprint, None)
        if channel is not None and channel.ack_timer is not None:
            channel.ack_timer.kill(block=False)
        for transfer in self.transfers.values():
            if transfer.fingerprint == link.fingerprint and isinstance(transfer, Outgoing):
                transfer.accepted = transfer.answered = False
                if transfer.state == ACTIVE:
                    transfer.state = OFFERED  # in memory: it resumes with the next session

    def tick(self, now: float) -> None:
        for transfer in list(self.transfers.values()):
            link = self.network.links.get(transfer.fingerprint)
            connected = link is not None and link.connected
            if connected:
                self._control_timers(link, transfer, now)  # type: ignore[arg-type]
            if transfer.state == ACTIVE and now - transfer.meter.published_at >= PROGRESS_INTERVAL:
                done = transfer.done_bytes()
                transfer.meter.sample(now, done)
                if done != transfer.meter.published_bytes:
                    transfer.meter.published_at, transfer.meter.published_bytes = now, done
                    rate = transfer.meter.rate(now)
                    progress: FileTransferProgress = self._event(  # type: ignore[assignment]
                        transfer, bytes=done, rate=round(rate),
                        eta=round((transfer.size - done) / rate, 1) if rate > 0 else None)
                    self.publish("file_transfer_progress", progress)
        for channel in self.channels.values():
            if channel.senders and channel.link.connected:
                self._probe(channel, now)
                if log.isEnabledFor(logging.DEBUG) and int(now * 2) != int((now - 0.02) * 2):
                    bbr, rec = channel.bbr, channel.recovery
                    log.debug("to %s: %s bw %.1f MiB/s min_rtt %.2f ms srtt %.2f ms cwnd %d KiB in flight %d KiB "
                              "pacing %.1f MiB/s mtu %d hi %s pto %d", channel.link.name, bbr.mode,
                              bbr.btl_bw / 2**20, (bbr.min_rtt or 0) * 1e3, (rec.rtt.srtt or 0) * 1e3, bbr.cwnd >> 10,
                              rec.bytes_in_flight >> 10, bbr.pacing_rate / 2**20, channel.max_datagram,
                              bbr.inflight_hi, channel.ptos)

    def _control_timers(self, link: Link, transfer: Transfer, now: float) -> None:
        due = now - transfer.control_sent >= min(CONTROL_MAX_RTO, CONTROL_RTO * 2 ** max(transfer.control_tries - 1, 0))
        if not due:
            return
        if isinstance(transfer, Outgoing):
            if transfer.state == OFFERED and not transfer.answered:
                self._send_control(link, [to_raw(self._offer_record(transfer))])
            elif transfer.state == ACTIVE and transfer.accepted and not transfer.need and transfer.digest is not None:
                self._send_control(link, [to_raw(End(transfer.tid, transfer.size, transfer.digest))])
            else:
                return
        elif transfer.state == ACTIVE and transfer.accept_pending:
            self._send_control(link, [to_raw(AnswerRecord(transfer.tid, Answer.ACCEPT, transfer.have_chunks()))])
        else:
            return
        transfer.control_sent = now
        transfer.control_tries += 1

    def records(self, link: Link, records: list) -> None:
        channel = self.channels.get(link.fingerprint)
        if channel is None:
            return
        now = time.monotonic()
        data: list[DataRun]  # DATA records, as runs of consecutive bytes
        try:  # the usual batch (a burst of file data): DATA records only, all still encoded
            data = decode_data_runs(records)
        except (WireError, TypeError, IndexError):  # anything else: record by record, below
            data = []
        else:
            records = []
        for raw in records:
            try:
                if type(raw) is bytes:  # still encoded (wire.frame_records): every DATA datagram
                    if raw[0] == DATA_TYPE:
                        data += decode_data_runs([raw])
                        continue
                    raw = as_raw_record(raw)
                elif not isinstance(raw, RawRecord) or raw.rtype not in FILE_TYPES:
                    continue
                elif raw.rtype == DATA_TYPE:
                    data += decode_data_runs([wire.encode_record(raw)])
                    continue
                record = decode_file_record(raw)
            except WireError:
                self.counters["dropped_file_record"] += 1
                continue
            if data:  # what came before this record is handled before it
                self._on_data(channel, link, data, now)
                data = []
            if isinstance(record, AckRecord):
                self._on_ack(channel, record, now)
            elif isinstance(record, Offer):
                self._on_offer(link, record, now)
            elif isinstance(record, AnswerRecord):
                self._on_answer(link, record, now)
            elif isinstance(record, End):
                self._on_end(link, record)
            elif isinstance(record, HaltRecord):
                self._on_halt(link, record)
            elif isinstance(record, Probe):
                if channel.rx_unacked:  # what came before the probe is acknowledged before it
                    self._send_ack(channel, now)
                self._send_control(link, [to_raw(ProbeAck(record.probe_id, record.size))])
            elif isinstance(record, ProbeAck):
                self._on_probe_ack(channel, record)
        if data:
            self._on_data(channel, link, data, now)
        if channel.rx_unacked:
            unacked = channel.rx_unacked_bytes
            if channel.ack_now or (channel.rx_unacked >= ACK_EVERY and unacked >= ACK_MIN_BYTES) \
                    or unacked >= ACK_BYTES:
                self._send_ack(channel, now)
            elif channel.ack_timer is None:
                channel.ack_timer = gevent.spawn_later(ACK_DELAY, self._ack_timeout, channel)

    # -- control records --------------------------------------------------------------------
    def _send_control(self, link: Link, records: list) -> None:
        self.network.send_records(link, records)

    def _on_halt(self, link: Link, halt: HaltRecord) -> None:
        transfer = self.by_tid.get((link.fingerprint, halt.tid, "in"))
        if not isinstance(transfer, Incoming) or transfer.state in TERMINAL:
            return
        if halt.code == Halt.PAUSED:
            if transfer.state == ACTIVE:
                self._set_state(transfer, PAUSED, PEER)
                self.publish("file_transfer_paused", self._event(transfer, by=PEER))
        elif halt.code == Halt.CANCELLED:
            self._set_state(transfer, CANCELLED, PEER, "cancelled by the sender")
            self._discard_part(transfer)
            self.publish("file_transfer_failed", self._event(transfer, reason="cancelled by the sender"))
            self._forget(transfer)
        else:
            self._fail(transfer, f"the sender failed: {halt.reason}", PEER)

    def _release_fd(self, transfer: Transfer) -> None:
        """Close the transfer's file now, or (if a worker may be using it) when the worker ends:
        closing under a thread's feet could make it write into a file opened later."""
        worker = transfer.reader if isinstance(transfer, Outgoing) else transfer.writer
        if worker is None or worker.dead:
            self._close_fd(transfer)
        else:
            transfer.release = True
            transfer.wake.set()

    def _fail(self, transfer: Transfer, reason: str, by: str, keep_part: bool = True) -> None:
        if transfer.state in TERMINAL or transfer.state == FAILED:
            return
        log.warning("transfer %s failed: %s", transfer.transfer_id, reason)
        self._set_state(transfer, FAILED, by, reason)
        transfer.wake.set()
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
            if by == LOCAL:
                self._halt(transfer, Halt.FAILED, reason[:200])
        elif not keep_part:
            self._discard_part(transfer)
            transfer.have, transfer.written = RangeSet(), RangeSet()
            transfer.part_path = None
            self._save(transfer, have="", part_path=None)
        else:
            # What was received but not written (a write that failed: disk full) is lost:
            # `have` (what ACCEPT claims on resume) must not count it.
            self.pending_bytes -= transfer.pending_bytes
            transfer.pending.clear()
            transfer.pending_bytes = 0
            transfer.have = transfer.written.copy()
        self.publish("file_transfer_failed", self._event(transfer, reason=reason))
