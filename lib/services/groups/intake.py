"""Checking and taking the records members send (PROTOCOL §13.6 step 5): duplicate, group,
the author's bundle known, signature, fork, depth, acceptance, and the per-author rate on the
author's own session; operations first, so an ADD in the same frame makes its member's records
checkable. What stays unknown waits (pending) and a HAVE asks the sender for what we lack.
The taken records go to the service's commit; nothing here stores."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from ...codec.grouprecord import OPERATIONS, GroupWireError, Kind, Record, decode_add, decode_create
from ...crypto import groupcrypto, identity as ident, pqc
from ...net.peers import Link
from .live import Live
from .membership import MembershipState, accepts, order_key
from .sync import TokenBucket

MAX_PENDING = 1024             # records waiting for their author's ADD, per group

Commit = Callable[[Live, "list[Record]", Optional[Link]], None]
SendHave = Callable[[Live, Link], None]


@dataclasses.dataclass
class Intake:
    """Checks records for the groups we hold; see the module docstring."""

    me: bytes
    backend: pqc.Backend
    counters: Any
    clock: Callable[[], float]
    commit: Commit
    send_have: SendHave
    bucket: TokenBucket = dataclasses.field(default_factory=TokenBucket)

    def check(self, live: Live, record: Record, link: Optional[Link]) -> Optional[str]:
        """Why `record` is not taken (a counter name), "pending" while its author's bundle is
        unknown, or None to take it."""
        digest = record.hash()
        if digest in live.depth:
            return "group_records_duplicate"
        if record.kind == Kind.CREATE:
            if digest[:16] != live.group_id:
                return "group_records_bad"
        elif record.group_id != live.group_id:
            return "group_records_bad"
        bundle = author_bundle(live.membership, record)
        if bundle is None:
            return "pending"
        try:
            sig_public = ident.Bundle.decode(bundle).sig_public
        except Exception:
            return "group_records_bad"
        if not groupcrypto.verify_record(record, sig_public, self.backend):
            return "group_records_forged"
        other = live.by_seq.get((record.author, record.seq))
        if other is not None and other != digest:
            return "group_forks"
        if not live.depth_ok(record):
            return "group_records_bad"
        if record.kind not in OPERATIONS and not accepts(live.membership, record):
            return "group_records_nonmember"
        if link is not None and link.fingerprint == record.author and record.author != self.me \
                and not self.solicited(live, link, record) and not self.bucket.take(record.author, self.clock()):
            return "group_rate_limited"
        return None

    def solicited(self, live: Live, link: Link, record: Record) -> bool:
        """Part of the answer to our last full HAVE (at most 1 MiB, for 10 s)? The per-author
        rate limit (§13.9) is for what an author pushes unasked, not for what we asked for: a
        member catching up from the author itself is not held to 4 records a second."""
        state = live.peers.get(link.fingerprint)
        size = len(record.signed_part()) + len(record.signature)
        if state is None or state.grant < size or self.clock() > state.grant_until:
            return False
        state.grant -= size
        return True

    def receive(self, live: Live, link: Link, records: list[Record]) -> None:
        """Check and store records one member sent for a group we hold (§13.6 step 5)."""
        queue = [r for r in records if r.hash() not in live.depth]
        if len(queue) < len(records):   # copies (a relay's resend, or a replay): stored once
            self.counters["group_records_duplicate"] += len(records) - len(queue)
        queue.extend(r for r, _ in live.pending.values())
        live.pending.clear()
        taken: list[Record] = []
        progress = True
        while queue and progress:
            progress = False
            rest = []
            for record in sorted(queue, key=lambda r: (r.kind not in OPERATIONS, order_key(r))):
                verdict = self.check(live, record, link)
                if verdict == "pending":
                    rest.append(record)
                    continue
                if verdict is None:
                    taken.append(record)
                    if record.kind in OPERATIONS:   # later ones may need the bundle it names
                        self.commit(live, taken, link)
                        taken = []
                        progress = True
                elif verdict != "group_records_duplicate":
                    self.counters[verdict] += 1
                else:
                    self.counters["group_records_duplicate"] += 1
            queue = rest
        if taken:
            self.commit(live, taken, link)
        now = self.clock()
        for record in queue:
            if len(live.pending) >= MAX_PENDING:
                self.counters["group_pending_dropped"] += 1
                continue
            live.pending[record.hash()] = (record, now)
        if queue:
            self.send_have(live, link)   # the sender supplies the operations we lack


def author_bundle(state: MembershipState, record: Record) -> Optional[bytes]:
    """The bundle `record`'s author signs with: named by a CREATE itself, else by the membership."""
    if record.kind == Kind.CREATE:
        try:
            return decode_create(record.body)[1]
        except GroupWireError:
            return None
    return state.known_bundles.get(record.author)


def signed_ok(record: Record, pool: dict, group_id: bytes, backend: pqc.Backend) -> bool:
    """An operation of a group we may join: signed by the bundle its group names for the author."""
    bundles: dict[bytes, bytes] = {}
    for op in pool.values():
        try:
            if op.kind == Kind.CREATE:
                bundle = decode_create(op.body)[1]
                bundles[op.author] = bundle
            elif op.kind == Kind.ADD:
                bundle = decode_add(op.body)[1]
                bundles[ident.Bundle.decode(bundle).fingerprint()] = bundle
        except Exception:
            continue
    bundle = bundles.get(record.author)
    if bundle is None:
        return False
    try:
        return groupcrypto.verify_record(record, ident.Bundle.decode(bundle).sig_public, backend)
    except Exception:
        return False
