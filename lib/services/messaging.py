"""Reliable, ordered, exactly-once chat messages over the links of `peers`.

Sender: every message is first stored (`sent` when its contact is connected, else `queued`),
then transmitted as MSG segments, retransmitted when lost, and marked `delivered` when the
receiver's cumulative acknowledgement covers it. Messages not acknowledged survive restarts in
the store and go out again on the next session; the receiver recognises copies by their
message_id.

Receiver: segments are reassembled per sequence number; complete messages are delivered in
sequence order. Delivery = the messages and the new receive position are committed in one
transaction, and only then acknowledged, so no crash can lose or duplicate a message.
Strangers' messages are held (capped) until the user adds or blocks them.

Batching: the work is done once per pass of the event loop, not once per message. API sends
are queued and stored together (one transaction, then each caller gets its answer); a burst
of received messages is committed in one transaction, acknowledged with one ACK, then
published; acknowledged messages are marked delivered together; and what a pass has to send
to a peer (ACK, new messages, retransmissions) is sealed into as few datagrams as possible.

Loss recovery (RFC 9002 in spirit, per message): a message sent before one the receiver
acknowledged (cumulatively, or as received out of order) and older than 9/8 of the RTT is
lost and sent again. When nothing is acknowledged for an RTO, only the oldest unacknowledged
message goes again (a probe), and the timeout doubles until an acknowledgement arrives: a
peer that is merely slow to answer costs one spare message, not a window of them.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import logging
import struct
import time
import uuid
from typing import Callable, Optional

import gevent
import gevent.event

from ..errors import Invalid, Refused
from ..codec import wire
from ..contract import MessageState
from ..passes import PassRunner
from ..net.peers import Link, Network
from ..store import Contact, Message, Store, StoreError
from ..util import iso_utc
from ..codec.wire import Ack, Msg, Record

log = logging.getLogger("chatp2p.messaging")

MAX_MESSAGE_BYTES = 64 * 1024         # UTF-8 bytes of a message body
MAX_MESSAGE_ID_CHARS = 128
BLOB_VERSION = 1
WINDOW_BYTES = 512 * 1024             # unacknowledged message bytes in flight per peer
MAX_BACKOFF = 8.0                     # seconds between retransmissions at most
MAX_PARTIAL = 64                      # incomplete incoming messages buffered per peer
MAX_PARTIAL_RANGES = 128              # disjoint byte ranges of one incomplete message (~60 segments at most)
PARTIAL_TTL = 60.0                    # s: an incomplete message not completed by then is dropped
CONTACT_BUFFER_BYTES = 8 << 20        # incoming bytes buffered per contact (incomplete + out of order)
STRANGER_BUFFER_BYTES = 256 << 10     # ... per stranger
TOTAL_BUFFER_BYTES = 64 << 20         # ... for all peers together
MAX_EARLY = 1024                      # complete messages waiting for an earlier one, per peer
MAX_IN_FLIGHT = MAX_EARLY             # unacknowledged messages per peer (the receiver's buffer)
LOSS_TIME_FACTOR = 9 / 8              # lost: sent before an acknowledged one, and this many RTTs ago
LOSS_GRANULARITY = 0.002              # s: ...and at least this long ago (acks leave in batches)
MAX_ACK_ITEMS = 64                    # ranges or segments per ACK record: 16 bytes each, < 1 datagram
HELD_MAX_COUNT = 100                  # messages held per stranger
HELD_MAX_BYTES = 1 << 20
EXPIRY_CHECK = 60.0

Publish = Callable[[str, object], None]


class MessageError(Invalid):
    """A message cannot be sent (too long, bad id, blocked contact)."""


class MessageRefused(Refused, MessageError):
    """The contact may not be written to (blocked)."""


# -- codec (pure) ---------------------------------------------------------------------------
def encode_blob(message_id: str, body: str) -> bytes:
    """What MSG segments carry: version, the sender's message_id (text) and the UTF-8 body."""
    raw_id = message_id.encode("utf-8")
    return struct.pack(">BB", BLOB_VERSION, len(raw_id)) + raw_id + body.encode("utf-8")


