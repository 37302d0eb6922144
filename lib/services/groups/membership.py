"""A group's membership as a pure function of the operations held (PROTOCOL §13.3).

Every member replays the same set of operations in the same order `(depth, hash)` and applies
each one that is valid in the state reached so far, so members who hold the same operations
agree on the membership whatever order they received them in. No I/O, no clock.

`replay` trusts its input's signatures: the service verifies each record (with a bundle from
`known_bundles`) before it stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from ...codec import grouprecord as gr
from ...codec.grouprecord import Kind, Record
from ...crypto import identity

ADMIN = "admin"
MEMBER = "member"
_ROLES = {0: MEMBER, 1: ADMIN}


@dataclass(frozen=True)
class Member:
    fingerprint: bytes
    bundle: bytes  # encoded identity.Bundle
    role: str  # ADMIN or MEMBER
    added_depth: int  # depth of the CREATE or ADD that made it a member (the latest one)
    added_by: bytes


@dataclass
class MembershipState:
    """The state replay reaches. `former` holds the final_seq of everyone who left or was
    removed (the latest time), also when they were added back later."""

    group_id: bytes
    name: str = ""
    creator: bytes = b""
    members: dict[bytes, Member] = field(default_factory=dict)
    former: dict[bytes, int] = field(default_factory=dict)
    known_bundles: dict[bytes, bytes] = field(default_factory=dict)
    applied: list[bytes] = field(default_factory=list)
    rejected: set[bytes] = field(default_factory=set)

    def is_member(self, fingerprint: bytes) -> bool:
        return fingerprint in self.members

    def is_admin(self, fingerprint: bytes) -> bool:
        member = self.members.get(fingerprint)
        return member is not None and member.role == ADMIN

    def admins(self) -> list[bytes]:
        """The admins' fingerprints, ascending."""
        return sorted(fp for fp, m in self.members.items() if m.role == ADMIN)


def order_key(record: Record) -> tuple[int, bytes]:
    """The order every member shows and replays records in (§13.1)."""
    return record.depth, record.hash()


def _bundle_fingerprint(bundle: bytes) -> Optional[bytes]:
    try:
        return identity.Bundle.decode(bundle).fingerprint()
    except identity.IdentityError:
        return None


def _named(record: Record) -> Optional[tuple[bytes, bytes, int]]:
    """(fingerprint, bundle, role) a CREATE or ADD names, or None if its bundle is unusable."""
    try:
        if record.kind == Kind.CREATE:
            bundle, role = gr.decode_create(record.body)[1], 1
        else:
            role, bundle = gr.decode_add(record.body)
    except gr.GroupWireError:
        return None
    fingerprint = _bundle_fingerprint(bundle)
    return None if fingerprint is None else (fingerprint, bundle, role)


def _apply(state: MembershipState, record: Record) -> bool:
    """Apply one operation if valid in `state` (§13.3's table); False (no change) otherwise."""
    author = record.author
    kind = record.kind
    if kind == Kind.CREATE:
        named = _named(record)
        if state.creator or record.hash()[: gr.GROUP_ID_LEN] != state.group_id or named is None:
            return False
        if named[0] != author:
            return False  # the creator's bundle must be its own
        name = gr.decode_create(record.body)[0]
        state.name, state.creator = name, author
        state.members[author] = Member(author, named[1], ADMIN, record.depth, author)
        return True
    if record.group_id != state.group_id or not state.creator:
        return False
    if kind == Kind.LEAVE:
        if not state.is_member(author):
            return False
        _depart(state, author, record.seq)
        return True
    if not state.is_admin(author):
        return False
    try:
        if kind == Kind.ADD:
            named = _named(record)
            if named is None or state.is_member(named[0]) or len(state.members) >= gr.MAX_MEMBERS:
                return False
            fingerprint, bundle, role = named
            state.members[fingerprint] = Member(fingerprint, bundle, _ROLES[role], record.depth, author)
        elif kind == Kind.REMOVE:
            target, final_seq = gr.decode_remove(record.body)
            if target == author or not state.is_member(target):
                return False
            _depart(state, target, final_seq)
        elif kind == Kind.PROMOTE:
            target = gr.decode_promote(record.body)
            if not state.is_member(target) or state.is_admin(target):
                return False
            old = state.members[target]
            state.members[target] = Member(old.fingerprint, old.bundle, ADMIN, old.added_depth, old.added_by)
        elif kind == Kind.RENAME:
            state.name = gr.decode_rename(record.body)
        else:
            return False
    except gr.GroupWireError:
        return False
    return True


def _depart(state: MembershipState, fingerprint: bytes, final_seq: int) -> None:
    """Remove a member, record its final_seq, and keep the group manageable: if members remain
    and none is an admin, the earliest added (ties: lowest fingerprint) becomes one."""
    del state.members[fingerprint]
    state.former[fingerprint] = final_seq
    if state.members and not state.admins():
        heir = min(state.members.values(), key=lambda m: (m.added_depth, m.fingerprint))
        state.members[heir.fingerprint] = Member(heir.fingerprint, heir.bundle, ADMIN, heir.added_depth, heir.added_by)


def replay(group_id: bytes, operations: Iterable[Record]) -> MembershipState:
    """The membership after every operation held, applied in order `(depth, hash)` from the
    empty state (§13.3). Non-operation records and duplicates are ignored; invalid operations
    are listed in `rejected` and change nothing."""
    state = MembershipState(group_id=bytes(group_id))
    unique = {r.hash(): r for r in operations if r.kind in gr.OPERATIONS}
    for record in sorted(unique.values(), key=order_key):
        if record.kind in (Kind.CREATE, Kind.ADD):
            named = _named(record)
            if named is not None:
                state.known_bundles.setdefault(named[0], named[1])
        if _apply(state, record):
            state.applied.append(record.hash())
        else:
            state.rejected.add(record.hash())
    return state


def _in_group(state: MembershipState, record: Record) -> bool:
    """A CREATE belongs to the group it hashes to; any other record names its group."""
    if record.kind == Kind.CREATE:
        return record.hash()[: gr.GROUP_ID_LEN] == state.group_id
    return record.group_id == state.group_id


def accepts(state: MembershipState, record: Record) -> bool:
    """Is a record of this group kept (§13.3, records of former members)? Operations always
    are (replay decides their effect). A KEY, MESSAGE or CHECKPOINT is when its author is a member and it
    is deeper than the author's latest ADD, or when its author left and its seq is at most
    the final_seq recorded for it."""
    if not _in_group(state, record):
        return False
    if record.kind in gr.OPERATIONS:
        return True
    member = state.members.get(record.author)
    if member is not None and record.depth > member.added_depth:
        return True
    final_seq = state.former.get(record.author)
    return final_seq is not None and record.seq <= final_seq


def entitled(state: MembershipState, peer: bytes, record: Record) -> bool:
    """May `record` be sent to `peer` (§13.6 step 2)? Only to a current member: every
    operation, and other records written after the peer's latest ADD."""
    member = state.members.get(peer)
    if member is None or not _in_group(state, record):
        return False
    return record.kind in gr.OPERATIONS or record.depth > member.added_depth
