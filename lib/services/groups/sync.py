"""Anti-entropy planning (PROTOCOL §13.6, §13.7, §13.9), pure: what a HAVE says, what a peer
lacks, what is gone for good, who should be introduced to whom, and the per-author rate
limit. The service owns the state and the clock and passes both in.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator, Mapping, Optional

from ...codec import grouprecord as gr
from ...codec.grouprecord import AuthorRanges, Have
from ...util import TokenBucket as _Bucket


class SeqSet:
    """The seqs of one author held, as a set with its ranges."""

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self._seqs: set[int] = set()
        self._sorted: Optional[list[int]] = None
        for seq in seqs:
            self.add(seq)

    def add(self, seq: int) -> None:
        if seq not in self._seqs:
            self._seqs.add(seq)
            self._sorted = None

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def __iter__(self) -> Iterator[int]:
        return iter(self._ordered())

    def _ordered(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self._seqs)
        return self._sorted

    def highest(self) -> int:
        """The highest seq held, 0 when none is."""
        ordered = self._ordered()
        return ordered[-1] if ordered else 0

    def ranges(self, limit: int = gr.MAX_RANGES) -> tuple[tuple[int, int], ...]:
        """(first, last) runs, ascending; when there are more than `limit`, the highest ones:
        a HAVE then under-reports (costing only resends), never claims a seq not held, and
        still acknowledges the newest records (delivery receipts)."""
        runs: list[tuple[int, int]] = []
        for seq in self._ordered():
            if runs and seq == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], seq)
            else:
                runs.append((seq, seq))
        return tuple(runs[-limit:]) if limit > 0 else ()


def have_frame(group_id: bytes, held: Mapping[bytes, SeqSet], floors: Mapping[bytes, int],
               connected: Iterable[bytes]) -> Have:
    """Our HAVE: every author we hold records of (ascending fingerprints; at most 255), its
    ranges and its floor (one more than the highest seq of it we pruned; 0 or absent: none
    pruned), and the 8-byte prefixes of the members we are connected to."""
    authors = tuple(AuthorRanges(author, floors.get(author, 0), held[author].ranges())
                    for author in sorted(held) if len(held[author]))[:255]
    prefixes = tuple(sorted({fp[: gr.PREFIX_LEN] for fp in connected}))[: gr.MAX_MEMBERS]
    return Have(group_id, authors, prefixes)


def _covered(ranges: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]]:
    return [first for first, _ in ranges], [last for _, last in ranges]


def _in_ranges(seq: int, firsts: list[int], lasts: list[int]) -> bool:
    at = bisect.bisect_right(firsts, seq) - 1
    return at >= 0 and seq <= lasts[at]


def wanted_by_peer(held: Mapping[bytes, SeqSet], peer: Have) -> dict[bytes, list[int]]:
    """Per author, the seqs we hold that the peer's HAVE does not list, ascending; seqs
    below the peer's floor are left out (it pruned them: they are older than its retention).
    The service still filters by entitlement (`membership.entitled`)."""
    reported = {entry.author: entry for entry in peer.authors}
    wanted: dict[bytes, list[int]] = {}
    for author, seqs in held.items():
        entry = reported.get(author)
        if entry is None:
            missing = list(seqs)
        else:
            firsts, lasts = _covered(entry.ranges)
            missing = [s for s in seqs if s >= entry.floor and not _in_ranges(s, firsts, lasts)]
        if missing:
            wanted[author] = missing
    return wanted


def gaps(held: Mapping[bytes, SeqSet], peer: Have) -> dict[bytes, int]:
    """Per author, how many records are gone for good (§13.6 Gaps): the peer's floor is above
    every seq we hold of it plus one, so the seqs in between were pruned by everyone we can
    ask. The service records each gap once (and may skip authors whose records all predate
    its own joining: a new member holds nothing of them and is owed nothing)."""
    found: dict[bytes, int] = {}
    for entry in peer.authors:
        highest = held[entry.author].highest() if entry.author in held else 0
        if entry.floor > highest + 1:
            found[entry.author] = entry.floor - highest - 1
    return found


class TokenBucket:
    """The per-author rate limit on records accepted (§13.9): `capacity` records at once,
    refilled at `rate` a second. The caller passes the time (fake clocks in tests)."""

    MAX_IDLE = 1024  # buckets kept before the full, idle ones are forgotten

    def __init__(self, capacity: int = 40, rate: float = 4.0) -> None:
        self.capacity = capacity
        self.rate = rate
        self._buckets: dict[bytes, _Bucket] = {}

    def take(self, author: bytes, now: float) -> bool:
        """Spend one record of `author`'s allowance if there is one."""
        bucket = self._buckets.get(author)
        if bucket is None:
            if len(self._buckets) >= self.MAX_IDLE:
                self._buckets = {a: b for a, b in self._buckets.items() if not b.idle_full(now)}
            bucket = self._buckets[author] = _Bucket(self.rate, self.capacity, now)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def hint_pairs(our_connected: set[bytes], peer: bytes, peer_connected_prefixes: Iterable[bytes]) -> list[bytes]:
    """The members we are connected to and the peer is not (by its HAVE's 8-byte prefixes),
    ascending: each should be given a HINT of the other's address (§13.7)."""
    theirs = set(peer_connected_prefixes)
    return sorted(fp for fp in our_connected if fp != peer and fp[: gr.PREFIX_LEN] not in theirs)
