"""Membership changes of one node's groups (PROTOCOL §13.3): what a replay that changed the
members causes — member events, our own state (left, removed, active again), the records of
former members beyond their final seq dropped, and group peers with no common group closed."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from ...codec.grouprecord import GroupWireError, Kind, Record, decode_remove
from ...net.peers import Network
from ...store import Store
from .events import GroupEvents
from .live import Live
from .membership import MembershipState

# fingerprint -> the active groups we share with that member
Common = Callable[[bytes], "list[Live]"]


@dataclasses.dataclass
class MembershipChanges:
    """Applies membership changes; see the module docstring."""

    me: bytes
    store: Store
    network: Network
    counters: Any
    events: GroupEvents
    common: Common

    def apply(self, live: Live, before: MembershipState, after: MembershipState) -> None:
        """What a replay that changed `before` into `after` causes: events, our own state, history
        dropped, group peers closed."""
        was_member = self.me in before.members
        is_member = self.me in after.members
        for fp in sorted(set(after.members) - set(before.members)):
            if fp == self.me:
                continue
            self.events.member_added(live.group_id, fp, after.members[fp].added_by)
        for fp in sorted(set(before.members) - set(after.members)):
            op = last_op(live, after, fp)
            if op is not None and op.kind == Kind.LEAVE:
                self.events.member_left(live.group_id, fp)
            else:
                self.events.member_removed(live.group_id, fp, op.author if op is not None else fp)
        self.drop_unacceptable(live, after)
        if was_member and not is_member:
            op = last_op(live, after, self.me)
            state = "left" if op is not None and op.kind == Kind.LEAVE else "removed"
            live.row = self.store.groups.update_group(live.row, state=state)
        elif is_member and live.state != "active" and not was_member:
            live.row = self.store.groups.update_group(live.row, state="active")
        if after.name and after.name != live.row.name:
            live.row = self.store.groups.update_group(live.row, name=after.name)
        if before.name != after.name or set(before.members) != set(after.members) \
                or before.admins() != after.admins():
            self.events.updated(live.group_id, after.name, after.members, after.admins())
        self.close_strays()

    def drop_unacceptable(self, live: Live, state: MembershipState) -> None:
        """§13.3: records of former members beyond their final_seq leave history."""
        doomed = []
        for fp, final_seq in state.former.items():
            for seq in [s for s in live.held.get(fp, ()) if s > final_seq]:
                digest = live.by_seq.get((fp, seq))
                if digest is not None and digest not in live.ops:
                    doomed.append((fp, seq, digest))
        if not doomed:
            return
        self.store.groups.delete_records([d for _, _, d in doomed])
        for fp, seq, _ in doomed:
            live.forget(fp, seq)
        self.counters["group_records_nonmember"] += len(doomed)

    def close_strays(self) -> None:
        """§13.7: a group peer with no common group left is closed (CLOSE 1)."""
        for link in list(self.network.links.values()):
            if getattr(link, "group_peer", False) and not self.common(link.fingerprint):
                self.network.close_group_peer(link.fingerprint)


def last_op(live: Live, state: MembershipState, target: bytes) -> Optional[Record]:
    """The applied REMOVE or LEAVE that ended `target`'s membership."""
    found = None
    for digest in state.applied:
        record = live.ops.get(digest)
        if record is None:
            continue
        if record.kind == Kind.LEAVE and record.author == target:
            found = record
        elif record.kind == Kind.REMOVE:
            try:
                if decode_remove(record.body)[0] == target:
                    found = record
            except GroupWireError:
                pass
    return found
