"""The addresses a link tries for one contact, in order, and the rules that keep them honest.

Pure (no I/O; every time is passed in, from the monotonic clock): `peers.Link.candidates`.
Anyone on a LAN can announce a contact's ID tag (§8) from its own address, so:

- a LAN sighting goes in front of unproven addresses, but never in front of an address where
  a session with this contact was established (`proven`): it has to prove itself first;
- an address whose handshake failed on identity (`key_mismatch`) goes to the back and stays
  behind addresses added later; after `MAX_MISMATCHES` such failures it is dropped and
  refused for `BAN_SECONDS`;
- at most `MAX_CANDIDATES` addresses: when one more arrives, the one dropped is unproven before
  proven, failed before untried, older before newer (a flood of sightings never pushes out a
  proven address).
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

Address = tuple

MAX_CANDIDATES = 8      # addresses kept per contact
MAX_MISMATCHES = 3      # identity failures before an address is dropped
BAN_SECONDS = 600.0     # how long a dropped address is refused
MAX_FAILED = 32         # failure records kept per contact (oldest forgotten first)


class CandidateList:
    """Ordered addresses with their paths ("direct", "lan", "relayed"); a sequence to read."""

    def __init__(self, limit: int = MAX_CANDIDATES) -> None:
        self.limit = limit
        self._order: list[Address] = []
        self.paths: dict[Address, str] = {}
        self._proven: set[Address] = set()
        self._added: dict[Address, int] = {}
        self._failed: dict[Address, tuple[int, float]] = {}   # address -> (mismatches, last one)
        self._seq = itertools.count()

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Address]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, address: object) -> bool:
        return address in self.paths

    def __getitem__(self, index: int) -> Address:
        return self._order[index]

    def __repr__(self) -> str:
        return f"CandidateList({self._order!r})"

    def head(self) -> Optional[Address]:
        return self._order[0] if self._order else None

    def path(self, address: Address, default: Optional[str] = None) -> Optional[str]:
        return self.paths.get(address, default)

    def is_proven(self, address: Address) -> bool:
        return address in self._proven

    def mismatches(self, address: Address) -> int:
        record = self._failed.get(address)
        return record[0] if record else 0

    def refused(self, address: Address, now: float) -> bool:
        """Dropped for identity failures, less than BAN_SECONDS ago."""
        record = self._failed.get(address)
        return record is not None and record[0] >= MAX_MISMATCHES and now - record[1] < BAN_SECONDS

    # -- changing ---------------------------------------------------------------------------
    def add(self, address: Address, path: str, now: float, overwrite_path: bool = False) -> bool:
        """Add `address` (LAN sightings after the proven head, others at the back); True if it
        is in the list afterwards. An address already there keeps its place."""
        if address in self.paths:
            if overwrite_path:
                self.paths[address] = path
            return True
        if self.refused(address, now):
            return False
        if path == "lan":
            position = 0
            while position < len(self._order) and self._order[position] in self._proven:
                position += 1
        else:
            position = self._healthy_end()
        self._order.insert(position, address)
        self.paths[address] = path
        self._added[address] = next(self._seq)
        while len(self._order) > self.limit:
            self._remove(min(self._order, key=self._eviction_rank))
        return address in self.paths

    def set_path(self, address: Address, path: str, now: float) -> None:
        """Record how `address` is reached (the session there runs on this path)."""
        if address in self.paths:
            self.paths[address] = path
        else:
            self.add(address, path, now)

    def proven(self, address: Address, path: str) -> None:
        """A session with the contact was established at `address`: it goes to the head and
        its failures are forgotten."""
        self._failed.pop(address, None)
        if address in self.paths:
            self._order.remove(address)
        else:
            self.paths[address] = path
            self._added[address] = next(self._seq)
        self._order.insert(0, address)
        self._proven.add(address)
        while len(self._order) > self.limit:
            self._remove(min(self._order, key=self._eviction_rank))

    def timed_out(self, address: Address) -> None:
        """No answer from `address`: it goes behind the others that have not failed on
        identity (it stays a candidate)."""
        if address in self.paths and len(self._order) > 1:
            self._order.remove(address)
            self._order.insert(self._healthy_end(), address)

    def mismatch(self, address: Address, now: float) -> bool:
        """A handshake at `address` met another identity: to the back, and after
        MAX_MISMATCHES failures out of the list (refused for BAN_SECONDS). True if dropped."""
        count = self.mismatches(address) + 1
        self._failed.pop(address, None)
        self._failed[address] = (count, now)
        while len(self._failed) > MAX_FAILED:
            del self._failed[next(iter(self._failed))]
        self._proven.discard(address)
        if count >= MAX_MISMATCHES:
            if address in self.paths:
                self._remove(address)
            return True
        if address in self.paths:
            self._order.remove(address)
            self._order.append(address)
        return False

    def _healthy_end(self) -> int:
        """Where the addresses that failed on identity begin (they stay at the back)."""
        position = len(self._order)
        while position > 0 and self.mismatches(self._order[position - 1]) > 0:
            position -= 1
        return position

    def _eviction_rank(self, address: Address) -> tuple:
        # Lowest goes first: unproven before proven, more failures first, then oldest.
        return (address in self._proven, -self.mismatches(address), self._added.get(address, 0))

    def _remove(self, address: Address) -> None:
        self._order.remove(address)
        self.paths.pop(address, None)
        self._proven.discard(address)
        self._added.pop(address, None)
