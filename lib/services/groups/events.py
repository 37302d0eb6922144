"""The group events (contract.py declares their shapes), published from one place.

Why a class of its own: the service calls one method per change with fingerprints and rows,
and every event gets the same ID form and contact names. Call these only after the change
they announce is committed (exactly once: the store's writes report what is new).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ...crypto.identity import format_id
from ...store import GroupMessage
from ...util import iso_utc
from .views import NameOf, file_view, ids

Publish = Callable[[str, Any], Any]


class GroupEvents:
    """Publishes group_* events; `name_of` adds the contact name beside each member ID."""

    def __init__(self, publish: Publish, name_of: NameOf) -> None:
        self.publish = publish
        self.name_of = name_of

    def invited(self, group_id: bytes, name: str, by: bytes) -> None:
        self.publish("group_invited", {"group": group_id.hex(), "name": name, "by": format_id(by),
                                       "by_name": self.name_of(by)})

    def joined(self, group_id: bytes, name: str, members: Iterable[bytes]) -> None:
        self.publish("group_joined", {"group": group_id.hex(), "name": name, "members": ids(members)})

    def member_added(self, group_id: bytes, member: bytes, by: bytes) -> None:
        self.publish("group_member_added", self._change(group_id, member, by))

    def member_removed(self, group_id: bytes, member: bytes, by: bytes) -> None:
        self.publish("group_member_removed", self._change(group_id, member, by))

    def member_left(self, group_id: bytes, member: bytes) -> None:
        self.publish("group_member_left", {"group": group_id.hex(), "member": format_id(member),
                                           "member_name": self.name_of(member)})

    def message_received(self, group_id: bytes, message: GroupMessage) -> None:
        data: dict[str, Any] = {
            "group": group_id.hex(), "hash": message.hash.hex(), "message_id": message.message_id,
            "from": format_id(message.author), "from_name": self.name_of(message.author), "body": message.body,
            "created": iso_utc(message.created), "depth": message.depth, "kind": message.kind,
        }
        if message.file is not None:
            data["file"] = file_view(message.file)
        self.publish("group_message_received", data)

    def message_delivered(self, group_id: bytes, message_id: str, member: bytes, everyone: bool) -> None:
        """`everyone`: every current member now holds it (the UI's ✓✓)."""
        self.publish("group_message_delivered", {"group": group_id.hex(), "message_id": message_id,
                                                 "member": format_id(member), "member_name": self.name_of(member),
                                                 "all": everyone})

    def updated(self, group_id: bytes, name: str, members: Iterable[bytes], admins: Iterable[bytes]) -> None:
        self.publish("group_updated", {"group": group_id.hex(), "name": name, "members": ids(members),
                                       "admins": ids(admins)})

    def _change(self, group_id: bytes, member: bytes, by: bytes) -> dict:
        return {"group": group_id.hex(), "member": format_id(member), "member_name": self.name_of(member),
                "by": format_id(by), "by_name": self.name_of(by)}
