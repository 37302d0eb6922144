"""Anti-entropy between connected members (PROTOCOL §13.6, §13.7): the HAVEs we send, the
records we answer them with, delivery receipts, repairs, gaps and HINTs.

`AntiEntropy` belongs to the group service, which owns the groups (`Live`) and decides what
to store; this part only reads them and sends frames. Every frame goes through `send_frame`,
which counts bytes by frame type (bench/bench_groups.py divides them per message and member).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Callable, Iterable, Optional

from ...codec.grouprecord import (OPERATIONS, GroupWireError, Have, Hint, Record, RecordsFrame,
                                  decode_record, encode_frame)
from ...net.peers import Link, Network
from ...store import Store
from .channel import GroupChannel
from .events import GroupEvents
from .live import Live, PeerSync
from .membership import entitled, order_key
from .sync import SeqSet, gaps, have_frame, hint_pairs, wanted_by_peer

log = logging.getLogger("chatp2p.groups")

HAVE_INTERVAL = 10.0           # s between full HAVEs to each connected member (±20 %)
ANSWER_INTERVAL = 0.5          # s: a HAVE showing records we lack is answered at most this often
HINT_INTERVAL = 30.0           # s between HINTs about one pair of members
ANSWER_BUDGET = 1 << 20        # bytes of records sent per HAVE answered
REPAIR_INTERVAL = 2.0          # s between resends of our records a peer's receipts show lost
MAX_REPAIR = 8                 # records per such resend
GRANT_TTL = 10.0               # s: the answer to our full HAVE, this long, is not rate-limited
IN_FLIGHT = 10.0               # s: a record this new is on its way to peers connected to its author
RECORDS_FRAME_BYTES = 64 * 1024  # records per RECORDS frame: one lost datagram loses the frame
_SENT_BY_TYPE = {1: "group_have_bytes_sent", 2: "group_records_bytes_sent", 3: "group_hint_bytes_sent"}


class AntiEntropy:
    """Sends and answers HAVEs for the group service; see the module docstring."""

    def __init__(self, me: bytes, store: Store, network: Network, channel: GroupChannel, events: GroupEvents,
                 clock: Callable[[], float]) -> None:
        self.me, self.store, self.network, self.channel = me, store, network, channel
        self.events, self.clock, self.counters = events, clock, network.counters

    def answer_have(self, live: Live, link: Link, have: Have) -> None:
        """A HAVE from a current member of a group we are in: deliveries, then (a full HAVE)
        what it lacks, our own HAVE if it holds what we lack, HINTs."""
        state = self.peer(live, link.fingerprint)
        self.deliveries(live, link.fingerprint, state, have)
        if not have.connected:
            self.repair(live, link, have)   # a receipt: delivery news, and our pushes it lost
            return
        self.gaps_seen(live, have)
        self.answer(live, link, have)
        if lacks(live, have, self.connected_set(live)):
            now = self.clock()
            if now - state.last_answer >= ANSWER_INTERVAL:
                state.last_answer = now
                self.send_have(live, link)
        self.hints(live, link, have)

    def answer(self, live: Live, link: Link, have: Have) -> None:
        """§13.6 step 2: what the peer lacks and is entitled to, operations first, ≤ 1 MiB."""
        peer = link.fingerprint
        want = wanted_by_peer(live.held, have)
        if not want:
            return
        theirs = set(have.connected)
        now = self.clock()
        # Records taken in the last moments, since this session began (so pushed over it).
        in_flight = {digest for digest, since in live.recent.items()
                     if now - since < IN_FLIGHT and since > link.connected_at}
        # Authors whose records reach the peer by push: it holds some of theirs already and is
        # connected to them (to us, when the author is us). A new member's empty HAVE lists none.
        # Only above the highest seq it reports: a seq missing below that one is a hole (lost).
        streaming = {a.author: a.ranges[-1][1] for a in have.authors
                     if a.ranges and (a.author == self.me or a.author[:8] in theirs)}
        chosen: list[tuple[tuple, bytes]] = []
        budget = ANSWER_BUDGET
        for author, seqs in want.items():
            for data in self.store.groups.records_for(live.row, author, seqs):
                record = decode(data)
                if record is None:
                    continue
                if record.kind not in OPERATIONS and not entitled(live.membership, peer, record):
                    continue
                if record.hash() in in_flight and record.seq > streaming.get(author, record.seq):
                    continue   # its author (we, or one the peer is connected to) pushed it a moment ago
                chosen.append(((record.kind not in OPERATIONS, order_key(record)), data))
        chosen.sort(key=lambda item: item[0])
        out = []
        for _, data in chosen:
            if budget < len(data):
                break
            budget -= len(data)
            out.append(data)
        self.send_records(live, link, out)

    def repair(self, live: Live, link: Link, have: Have) -> None:
        """Our records a receipt shows missing below the highest it reports were lost on
        the way (we push in seq order): sent again at once, not at the next round."""
        mine = next((a for a in have.authors if a.author == self.me), None)
        if mine is None or not mine.ranges:
            return
        top = mine.ranges[-1][1]
        lost = [seq for seq in wanted_by_peer({self.me: live.held.get(self.me, SeqSet())}, have).get(self.me, [])
                if seq < top]
        state = self.peer(live, link.fingerprint)
        now = self.clock()
        if lost and now - state.last_repair >= REPAIR_INTERVAL:
            state.last_repair = now
            lost = lost[:MAX_REPAIR]   # a receiver rate-limiting us (§13.9) makes holes too
            self.counters["group_records_repaired"] += len(lost)
            records = [d for d in self.store.groups.records_for(live.row, self.me, lost)
                       if (r := decode(d)) is not None and entitled(live.membership, link.fingerprint, r)]
            self.send_records(live, link, records)

    def deliveries(self, live: Live, peer: bytes, state: PeerSync, have: Have) -> None:
        """A member reporting our seqs holds our records: per-member delivery (§13.6 step 4)."""
        mine = next((a for a in have.authors if a.author == self.me), None)
        if mine is None:
            return
        members = {fp for fp in live.membership.members if fp != self.me}
        for first, last in mine.ranges:
            for seq in range(max(first, state.acked_upto + 1), last + 1):
                if seq in state.acked:
                    continue
                state.acked.add(seq)
                while state.acked_upto + 1 in state.acked:   # keep the set small: a floor and the rest
                    state.acked_upto += 1
                    state.acked.discard(state.acked_upto)
                own = live.own.get(seq)
                if own is None:
                    continue
                digest, message_id = own
                if not self.store.groups.set_delivered(live.row, digest, peer):
                    continue
                holders = self.store.groups.deliveries(live.row, digest)
                self.events.message_delivered(live.group_id, message_id, peer, members <= holders)

    def gaps_seen(self, live: Live, have: Have) -> None:
        """§13.6 Gaps: records the peer no longer keeps and we never got."""
        for author, count in gaps(live.held, have).items():
            if count <= 0:
                continue
            floor = next(a.floor for a in have.authors if a.author == author)
            if floor <= live.floors.get(author, 0):
                continue
            marker = hashlib.sha256(b"chatp2p group gap v1" + live.group_id + author + floor.to_bytes(8, "big")).digest()
            depth = max(live.depth.values(), default=1)
            added = self.store.groups.add_message(
                live.row, hash=marker, author=author, message_id=f"gap-{marker[:8].hex()}", depth=depth,
                kind="gap", body=f"{count} messages are no longer available", created=time.time(),
                received=time.time())
            if added is not None:
                self.counters["group_gaps"] += 1
                live.floors[author] = max(live.floors.get(author, 0), floor)

    def hints(self, live: Live, link: Link, have: Have) -> None:
        """§13.7: introduce this peer and the members we see that it does not."""
        ours = {fp for fp in live.membership.members
                if fp != self.me and (l := self.network.link_for_fingerprint(fp)) is not None and l.connected}
        now = self.clock()
        for other in hint_pairs(ours, link.fingerprint, have.connected):
            if other == link.fingerprint or other not in live.membership.members:
                continue
            pair = tuple(sorted((link.fingerprint, other)))
            if now - live.hints.get(pair, -1e9) < HINT_INTERVAL:
                continue
            other_link = self.network.link_for_fingerprint(other)
            if other_link is None or not other_link.connected:
                continue
            there = self.network.remote_address(other_link)
            here = self.network.remote_address(link)
            if there is None or here is None:
                continue
            live.hints[pair] = now
            self.send_frame(link, encode_frame(Hint(live.group_id, other, (there,))))
            self.send_frame(other_link, encode_frame(Hint(live.group_id, link.fingerprint, (here,))))

    def peer(self, live: Live, fp: bytes) -> PeerSync:
        state = live.peers.get(fp)
        if state is None:
            state = live.peers[fp] = PeerSync(next_have=self.clock() + jitter())
        return state

    def connected_set(self, live: Live) -> set[bytes]:
        return {fp for fp in live.membership.members if fp != self.me and self.online(fp)}

    def connected_prefixes(self, live: Live) -> list[bytes]:
        out = []
        for fp in live.membership.members:
            if fp == self.me:
                continue
            link = self.network.link_for_fingerprint(fp)
            if link is not None and link.connected:
                out.append(fp)
        return out

    def send_frame(self, link: Link, frame: bytes) -> bool:
        """Every group frame goes here: `group_frame_bytes_sent` is what the benchmark divides
        into bytes per message per member."""
        if not self.channel.send_frame(link, frame):
            return False
        self.counters["group_frame_bytes_sent"] += len(frame)
        self.counters[_SENT_BY_TYPE.get(frame[0], "group_frame_bytes_sent_other")] += len(frame)
        return True

    def send_have(self, live: Live, link: Link, authors: Optional[Iterable[bytes]] = None) -> None:
        """A full HAVE (every author, and the members we are connected to, the receiver among
        them), or with `authors` a receipt: those authors only and no connected members."""
        if authors is None:
            held, connected = live.held, self.connected_prefixes(live)
        else:
            held, connected = {a: live.held[a] for a in authors if a in live.held}, []
        floors = {a: live.floors.get(a, 0) for a in held}
        frame = have_frame(live.group_id, held, floors, connected)
        if self.send_frame(link, encode_frame(frame)) and authors is None:
            state = self.peer(live, link.fingerprint)   # its answer is solicited: not rate-limited
            state.grant, state.grant_until = ANSWER_BUDGET, self.clock() + GRANT_TTL

    def send_records(self, live: Live, link: Link, encoded: list[bytes]) -> None:
        batch: list[bytes] = []
        size = 0
        for data in encoded:
            if batch and size + len(data) + 4 > RECORDS_FRAME_BYTES:
                self.send_frame(link, encode_frame(RecordsFrame(live.group_id, tuple(batch))))
                batch, size = [], 0
            batch.append(data)
            size += len(data) + 4
            self.counters["group_records_sent"] += 1
        if batch:
            self.send_frame(link, encode_frame(RecordsFrame(live.group_id, tuple(batch))))

    def online(self, fp: bytes) -> bool:
        if fp == self.me:
            return False
        link = self.network.link_for_fingerprint(fp)
        return link is not None and link.connected


def lacks(live: Live, have: Have, connected: set[bytes]) -> bool:
    """Whether `have` lists records we do not hold: of authors we are not connected to, or
    below the highest we hold of one we are (an author we are connected to pushes its new
    records to us; a hole below is a record lost or refused, not one on its way)."""
    for author in have.authors:
        held = live.held.get(author.author)
        top = held.highest() if held is not None else 0
        for first, last in author.ranges:
            if author.author in connected:
                last = min(last, top - 1)
            if first > last:
                continue
            if held is None or any(seq not in held for seq in range(first, min(last, first + 4096) + 1)):
                return True
    return False


def jitter() -> float:
    """The wait before the next periodic HAVE: 10 s ±20 %."""
    return HAVE_INTERVAL * random.uniform(0.8, 1.2)


def decode(data: bytes) -> Optional[Record]:
    """A stored or received record, or None when it is not well-formed."""
    try:
        return decode_record(bytes(data))
    except GroupWireError:
        return None