def decode_blob(data: bytes) -> tuple[str, str]:
    if len(data) < 2 or data[0] != BLOB_VERSION:
        raise ValueError("unknown message blob version")
    id_len = data[1]
    if len(data) < 2 + id_len:
        raise ValueError("truncated message blob")
    return data[2:2 + id_len].decode("utf-8"), data[2 + id_len:].decode("utf-8")


def wire_id(message_id: str) -> bytes:
    """The 16-byte id MSG records carry (a hash, so any text id fits)."""
    return hashlib.sha256(message_id.encode("utf-8")).digest()[:wire.MESSAGE_ID_LEN]


def check_message(body: str, message_id: Optional[str]) -> str:
    size = len(body.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(f"Message too long ({size} bytes of UTF-8, at most {MAX_MESSAGE_BYTES})")
    if message_id is None or message_id == "":
        return uuid.uuid4().hex
    if len(message_id) > MAX_MESSAGE_ID_CHARS or len(message_id.encode("utf-8")) > 255:
        raise MessageError(f"message_id is too long (at most {MAX_MESSAGE_ID_CHARS} characters)")
    return message_id


# -- state ----------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Outgoing:
    message: Message
    seq: int
    size: int                 # blob bytes
    records: list             # its MSG segments, built once
    last_sent: float = 0.0
    tx: int = 0               # number of its latest transmission on this link (0: never sent)
    first_tx: int = 0         # ... and of its first
    sends: int = 0
    sacked: bool = False      # the receiver has it, waiting for an earlier one (not yet delivered)
    resend: bool = False      # queued for retransmission in the next pass


@dataclasses.dataclass
class Partial:
    """An incomplete incoming message: its buffer and the disjoint byte ranges received."""

    wire_id: bytes
    created_ms: int
    buffer: bytearray
    started: float = 0.0
    ranges: list = dataclasses.field(default_factory=list)  # sorted disjoint [start, end)
    filled: int = 0

    def add(self, offset: int, data: bytes) -> bool:
        """Copy a segment in; False when it would split the message into too many ranges.
        Overlaps count once, so a message completes only when every byte has arrived."""
        end = offset + len(data)
        ranges = self.ranges
        index = bisect.bisect_left(ranges, [offset, offset])
        if index and ranges[index - 1][1] >= offset:
            index -= 1
        low, high, covered, last = offset, end, 0, index
        while last < len(ranges) and ranges[last][0] <= end:
            low, high = min(low, ranges[last][0]), max(high, ranges[last][1])
            covered += ranges[last][1] - ranges[last][0]
            last += 1
        if last == index and len(ranges) >= MAX_PARTIAL_RANGES:
            return False
        ranges[index:last] = [[low, high]]
        self.buffer[offset:end] = data
        self.filled += (high - low) - covered
        return True


@dataclasses.dataclass
class PeerState:
    """Per-link messaging state (in memory; the store holds what must survive)."""

    # -- sender
    outbox: "collections.OrderedDict[int, Outgoing]" = dataclasses.field(
        default_factory=collections.OrderedDict)     # not yet delivered, by seq
    unsent: collections.deque = dataclasses.field(default_factory=collections.deque)  # never sent, by seq
    in_flight: "collections.OrderedDict[int, Outgoing]" = dataclasses.field(
        default_factory=collections.OrderedDict)     # sent, neither acked nor sacked, by transmission
    flight_bytes: int = 0                            # sent and not delivered (sacked included)
    flight_count: int = 0
    resend: list = dataclasses.field(default_factory=list)
    tx: int = 0                                      # transmissions numbered on this link
    largest_acked_tx: int = 0
    loss_time: Optional[float] = None                # when the next loss check is due
    backoff: int = 0                                 # RTO doublings since the last progress
    after_rto: bool = False                          # a probe went out; the next progress judges it
    timer_base: float = 0.0                          # the RTO runs from here
    acked: list = dataclasses.field(default_factory=list)      # seqs to mark delivered
    queued_sent: list = dataclasses.field(default_factory=list)  # `queued` seqs now sent
    # -- receiver
    partial: dict = dataclasses.field(default_factory=dict)    # seq -> Partial
    early: dict = dataclasses.field(default_factory=dict)      # seq -> (message_id, body, created_ms, size)
    in_seq: int = 0                                  # delivered in order (staged or committed)
    committed_seq: int = 0                           # ... and committed: what the ACK claims
    staged: list = dataclasses.field(default_factory=list)     # (seq, message_id, body, created_ms)
    staged_ids: set = dataclasses.field(default_factory=set)
    ack_due: bool = False
    stranger_acks: list = dataclasses.field(default_factory=list)
    stranger_seq: int = 0
    buffered: int = 0                                # bytes in `partial` buffers and `early`

    def reset_sender(self) -> None:
        self.outbox = collections.OrderedDict()
        self.unsent = collections.deque()
        self.in_flight = collections.OrderedDict()
        self.flight_bytes = self.flight_count = 0
        self.resend = []
        self.largest_acked_tx = 0
        self.loss_time = None
        self.backoff = 0
        self.after_rto = False
        self.queued_sent = []


class Messenger:
    """Sends and receives chat messages; a LinkObserver of the Network."""

    def __init__(self, store: Store, network: Network, publish: Publish,
                 message_ttl: float = 7 * 86400,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock        # monotonic seconds; tests pass a fake clock
        self.network = network
        self.publish = publish
        self.message_ttl = message_ttl
        self.states: dict[bytes, PeerState] = {}
        self.counters = network.counters
        self._next_expiry = 0.0
        self.buffered = 0                          # incoming bytes buffered, all peers
        self._capacity = wire.msg_capacity(network.config.max_datagram)
        self._to_store: list = []                  # (contact, message_id, body, created, waiter)
        self._dirty: dict[bytes, Link] = {}        # links with work for the next pass
        self._pass = PassRunner(self._flush, "messaging")
        network.observers.append(self)

    def _state(self, link: Link) -> PeerState:
        state = self.states.get(link.fingerprint)
        if state is None:
            state = self.states[link.fingerprint] = PeerState()
        return state

    # -- the pass ---------------------------------------------------------------------------
    def _schedule(self, link: Optional[Link] = None) -> None:
        """Have `_flush` run once the current greenlet yields (once per loop pass)."""
        if link is not None:
            self._dirty[link.fingerprint] = link
        self._pass.poke()

    def stop(self) -> None:
        self._pass.stop()

    def _flush(self) -> None:
        if self._to_store:
            pending, self._to_store = self._to_store, []
            try:
                self._store_sends(pending)
            except Exception as exc:  # never leave an API request waiting forever
                log.exception("storing %d messages failed", len(pending))
                for *_, waiter in pending:
                    if not waiter.ready():
                        waiter.set_exception(exc)
        dirty, self._dirty = self._dirty, {}
        for link in dirty.values():
            try:
                self._flush_link(link)
            except Exception:
                log.exception("messaging pass failed for %s", link.name)
        if self._dirty or self._to_store:
            self._schedule()

    # -- sending ----------------------------------------------------------------------------
    def submit(self, contact: Contact, body: str, message_id: Optional[str]) -> gevent.event.AsyncResult:
        """Store the message (with the others of this loop pass) and transmit it in this pass
        if the contact is connected. Returns at once; the result is set to (message, sent)
        once the message is committed, or to the error."""
        if contact.blocked:
            raise MessageRefused(f"{contact.name} is blocked: unblock the contact to write to it")
        message_id = check_message(body, message_id)
        waiter = gevent.event.AsyncResult()
        self._to_store.append((contact, message_id, body, time.time(), waiter))
        self._schedule()
        return waiter

    def send(self, contact: Contact, body: str, message_id: Optional[str]) -> tuple[Message, bool]:
        """`submit` and wait for the commit: (message, sent)."""
        return self.submit(contact, body, message_id).get()

    def _store_sends(self, pending: list) -> None:
        links = []
        items = []
        for contact, message_id, body, created, _ in pending:
            link = self.network.links.get(contact.fingerprint)
            up = link is not None and link.connected and link.contact_id == contact.id
            links.append(link if up else None)
            items.append((contact.id, message_id, body, created, MessageState.SENT if up else MessageState.QUEUED))
        try:
            results = self.store.messages.add_outgoing_many(items)
        except BaseException as exc:
            for *_, waiter in pending:
                waiter.set_exception(exc if isinstance(exc, Exception) else StoreError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (contact, _, _, _, waiter), link, result in zip(pending, links, results):
            if isinstance(result, Exception):
                waiter.set_exception(result)
                continue
            sent = link is not None
            try:
                if sent and self.network.links.get(contact.fingerprint) is link and link.connected:
                    state = self._state(link)
                    outgoing = self._outgoing(result)
                    state.outbox[outgoing.seq] = outgoing
                    state.unsent.append(outgoing)
                    self._dirty[link.fingerprint] = link
            except Exception:  # stored: it goes out with the next session, never lost
                log.exception("cannot queue message %s for sending", result.message_id)
            waiter.set((result, sent))

    def _outgoing(self, message: Message) -> Outgoing:
        blob = encode_blob(message.message_id, message.body)
        mid, seq, created_ms, capacity = wire_id(message.message_id), int(message.seq), int(message.created * 1000), \
            self._capacity
        records = [Msg(mid, seq, created_ms, len(blob), offset, blob[offset:offset + capacity])
                   for offset in range(0, max(len(blob), 1), capacity)]
        return Outgoing(message, seq, len(blob), records)

    def _transmissions(self, state: PeerState, now: float) -> tuple[list, list]:
        """What this pass sends: retransmissions (oldest first), then new messages as far as
        the window allows. Returns (records, [(outgoing, first_send)])."""
        records: list[Record] = []
        sent: list = []
        if state.resend:
            resend, state.resend = state.resend, []
            for outgoing in resend:
                outgoing.resend = False
                if state.outbox.get(outgoing.seq) is outgoing:
                    records.extend(outgoing.records)
                    sent.append((outgoing, False))
        unsent = state.unsent
        while unsent:
            outgoing = unsent[0]
            if state.outbox.get(outgoing.seq) is not outgoing or outgoing.sends:
                unsent.popleft()  # acknowledged meanwhile (sent in an earlier session)
                continue
            if state.flight_count and (state.flight_bytes + outgoing.size > WINDOW_BYTES
                                       or state.flight_count >= MAX_IN_FLIGHT):
                break
            unsent.popleft()
            state.flight_bytes += outgoing.size
            state.flight_count += 1
            records.extend(outgoing.records)
            sent.append((outgoing, True))
        return records, sent

    def _sent(self, state: PeerState, sent: list, now: float) -> None:
        for outgoing, first in sent:
            state.tx += 1
            outgoing.tx = state.tx
            if not outgoing.sends:
                outgoing.first_tx = state.tx
            outgoing.last_sent = now
            outgoing.sends += 1
            if first:
                if outgoing.message.state == MessageState.QUEUED:
                    state.queued_sent.append(outgoing.seq)
                    outgoing.message = dataclasses.replace(outgoing.message, state=MessageState.SENT)
            else:
                self.counters["messages_retransmitted"] += 1
            if not outgoing.sacked:
                state.in_flight[outgoing.seq] = outgoing
                state.in_flight.move_to_end(outgoing.seq)

    def _flush_link(self, link: Link) -> None:
        """One pass for one peer: commit what arrived, acknowledge it, mark what the peer
        acknowledged delivered, send, then publish the events."""
        state = self.states.get(link.fingerprint)
        if state is None:
            return
        now = self.clock()
        received = self._commit(link, state)
        records: list[Record] = []
        if state.ack_due and link.connected:
            records.extend(self._ack_records(link, state))
        state.ack_due = False
        delivered: list = []
        if state.acked and link.contact_id is not None:
            acked, state.acked = state.acked, []
            try:
                delivered = self.store.messages.mark_delivered_ranges(link.contact_id, _ranges(sorted(acked)))
            except StoreError as exc:
                log.warning("cannot mark messages to %s delivered: %s", link.name, exc)
        sent: list = []
        idle = state.flight_count == 0
        if link.connected and link.contact_id is not None and (state.resend or state.unsent):
            more, sent = self._transmissions(state, now)
            records.extend(more)
        if records and self.network.send_records(link, records):
            if idle and sent:
                state.timer_base = now  # the RTO runs from the first message in flight
            self._sent(state, sent, now)
        if state.queued_sent and link.contact_id is not None:
            queued, state.queued_sent = state.queued_sent, []
            try:
                self.store.messages.mark_sent_ranges(link.contact_id, _ranges(sorted(queued)))
            except StoreError as exc:
                log.warning("cannot mark messages to %s sent: %s", link.name, exc)
        for seq, message_id, body, created_ms in received:
            self.publish("p2p_message_received", {"peer": link.name, "message": body,
                                                  "timestamp": iso_utc(created_ms / 1000),
                                                  "message_id": message_id})
        for _, message_id in delivered:
            self.publish("message_delivered", {"peer": link.name, "message_id": message_id})

    # -- link events ------------------------------------------------------------------------
    def link_up(self, link: Link) -> None:
        state = self._state(link)
        state.reset_sender()    # a new session: everything not delivered goes again
        self._flush_link(link)  # what the previous session left: commit, acknowledge, mark, publish
        self._release_partials(state)
        self._release_early(state)
        if link.contact_id is None:
            return
        state.in_seq = state.committed_seq = self.store.messages.in_seq(link.contact_id)
        for message in self.store.messages.pending_outgoing(link.contact_id):
            outgoing = self._outgoing(message)
            state.outbox[outgoing.seq] = outgoing
            state.unsent.append(outgoing)
        if state.unsent:
            self._schedule(link)

    def link_down(self, link: Link) -> None:
        state = self.states.get(link.fingerprint)
        if state is not None:
            self._flush_link(link)  # commit and publish what arrived; nothing can be sent
            state.reset_sender()    # resend from scratch on the next session
            self._release_partials(state)  # the sender resends what is not acknowledged
            self._release_early(state)

    def path_changed(self, link: Link) -> None:
        pass  # messages fit the smallest datagram: nothing to relearn on a new path

    def tick(self, now: float) -> None:
        for fingerprint, state in self.states.items():
            if state.partial:
                self._expire_partials(state, now)
            if state.flight_count:
                link = self.network.links.get(fingerprint)
                if link is not None and link.connected:
                    self._timers(link, state, now)
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_CHECK
            self.expire()

    def _timers(self, link: Link, state: PeerState, now: float) -> None:
        if state.loss_time is not None and now >= state.loss_time:
            self._detect_losses(link, state, now)
        rto = min(MAX_BACKOFF, link.rtt.rto * (2 ** state.backoff))
        if now - state.timer_base < rto:
            return
        # Nothing acknowledged for an RTO: probe with the oldest message not delivered.
        probe = next((o for o in state.outbox.values() if o.sends), None)
        if probe is None:
            return
        state.backoff += 1
        state.timer_base = now
        state.after_rto = True
        self.counters["message_timeouts"] += 1
        self._queue_resend(state, probe)
        self._schedule(link)

    def _queue_resend(self, state: PeerState, outgoing: Outgoing) -> None:
        if not outgoing.resend:
            outgoing.resend = True
            state.resend.append(outgoing)
            state.in_flight.pop(outgoing.seq, None)  # in flight again once resent

    def _detect_losses(self, link: Link, state: PeerState, now: float) -> None:
        """Messages sent before one the peer acknowledged are lost once they are older than
        9/8 of the RTT (the rest of the time is left to reordering)."""
        state.loss_time = None
        rtt = link.rtt
        threshold = max(LOSS_TIME_FACTOR * max(rtt.srtt or 0.0, rtt.latest or 0.0), LOSS_GRANULARITY)
        lost = []
        for outgoing in state.in_flight.values():
            if outgoing.tx >= state.largest_acked_tx:
                break
            if now - outgoing.last_sent < threshold:
                state.loss_time = outgoing.last_sent + threshold
                break
            lost.append(outgoing)
        for outgoing in lost:
            self._queue_resend(state, outgoing)
        if lost:
            self.counters["messages_lost"] += len(lost)
            self._schedule(link)

    def expire(self) -> None:
        for message in self.store.messages.expire_queued(time.time() - self.message_ttl):
            try:
                contact = self.store.contacts.get_by_id(message.contact_id)
            except Exception:
                continue
            self.publish("message_failed", {"peer": contact.name, "message_id": message.message_id,
                                            "reason": "expired: the contact was not reachable in time"})

    def contact_removed(self, fingerprint: bytes) -> None:
        state = self.states.pop(fingerprint, None)
        if state is not None:
            self._release_partials(state)
            self._release_early(state)
        self._dirty.pop(fingerprint, None)

    # -- receiving --------------------------------------------------------------------------
    def records(self, link: Link, records: list[Record]) -> None:
        state = self._state(link)
        for record in records:
            if isinstance(record, Msg):
                self._on_segment(link, state, record)
            elif isinstance(record, Ack):
                self._on_ack(link, state, record)

    def _on_segment(self, link: Link, state: PeerState, segment: Msg) -> None:
        """Add a segment; a message it completes (or a copy) is staged and acknowledged in the pass."""
        seq = segment.seq
        if segment.total > MAX_MESSAGE_BYTES + 2 + 255 or segment.offset + len(segment.data) > segment.total \
                or not segment.data:
            self.counters["dropped_bad_msg"] += 1
            return
        partial = state.partial.get(seq)
        if partial is None and segment.offset == 0 and len(segment.data) == segment.total:
            partial = Partial(segment.message_id, segment.created, segment.data, filled=segment.total)  # type: ignore[arg-type]
        else:
            if partial is None or partial.wire_id != segment.message_id or len(partial.buffer) != segment.total:
                # New, or the sender's numbering restarted with another message at this seq.
                if partial is not None:
                    self._drop_partial(state, seq)
                if len(state.partial) >= MAX_PARTIAL or not self._reserve(link, state, segment.total):
                    self.counters["dropped_msg_buffer_full"] += 1
                    return
                partial = Partial(segment.message_id, segment.created, bytearray(segment.total),
                                  started=self.clock())
                state.partial[seq] = partial
            if not partial.add(segment.offset, segment.data):
                self.counters["dropped_msg_fragmented"] += 1
                self._drop_partial(state, seq)
                return
            if partial.filled < segment.total:
                return
            self._drop_partial(state, seq)
        try:
            message_id, body = decode_blob(bytes(partial.buffer))
        except (ValueError, UnicodeDecodeError):
            self.counters["dropped_bad_msg"] += 1
            return
        if wire_id(message_id) != partial.wire_id:
            self.counters["dropped_bad_msg"] += 1
            return
        if link.contact_id is None:
            # Only what was kept is acknowledged: past the cap the sender keeps the message and
            # sends it again, and it is delivered once the user adds the stranger.
            if self._hold(link, state, seq, message_id, body, partial.created_ms):
                state.stranger_acks.append(seq)
                state.ack_due = True
                self._schedule(link)
            return
        self._complete(link, state, seq, message_id, body, partial.created_ms, segment.total)
        state.ack_due = True
        self._schedule(link)

    def _complete(self, link: Link, state: PeerState, seq: int, message_id: str, body: str,
                  created_ms: int, size: int) -> None:
        assert link.contact_id is not None
        if seq <= state.in_seq:
            if message_id in state.staged_ids or self.store.messages.has_incoming(link.contact_id, message_id):
                self.counters["messages_duplicate"] += 1
                return
            log.info("%s restarted its message numbering at %d", link.name, seq)
            self._flush_link(link)  # commit what is staged under the old numbering first
            state.in_seq = state.committed_seq = seq - 1
            self._release_early(state)
        if seq > state.in_seq + 1:
            if seq not in state.early and len(state.early) < MAX_EARLY and self._reserve(link, state, size):
                state.early[seq] = (message_id, body, created_ms, size)
            elif seq not in state.early:
                self.counters["dropped_msg_buffer_full"] += 1
            return
        self._stage(state, seq, message_id, body, created_ms)
        while state.in_seq + 1 in state.early:
            next_seq = state.in_seq + 1
            message_id, body, created_ms, size = state.early.pop(next_seq)
            self._release(state, size)
            self._stage(state, next_seq, message_id, body, created_ms)

    # -- receive buffers: bounded per peer (a stranger much less) and in total -----------------
    def _reserve(self, link: Link, state: PeerState, size: int) -> bool:
        cap = CONTACT_BUFFER_BYTES if link.contact_id is not None else STRANGER_BUFFER_BYTES
        if state.buffered + size > cap or self.buffered + size > TOTAL_BUFFER_BYTES:
            return False
        state.buffered += size
        self.buffered += size
        return True

    def _release(self, state: PeerState, size: int) -> None:
        state.buffered -= size
        self.buffered -= size

    def _drop_partial(self, state: PeerState, seq: int) -> None:
        partial = state.partial.pop(seq)
        if isinstance(partial.buffer, bytearray):   # a whole single-segment message reserved nothing
            self._release(state, len(partial.buffer))

    def _release_partials(self, state: PeerState) -> None:
        for seq in list(state.partial):
            self._drop_partial(state, seq)

    def _release_early(self, state: PeerState) -> None:
        self._release(state, sum(item[3] for item in state.early.values()))
        state.early.clear()

    def _expire_partials(self, state: PeerState, now: float) -> None:
        for seq in [seq for seq, partial in state.partial.items() if now - partial.started > PARTIAL_TTL]:
            self.counters["dropped_msg_expired"] += 1
            self._drop_partial(state, seq)

    @staticmethod
    def _stage(state: PeerState, seq: int, message_id: str, body: str, created_ms: int) -> None:
        if message_id in state.staged_ids:
            return  # the same message at two seqs (a confused sender): deliver it once
        state.staged.append((seq, message_id, body, created_ms))
        state.staged_ids.add(message_id)
        state.in_seq = seq

    def _commit(self, link: Link, state: PeerState) -> list:
        """Deliver the staged messages: one transaction (messages + in_seq); returns the new ones."""
        if not state.staged:
            return []
        staged = state.staged
        state.staged, state.staged_ids = [], set()
        if link.contact_id is None:
            return []
        try:
            new = self.store.messages.deliver_incoming_many(
                link.contact_id, [(seq, mid, body, created_ms / 1000) for seq, mid, body, created_ms in staged],
                time.time())
        except StoreError as exc:
            # Not acknowledged: the sender sends them again.
            log.warning("cannot store messages from %s: %s", link.name, exc)
            state.in_seq = state.committed_seq
            self._release_early(state)
            return []
        state.committed_seq = staged[-1][0]
        received = [item for item, is_new in zip(staged, new) if is_new]
        self.counters["messages_received"] += len(received)
        self.counters["messages_duplicate"] += len(staged) - len(received)
        return received

    def _hold(self, link: Link, state: PeerState, seq: int, message_id: str, body: str, created_ms: int) -> bool:
        bundle = link.bundle.to_base64() if link.bundle else ""
        kept = self.store.held.hold(link.fingerprint, bundle, message_id, body, created_ms / 1000,
                                       HELD_MAX_COUNT, HELD_MAX_BYTES, seq=seq)
        if not kept:
            self.counters["held_dropped_cap"] += 1
            return False
        state.stranger_seq = max(state.stranger_seq, seq)
        if link.group_peer:
            self.network.raise_contact_request(link)  # its session raised none (PROTOCOL §13.7)
        return True

    def _ack_records(self, link: Link, state: PeerState) -> list[Ack]:
        """A contact's ACK: `1..committed` (delivered) and, as segments, the complete messages
        waiting above a gap (received, not delivered: a crash forgets them, so the sender
        keeps them until the range covers them). A stranger's: the ranges it holds."""
        if link.contact_id is None:
            ranges = _ranges(sorted(set(state.stranger_acks)))
            state.stranger_acks = []
            return [Ack(tuple(ranges[i:i + MAX_ACK_ITEMS])) for i in range(0, len(ranges), MAX_ACK_ITEMS)]
        ranges = ((1, state.committed_seq),) if state.committed_seq else ()
        segments = ()
        if state.early:
            early = state.early
            segments = tuple((seq, 0, early[seq][3]) for seq in sorted(early)[:MAX_ACK_ITEMS])
        if not ranges and not segments:
            return []
        return [Ack(ranges, segments)]

    def _on_ack(self, link: Link, state: PeerState, ack: Ack) -> None:
        if link.contact_id is None or not state.outbox:
            return
        outbox = state.outbox
        newly: list[Outgoing] = []
        for first, last in ack.ranges:
            if first <= next(iter(outbox)):
                while outbox:
                    seq = next(iter(outbox))
                    if seq > last:
                        break
                    newly.append(outbox.popitem(last=False)[1])
            elif last - first < len(outbox):
                for seq in range(first, last + 1):
                    outgoing = outbox.pop(seq, None)
                    if outgoing is not None:
                        newly.append(outgoing)
            else:
                for seq in [s for s in outbox if first <= s <= last]:
                    newly.append(outbox.pop(seq))
            if not outbox:
                break
        received: list[Outgoing] = []   # newly acknowledged or reported, and sent
        for outgoing in newly:
            state.acked.append(outgoing.seq)
            if outgoing.sends:
                state.flight_bytes -= outgoing.size
                state.flight_count -= 1
                state.in_flight.pop(outgoing.seq, None)
                received.append(outgoing)
        for seq, offset, length in ack.segments:
            outgoing = outbox.get(seq)
            if outgoing is not None and not outgoing.sacked and outgoing.sends and offset == 0 \
                    and length == outgoing.size:
                outgoing.sacked = True
                state.in_flight.pop(seq, None)
                received.append(outgoing)
        if not newly and not received:
            return
        now = self.clock()
        # Which transmission got through? Unknown for a message sent more than once (ACKs name
        # seqs, not transmissions): count its first one, or a peer merely slow to answer makes
        # the ACK of a probe declare the whole window lost. An original transmission is clear,
        # and gives the RTT sample (Karn).
        acked_tx = retransmitted_tx = 0
        original: Optional[Outgoing] = None
        for outgoing in received:
            if outgoing.sends == 1:
                acked_tx = max(acked_tx, outgoing.tx)
                if original is None or outgoing.tx > original.tx:
                    original = outgoing
            else:
                acked_tx = max(acked_tx, outgoing.first_tx)
                retransmitted_tx = max(retransmitted_tx, outgoing.tx)
        if state.after_rto and received:
            state.after_rto = False
            if original is None:
                # Only what the timeout resent got through (F-RTO, RFC 5682): the timeout was
                # real, and what was sent before the probe is lost: send it again.
                acked_tx = max(acked_tx, retransmitted_tx)
        if original is not None and original.tx > state.largest_acked_tx:
            link.rtt.sample(now - original.last_sent)
        state.largest_acked_tx = max(state.largest_acked_tx, acked_tx)
        state.backoff = 0
        state.timer_base = now
        if state.in_flight and next(iter(state.in_flight.values())).tx < state.largest_acked_tx:
            self._detect_losses(link, state, now)
        self._schedule(link)

    # -- strangers --------------------------------------------------------------------------
    def release_held(self, contact: Contact) -> int:
        """A stranger became a contact: deliver what it sent meanwhile, in the sender's order.

        The receive position becomes the highest held seq (held messages were acknowledged);
        a message below it that was never held (over the cap) arrives later as a resend and
        is recognised as new by its message_id (see §7 of PROTOCOL.md)."""
        held = self.store.held.take(contact.fingerprint)
        for item in held:
            message, new = self.store.messages.add_incoming(contact.id, item.message_id, item.body, item.created, time.time())
            if new:
                self.publish("p2p_message_received", {"peer": contact.name, "message": item.body,
                                                      "timestamp": iso_utc(item.created),
                                                      "message_id": item.message_id})
        state = self.states.get(contact.fingerprint)
        position = max([item.seq for item in held] + [state.stranger_seq if state else 0])
        if position:
            self.store.messages.set_in_seq(contact.id, position)
            if state is not None:
                state.in_seq = state.committed_seq = position
        link = self.network.links.get(contact.fingerprint)
        if link is not None:
            link.contact_id, link.name = contact.id, contact.name
            if link.connected:
                self.link_up(link)
        return len(held)


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """[1,2,3,7,8] -> [(1,3),(7,8)]."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges
