"""The JSON shapes of groups, members and group messages (contract.py declares them), built
from store rows and plain values: one place, so `group` answers and group events agree.

Pure: no store access of its own. `NameOf` gives a fingerprint's contact name (None for a
group peer who is not a contact); `contact_name` builds one from the contacts repository.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal, Sequence

from ...contract import GroupFileView, GroupMemberView, GroupMessageView, GroupView
from ...crypto.identity import format_id
from ...store import Contact, ContactRepository, Group, GroupMessage
from ...util import iso_utc

NameOf = Callable[[bytes], "str | None"]
Role = Literal["admin", "member"]


def contact_name(contacts: ContactRepository) -> NameOf:
    """fingerprint -> the contact's name, or None (read from the contacts index in memory)."""
    def name_of(fingerprint: bytes) -> str | None:
        contact = contacts.find_by_fingerprint(fingerprint)
        return contact.name if contact is not None else None
    return name_of


def ids(fingerprints: Iterable[bytes]) -> list[str]:
    """Members as IDs, in fingerprint order (the same list on every node)."""
    return [format_id(fp) for fp in sorted(fingerprints)]


def member_view(fingerprint: bytes, role: Role, own: bytes, contact: Contact | None, online: bool) -> GroupMemberView:
    return {
        "id": format_id(fingerprint),
        "name": contact.name if contact is not None else None,
        "role": role,
        "me": fingerprint == own,
        "contact": contact is not None,
        "verified": contact is not None and contact.verified,
        "online": online and fingerprint != own,
    }


def group_view(group: Group, members: Sequence[GroupMemberView], unread: int) -> GroupView:
    """`members` in the order to show (member_view each); this node's role is read there."""
    return {
        "group": group.hex,
        "name": group.name,
        "state": group.state,  # type: ignore[typeddict-item]  # the column's values are GroupState's
        "created": iso_utc(group.created),
        "admin": any(m["me"] and m["role"] == "admin" for m in members),
        "members": list(members),
        "online": sum(1 for m in members if m["online"]),
        "unread": unread,
    }


def file_view(file: dict | None) -> GroupFileView | None:
    """A stored file announcement ({file_id (hex), name, size}), as shown."""
    if file is None:
        return None
    return {"file_id": str(file["file_id"]), "name": str(file["name"]), "size": int(file["size"])}


def message_view(message: GroupMessage, name_of: NameOf, delivered: Iterable[bytes] = (),
                 delivered_all: bool = False) -> GroupMessageView:
    """A history row; `delivered` (the members holding it) and `delivered_all` count for our
    own messages only."""
    return {
        "hash": message.hash.hex(),
        "message_id": message.message_id,
        "from": format_id(message.author),
        "from_name": name_of(message.author),
        "kind": message.kind,
        "body": message.body,
        "file": file_view(message.file),
        "depth": message.depth,
        "created": iso_utc(message.created),
        "received": iso_utc(message.received) if message.received is not None else None,
        "outgoing": message.outgoing,
        "read": message.read,
        "pq_verified": message.pq_verified,
        "delivered": ids(delivered) if message.outgoing else [],
        "delivered_all": delivered_all and message.outgoing,
    }
