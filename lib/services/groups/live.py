"""What the group service keeps in memory about one group, rebuilt from the store at start.

The store holds the records; this is the index the flows of PROTOCOL §13 need on every
record: which (author, seq) are held, each record's depth (depth checks, parents), the heads
of the DAG (a new record's parents), the operations (membership replay), the messages held
without their key, and the per-peer sync state. No I/O here: the service fills it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

from ...codec.grouprecord import MAX_PARENTS, OPERATIONS, Kind, Record
from .membership import MembershipState, replay
from .sync import SeqSet


@dataclasses.dataclass
class PeerSync:
    """Anti-entropy with one connected member, for one group."""

    next_have: float = 0.0                 # when the periodic HAVE is due
    last_answer: float = -1e9              # our last HAVE sent because theirs showed records we lack
    acked_upto: int = 0                    # it reported holding every seq of ours up to this one...
    acked: set = dataclasses.field(default_factory=set)  # ...and these above it
    last_repair: float = -1e9              # our last resend of records its receipt showed lost
    grant: int = 0                         # bytes of its author's own records we asked for (our full HAVE)...
    grant_until: float = 0.0               # ...and until when: those are not rate-limited
    have_due: bool = False                 # a receipt HAVE goes in the next pass
    changed: set = dataclasses.field(default_factory=set)  # authors for that receipt

    def holds(self, seq: int) -> bool:
        """It reported holding our record `seq`."""
        return seq <= self.acked_upto or seq in self.acked


@dataclasses.dataclass(eq=False)
class Live:
    """One group this node holds (active, left or removed)."""

    row: Any                                # the store's group row
    group_id: bytes
    membership: MembershipState
    held: dict[bytes, SeqSet] = dataclasses.field(default_factory=dict)      # author -> seqs
    depth: dict[bytes, int] = dataclasses.field(default_factory=dict)        # hash -> depth
    by_seq: dict[tuple[bytes, int], bytes] = dataclasses.field(default_factory=dict)  # (author, seq) -> hash
    heads: set[bytes] = dataclasses.field(default_factory=set)               # hashes no held record names
    named: set[bytes] = dataclasses.field(default_factory=set)               # hashes held records name as parents
    ops: dict[bytes, Record] = dataclasses.field(default_factory=dict)       # operation hash -> record
    sealed: dict[bytes, Record] = dataclasses.field(default_factory=dict)    # MESSAGEs held without key
    hybrid: set[bytes] = dataclasses.field(default_factory=set)               # hashes of hybrid-signed records
    key_seqs: dict[bytes, int] = dataclasses.field(default_factory=dict)     # author -> seq of its latest KEY
    key_epochs: dict[bytes, int] = dataclasses.field(default_factory=dict)   # ... and the epoch it introduced
    pending: dict[bytes, tuple[Record, float]] = dataclasses.field(default_factory=dict)
    peers: dict[bytes, PeerSync] = dataclasses.field(default_factory=dict)   # by fingerprint
    own: dict[int, tuple[bytes, str]] = dataclasses.field(default_factory=dict)  # our MESSAGE seq -> (hash, message_id)
    floors: dict[bytes, int] = dataclasses.field(default_factory=dict)
    uncovered_since: Optional[float] = None  # our oldest MESSAGE not yet covered by a hybrid record
    # our file_id -> (path, members offered it, the seq of the MESSAGE announcing it)
    files: dict[bytes, tuple[str, set, int]] = dataclasses.field(default_factory=dict)
    recent: dict[bytes, float] = dataclasses.field(default_factory=dict)      # hash -> when taken (monotonic)
    hints: dict[tuple[bytes, bytes], float] = dataclasses.field(default_factory=dict)  # pair -> last HINT
    invited: set[bytes] = dataclasses.field(default_factory=set)  # members we added, not heard from yet (§13.9)

    @property
    def hex(self) -> str:
        return self.group_id.hex()

    @property
    def state(self) -> str:
        return str(self.row.state)

    def index(self, record: Record) -> None:
        """Add a held record to the indexes (the caller stored it)."""
        digest = record.hash()
        self.held.setdefault(record.author, SeqSet(())).add(record.seq)
        self.depth[digest] = record.depth
        self.by_seq[(record.author, record.seq)] = digest
        self.named.update(record.parents)
        self.heads.difference_update(record.parents)
        if digest not in self.named:
            self.heads.add(digest)
        if record.kind in OPERATIONS:
            self.ops[digest] = record
        if record.sig_kind == 2:
            self.hybrid.add(digest)
        if record.kind == Kind.KEY and record.seq > self.key_seqs.get(record.author, 0):
            self.key_seqs[record.author] = record.seq
            self.key_epochs[record.author] = record.key_epoch

    def forget(self, author: bytes, seq: int) -> None:
        """A held record was removed (no longer acceptable, §13.3)."""
        digest = self.by_seq.pop((author, seq), None)
        seqs = self.held.get(author)
        if seqs is not None:
            self.held[author] = SeqSet(s for s in seqs if s != seq)
        if digest is not None:
            self.depth.pop(digest, None)
            self.heads.discard(digest)
            self.ops.pop(digest, None)
            self.sealed.pop(digest, None)
            self.hybrid.discard(digest)

    def replay(self) -> MembershipState:
        """The membership from every operation held (PROTOCOL §13.3)."""
        self.membership = replay(self.group_id, self.ops.values())
        return self.membership

    def parents(self) -> tuple[bytes, ...]:
        """A new record's parents: the heads, the deepest first when there are too many."""
        chosen = sorted(self.heads, key=lambda h: (-self.depth.get(h, 0), h))[:MAX_PARENTS]
        return tuple(sorted(chosen))

    def next_depth(self, parents: Iterable[bytes], prev: bytes) -> int:
        depths = [self.depth.get(h, 0) for h in parents]
        if prev in self.depth:
            depths.append(self.depth[prev])
        return 1 + max(depths, default=0)

    def depth_ok(self, record: Record) -> bool:
        """§13.2: the stated depth exceeds that of every held parent and of `prev`."""
        for digest in (*record.parents, record.prev):
            held = self.depth.get(digest)
            if held is not None and record.depth <= held:
                return False
        return True

    def highest(self, author: bytes) -> int:
        """The highest seq of `author` held (0: none)."""
        seqs = self.held.get(author)
        return seqs.highest() if seqs is not None else 0
