"""Reliable, ordered, exactly-once chat messages over the links of `peers`.

Sender: every message is first stored (state `queued`), then transmitted as MSG segments when
its contact is connected (`sent`), retransmitted on an RTT-derived timeout, and marked
`delivered` when acknowledged. Messages not acknowledged survive restarts in the store and go
out again on the next session; the receiver recognises copies by their message_id.

Receiver: segments are reassembled per sequence number; complete messages are delivered in
sequence order. Delivery = the message and the new receive position are committed in one
transaction, and only then acknowledged, so no crash can lose or duplicate a message.
Strangers' messages are held (capped) until the user adds or blocks them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import struct
import time
import uuid
from typing import Callable, Optional

from . import identity as ident, wire
from .peers import Link, Network
from .store import Contact, Message, Store
from .util import iso_utc
from .wire import Ack, Msg, Record

log = logging.getLogger("chatp2p.messaging")

MAX_MESSAGE_BYTES = 64 * 1024         # UTF-8 bytes of a message body
MAX_MESSAGE_ID_CHARS = 128
BLOB_VERSION = 1
WINDOW_BYTES = 512 * 1024             # unacknowledged message bytes in flight per peer
MAX_BACKOFF = 8.0                     # seconds between retransmissions at most
MAX_PARTIAL = 64                      # incomplete incoming messages buffered per peer
MAX_EARLY = 1024                      # complete messages waiting for an earlier one, per peer
HELD_MAX_COUNT = 100                  # messages held per stranger
HELD_MAX_BYTES = 1 << 20
EXPIRY_CHECK = 60.0

Publish = Callable[[str, object], None]


class MessageError(ValueError):
    """A message cannot be sent (too long, bad id, blocked contact)."""


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
@dataclasses.dataclass
class Outgoing:
    message: Message
    blob: bytes
    wire_id: bytes
    created_ms: int
    last_sent: float = 0.0
    sends: int = 0

    @property
    def seq(self) -> int:
        return int(self.message.seq)


@dataclasses.dataclass
class Partial:
    wire_id: bytes
    created_ms: int
    buffer: bytearray
    have: set = dataclasses.field(default_factory=set)   # offsets received
    filled: int = 0


@dataclasses.dataclass
class PeerState:
    """Per-link messaging state (in memory; the store holds what must survive)."""

    outbox: "collections.OrderedDict[int, Outgoing]" = dataclasses.field(default_factory=collections.OrderedDict)
    partial: dict = dataclasses.field(default_factory=dict)     # seq -> Partial
    early: dict = dataclasses.field(default_factory=dict)       # seq -> (message_id, body, created_ms)
    in_seq: int = 0
    stranger_seq: int = 0


class Messenger:
    """Sends and receives chat messages; a LinkObserver of the Network."""

    def __init__(self, store: Store, network: Network, publish: Publish,
                 message_ttl: float = 7 * 86400) -> None:
        self.store = store
        self.network = network
        self.publish = publish
        self.message_ttl = message_ttl
        self.states: dict[bytes, PeerState] = {}
        self.counters = network.counters
        self._next_expiry = 0.0
        network.observers.append(self)

    def _state(self, link: Link) -> PeerState:
        state = self.states.get(link.fingerprint)
        if state is None:
            state = self.states[link.fingerprint] = PeerState()
        return state

    # -- sending ----------------------------------------------------------------------------
    def send(self, contact: Contact, body: str, message_id: Optional[str]) -> tuple[Message, bool]:
        """Store the message and transmit it now if the contact is connected (True)."""
        if contact.blocked:
            raise MessageError(f"{contact.name} is blocked: unblock the contact to write to it")
        message_id = check_message(body, message_id)
        message = self.store.add_outgoing(contact.id, message_id, body, time.time())
        link = self.network.links.get(contact.fingerprint)
        if link is None or not link.connected:
            return message, False
        state = self._state(link)
        state.outbox[int(message.seq)] = self._outgoing(message)
        self._pump(link, state, time.monotonic())
        return message, True

    @staticmethod
    def _outgoing(message: Message) -> Outgoing:
        return Outgoing(message, encode_blob(message.message_id, message.body), wire_id(message.message_id),
                        int(message.created * 1000))

    def _pump(self, link: Link, state: PeerState, now: float) -> None:
        """Transmit what the window allows: first sends and due retransmissions, in seq order."""
        in_flight = 0
        records: list[Record] = []
        sent_now: list[Outgoing] = []
        rto = link.rtt.rto
        for outgoing in state.outbox.values():
            if outgoing.sends:
                in_flight += len(outgoing.blob)
                due = now - outgoing.last_sent >= min(MAX_BACKOFF, rto * (2 ** (outgoing.sends - 1)))
                if not due:
                    continue
            elif in_flight + len(outgoing.blob) > WINDOW_BYTES and in_flight:
                break
            else:
                in_flight += len(outgoing.blob)
            records.extend(self._segments(outgoing))
            sent_now.append(outgoing)
        if not records:
            return
        if not self.network.send_records(link, records):
            return
        first_sends = []
        for outgoing in sent_now:
            if outgoing.sends:
                self.counters["messages_retransmitted"] += 1
            else:
                first_sends.append(outgoing)
            outgoing.sends += 1
            outgoing.last_sent = now
        for outgoing in first_sends:
            if outgoing.message.state == "queued":
                self.store.set_message_state(outgoing.message.contact_id, outgoing.message.message_id, "sent")
                outgoing.message = dataclasses.replace(outgoing.message, state="sent")

    def _segments(self, outgoing: Outgoing) -> list[Msg]:
        capacity = wire.msg_capacity(self.network.config.max_datagram)
        blob = outgoing.blob
        return [Msg(outgoing.wire_id, outgoing.seq, outgoing.created_ms, len(blob), offset,
                    blob[offset:offset + capacity])
                for offset in range(0, max(len(blob), 1), capacity)]

    # -- link events ------------------------------------------------------------------------
    def link_up(self, link: Link) -> None:
        state = self._state(link)
        state.partial.clear()
        state.early.clear()
        if link.contact_id is None:
            return
        state.in_seq = self.store.in_seq(link.contact_id)
        state.outbox = collections.OrderedDict(
            (int(m.seq), self._outgoing(m)) for m in self.store.pending_outgoing(link.contact_id))
        self._pump(link, state, time.monotonic())

    def link_down(self, link: Link) -> None:
        state = self.states.get(link.fingerprint)
        if state is not None:
            for outgoing in state.outbox.values():
                outgoing.sends = 0  # resend from scratch on the next session

    def tick(self, now: float) -> None:
        for fingerprint, state in self.states.items():
            if state.outbox:
                link = self.network.links.get(fingerprint)
                if link is not None and link.connected:
                    self._pump(link, state, now)
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_CHECK
            self.expire()

    def expire(self) -> None:
        for message in self.store.expire_queued(time.time() - self.message_ttl):
            try:
                contact = self.store.get_contact_by_id(message.contact_id)
            except Exception:
                continue
            self.publish("message_failed", {"peer": contact.name, "message_id": message.message_id,
                                            "reason": "expired: the contact was not reachable in time"})

    def contact_removed(self, fingerprint: bytes) -> None:
        self.states.pop(fingerprint, None)

    # -- receiving --------------------------------------------------------------------------
    def records(self, link: Link, records: list[Record]) -> None:
        state = self._state(link)
        completed: list[int] = []
        for record in records:
            if isinstance(record, Msg):
                done = self._on_segment(link, state, record)
                if done is not None:
                    completed.append(done)
            elif isinstance(record, Ack):
                self._on_ack(link, state, record)
        if completed:
            self._acknowledge(link, state, completed)

    def _on_segment(self, link: Link, state: PeerState, segment: Msg) -> Optional[int]:
        """Add a segment; returns the seq when this makes a message known-complete (or a copy)."""
        seq = segment.seq
        if segment.total > MAX_MESSAGE_BYTES + 2 + 255 or segment.offset + len(segment.data) > segment.total:
            self.counters["dropped_bad_msg"] += 1
            return None
        partial = state.partial.get(seq)
        if partial is None or partial.wire_id != segment.message_id or len(partial.buffer) != segment.total:
            # New, or the sender's numbering restarted with another message at this seq.
            if partial is None and len(state.partial) >= MAX_PARTIAL:
                self.counters["dropped_msg_buffer_full"] += 1
                return None
            partial = Partial(segment.message_id, segment.created, bytearray(segment.total))
            state.partial[seq] = partial
        if segment.offset not in partial.have:
            partial.have.add(segment.offset)
            partial.buffer[segment.offset:segment.offset + len(segment.data)] = segment.data
            partial.filled += len(segment.data)
        if partial.filled < segment.total:
            return None
        del state.partial[seq]
        try:
            message_id, body = decode_blob(bytes(partial.buffer))
        except (ValueError, UnicodeDecodeError):
            self.counters["dropped_bad_msg"] += 1
            return None
        if wire_id(message_id) != partial.wire_id:
            self.counters["dropped_bad_msg"] += 1
            return None
        if link.contact_id is None:
            # Only what was kept is acknowledged: past the cap the sender keeps the message and
            # sends it again, and it is delivered once the user adds the stranger.
            return seq if self._hold(link, state, seq, message_id, body, partial.created_ms) else None
        self._complete(link, state, seq, message_id, body, partial.created_ms)
        return seq

    def _complete(self, link: Link, state: PeerState, seq: int, message_id: str, body: str,
                  created_ms: int) -> None:
        assert link.contact_id is not None
        if seq <= state.in_seq:
            if self.store.has_incoming(link.contact_id, message_id):
                self.counters["messages_duplicate"] += 1
                return
            log.info("%s restarted its message numbering at %d", link.name, seq)
            state.in_seq = seq - 1
            state.early.clear()
        if seq > state.in_seq + 1:
            if len(state.early) < MAX_EARLY:
                state.early[seq] = (message_id, body, created_ms)
            return
        self._deliver(link, state, seq, message_id, body, created_ms)
        while state.in_seq + 1 in state.early:
            next_seq = state.in_seq + 1
            self._deliver(link, state, next_seq, *state.early.pop(next_seq))

    def _deliver(self, link: Link, state: PeerState, seq: int, message_id: str, body: str,
                 created_ms: int) -> None:
        assert link.contact_id is not None
        created = created_ms / 1000
        message, new = self.store.deliver_incoming(link.contact_id, seq, message_id, body, created, time.time())
        state.in_seq = seq
        if not new:
            self.counters["messages_duplicate"] += 1
            return
        self.counters["messages_received"] += 1
        self.publish("p2p_message_received", {"peer": link.name, "message": body, "timestamp": iso_utc(created),
                                              "message_id": message_id})

    def _hold(self, link: Link, state: PeerState, seq: int, message_id: str, body: str, created_ms: int) -> bool:
        bundle = link.bundle.to_base64() if link.bundle else ""
        kept = self.store.hold_message(link.fingerprint, bundle, message_id, body, created_ms / 1000,
                                       HELD_MAX_COUNT, HELD_MAX_BYTES, seq=seq)
        if not kept:
            self.counters["held_dropped_cap"] += 1
            return False
        state.stranger_seq = max(state.stranger_seq, seq)
        return True

    def _acknowledge(self, link: Link, state: PeerState, seqs: list[int]) -> None:
        if link.contact_id is None:
            ranges = _ranges(sorted(set(seqs)))
        else:
            ranges = [(1, state.in_seq)] if state.in_seq else []
            ranges += _ranges(sorted(s for s in set(seqs) | set(state.early) if s > state.in_seq))
        for start in range(0, len(ranges), wire.MAX_ACK_ITEMS):
            self.network.send_records(link, [Ack(tuple(ranges[start:start + wire.MAX_ACK_ITEMS]))])

    def _on_ack(self, link: Link, state: PeerState, ack: Ack) -> None:
        if link.contact_id is None or not state.outbox:
            return
        acked = [seq for seq in state.outbox if any(lo <= seq <= hi for lo, hi in ack.ranges)]
        if not acked:
            return
        now = time.monotonic()
        for seq in acked:
            outgoing = state.outbox.pop(seq)
            if outgoing.sends == 1:
                link.rtt.sample(now - outgoing.last_sent)
        for message in self.store.mark_delivered(link.contact_id, acked):
            self.publish("message_delivered", {"peer": link.name, "message_id": message.message_id})
        self._pump(link, state, now)

    # -- strangers --------------------------------------------------------------------------
    def release_held(self, contact: Contact) -> int:
        """A stranger became a contact: deliver what it sent meanwhile, in the sender's order.

        The receive position becomes the highest held seq (held messages were acknowledged);
        a message below it that was never held (over the cap) arrives later as a resend and
        is recognised as new by its message_id (see §7 of PROTOCOL.md)."""
        held = self.store.take_held(contact.fingerprint)
        for item in held:
            message, new = self.store.add_incoming(contact.id, item.message_id, item.body, item.created, time.time())
            if new:
                self.publish("p2p_message_received", {"peer": contact.name, "message": item.body,
                                                      "timestamp": iso_utc(item.created),
                                                      "message_id": item.message_id})
        state = self.states.get(contact.fingerprint)
        position = max([item.seq for item in held] + [state.stranger_seq if state else 0])
        if position:
            self.store.deliver_position(contact.id, position)
            if state is not None:
                state.in_seq = position
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
