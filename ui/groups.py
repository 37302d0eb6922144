"""Group chats in the UI's state: the groups, their members and messages. Pure Python, no urwid,
no I/O; `Model` owns one `Groups` and hands it the `group_*` events.

A group is keyed in the UI by `group_key(group_id)` ("group:" + the 32 hex digits), which can
never be a contact's ID (IDs have dashes, no colon), so the open conversation, the contact
list's focus and a transfer's conversation are one string whatever they show.

Message order is the daemon's (`group history`: the DAG's (depth, hash) order, §13.1), never
the sender's clock: a late message belongs somewhere in the middle. So a message that arrives
as an event is kept at the end only until the next history answer, which the controller asks
for on every `group_message_received` of the open group.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

from .model_common import Alert, parse_time

GROUP_PREFIX = "group:"
# An outgoing group message moves forward only: pending (request on its way), sent (written,
# no member has it yet), some (✓: at least one member has it), all (✓✓), or failed.
GROUP_OUT_RANK = {"pending": 0, "sent": 1, "failed": 2, "some": 3, "all": 4}


def group_key(group_id: str) -> str:
    return GROUP_PREFIX + group_id


def is_group_key(key: Optional[str]) -> bool:
    return bool(key) and str(key).startswith(GROUP_PREFIX)


@dataclasses.dataclass
class Member:
    member_id: str                  # the member's ID (format_id): a contact's fingerprint if a contact
    name: Optional[str] = None      # the contact's local name, when the member is a contact
    admin: bool = False
    online: Optional[bool] = None   # as `group info` reports it (group peers are in no contact list)


@dataclasses.dataclass
class GroupMessage:
    message_id: str
    sender: str                     # the author's ID
    sender_name: Optional[str]
    body: str
    created: float                  # the author's clock: shown, never used to order
    kind: str = "text"              # text, file, gap
    outgoing: bool = False
    state: str = "received"         # out: GROUP_OUT_RANK; in: received
    delivered_to: set[str] = dataclasses.field(default_factory=set)
    file: Optional[dict] = None
    pq_verified: Optional[bool] = None
    failure: Optional[str] = None

    @property
    def key(self) -> tuple[str, str]:
        return ("group", self.message_id)


@dataclasses.dataclass
class Group:
    group_id: str
    name: str
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    state: str = "active"           # active, left, removed
    unread: int = 0
    messages: dict[str, GroupMessage] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)      # the last history answer's order
    tail: list[str] = dataclasses.field(default_factory=list)       # arrived since, until the next answer
    loaded: bool = False
    # what `group list` says before `group info` gives the members
    member_count: Optional[int] = None
    online_count: Optional[int] = None
    admin: bool = False             # I am an admin

    @property
    def key(self) -> str:
        return group_key(self.group_id)

    def sorted_messages(self) -> list[GroupMessage]:
        listed = set(self.order)
        ids = self.order + [m for m in self.tail if m not in listed]
        return [self.messages[m] for m in ids if m in self.messages]

    def admins(self) -> list[Member]:
        return [m for m in self.members.values() if m.admin]


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _member_id(value: Any) -> Optional[str]:
    """A member as the API names it: an ID string, or a dict with its ID under one of these keys."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        for field in ("member", "id", "fingerprint", "peer"):
            if _text(value.get(field)):
                return value[field]
    return None


def parse_members(values: Any, admins: Any = None) -> dict[str, Member]:
    """`members` (IDs, or dicts with id, name, role/admin, online) and `admins` (IDs) of an answer."""
    admin_ids = {_member_id(a) for a in admins} if isinstance(admins, list) else set()
    members: dict[str, Member] = {}
    for value in values if isinstance(values, list) else []:
        member_id = _member_id(value)
        if member_id is None:
            continue
        view = value if isinstance(value, dict) else {}
        online = view.get("online", view.get("connected"))
        members[member_id] = Member(
            member_id, _text(view.get("name")),
            member_id in admin_ids or view.get("role") == "admin" or view.get("admin") is True,
            online if isinstance(online, bool) else None)
    return members


def _out_state(view: dict) -> str:
    """The delivery state of one of our messages in a history answer."""
    state = str(view.get("state") or "")
    if state in GROUP_OUT_RANK:
        return state
    if view.get("all_delivered") or view.get("delivered_all") or state == "delivered" or view.get("delivered") is True:
        return "all"
    delivered = view.get("delivered_to", view.get("delivered"))
    if (isinstance(delivered, list) and delivered) or (isinstance(delivered, int) and not isinstance(delivered, bool)
                                                       and delivered > 0):
        return "some"
    return "sent"


class Groups:
    """Every group this node is in, from `group list` / `info` / `history` answers and events."""

    def __init__(self, me: Any = None) -> None:
        self.groups: dict[str, Group] = {}         # by group id (hex)
        self._me = me or (lambda: "")

    def get(self, key_or_id: Optional[str]) -> Optional[Group]:
        if not key_or_id:
            return None
        group_id = key_or_id[len(GROUP_PREFIX):] if is_group_key(key_or_id) else key_or_id
        return self.groups.get(group_id)

    def by_name(self, name: str) -> Optional[Group]:
        found = [g for g in self.groups.values() if g.name == name or g.group_id == name]
        folded = [g for g in self.groups.values() if g.name.casefold() == name.casefold()]
        return found[0] if found else folded[0] if len(folded) == 1 else None

    def sorted_groups(self) -> list[Group]:
        """Active groups first, then by name: where a user looks for them."""
        return sorted(self.groups.values(), key=lambda g: (g.state != "active", g.name.casefold(), g.group_id))

    def _upsert(self, view: dict) -> Optional[Group]:
        group_id = _text(view.get("group")) or _text(view.get("group_id")) or _text(view.get("id"))
        if group_id is None:
            return None
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id, _text(view.get("name")) or group_id[:8])
        if _text(view.get("name")):
            group.name = view["name"]
        if "members" in view:
            members = parse_members(view.get("members"), view.get("admins"))
            for member_id, member in members.items():   # an event's bare IDs keep what info said
                old = group.members.get(member_id)
                if old is not None:
                    member.name = member.name or old.name
                    member.online = old.online if member.online is None else member.online
                    member.admin = member.admin or ("admins" not in view and old.admin)
            group.members = members
        elif isinstance(view.get("admins"), list):
            admin_ids = {_member_id(a) for a in view["admins"]}
            for member in group.members.values():
                member.admin = member.member_id in admin_ids
        for field, attr in (("members_count", "member_count"), ("online", "online_count")):
            if isinstance(view.get(field), int) and not isinstance(view.get(field), bool):
                setattr(group, attr, view[field])
        if isinstance(view.get("admin"), bool):
            group.admin = view["admin"]
        if view.get("state") in ("active", "left", "removed"):
            group.state = view["state"]
        if isinstance(view.get("unread"), int) and not isinstance(view.get("unread"), bool):
            group.unread = view["unread"]
        return group

    def set_groups(self, views: Iterable[Any]) -> None:
        """A `group list` answer: groups not in it are gone (left and deleted elsewhere)."""
        seen = set()
        for view in views:
            group = self._upsert(view) if isinstance(view, dict) else None
            if group is not None:
                seen.add(group.group_id)
        for group_id in list(self.groups):
            if group_id not in seen:
                del self.groups[group_id]

    def set_info(self, view: Any) -> Optional[Group]:
        """A `group info` answer (or any action answering the group's view)."""
        return self._upsert(view) if isinstance(view, dict) else None

    def _message(self, group: Group, view: dict, now: float) -> GroupMessage:
        message_id = str(view.get("message_id") or view.get("id"))
        sender = _text(view.get("from")) or _text(view.get("author")) or ""
        outgoing = bool(view.get("outgoing")) or (view.get("direction") == "out") or (sender and sender == self._me())
        file = view.get("file") if isinstance(view.get("file"), dict) else None
        message = GroupMessage(message_id, sender, _text(view.get("name")) or _text(view.get("from_name")),
                               str(view.get("body") or ""), parse_time(view.get("created"), now) or now,
                               str(view.get("kind") or "text"), bool(outgoing),
                               _out_state(view) if outgoing else "received", file=file,
                               pq_verified=view.get("pq_verified") if isinstance(view.get("pq_verified"), bool) else None)
        delivered = view.get("delivered_to")
        if isinstance(delivered, list):
            message.delivered_to = {d for d in delivered if isinstance(d, str)}
        old = group.messages.get(message_id)
        if old is not None and old.outgoing:   # states never go back (an event can beat the answer)
            if GROUP_OUT_RANK.get(old.state, 0) > GROUP_OUT_RANK.get(message.state, 0):
                message.state = old.state
            message.delivered_to |= old.delivered_to
        group.messages[message_id] = message
        return message

    def set_history(self, key: str, answer: Any, now: float) -> None:
        """A `group history` answer: its order is the order (late messages sit where they belong)."""
        group = self.get(key)
        if group is None:
            return
        views = answer.get("messages") if isinstance(answer, dict) else answer
        order = []
        for view in views if isinstance(views, list) else []:
            if isinstance(view, dict) and (view.get("message_id") or view.get("id")):
                order.append(self._message(group, view, now).message_id)
        group.order = order
        listed = set(order)
        group.tail = [m for m in group.tail if m not in listed]
        group.loaded = True

    def add_outgoing(self, key: str, body: str, message_id: str, now: float) -> Optional[GroupMessage]:
        group = self.get(key)
        if group is None:
            return None
        message = GroupMessage(message_id, self._me(), None, body, now, outgoing=True, state="pending")
        group.messages[message_id] = message
        group.tail.append(message_id)
        return message

    def outgoing_result(self, key: str, message_id: str, reply: dict) -> None:
        """The answer to `group send_message`: {group, message_id, state}, or an error."""
        group = self.get(key)
        message = group.messages.get(message_id) if group else None
        if message is None:
            return
        if reply.get("success"):
            self._advance(message, "sent")
        else:
            self._advance(message, "failed")
            message.failure = str(reply.get("error") or "not sent")

    @staticmethod
    def _advance(message: GroupMessage, state: str) -> None:
        if GROUP_OUT_RANK.get(state, 0) >= GROUP_OUT_RANK.get(message.state, 0):
            message.state = state

    def forget(self, key: str) -> None:
        group = self.get(key)
        if group is not None:
            del self.groups[group.group_id]

    # -- events -----------------------------------------------------------------------------
    def apply_event(self, name: str, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        handler = getattr(self, "_on_" + name, None)
        return handler(data, now, open_key) or [] if handler is not None else []

    def _refresh(self, data: dict) -> list[Alert]:
        return [Alert("group_refresh", {"group": data.get("group")})]

    def _on_group_invited(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        by = _text(data.get("by_name")) or _text(data.get("by")) or "someone"
        return [Alert("notice", {"text": f"{by} added you to the group {data.get('name') or '?'}"})] + \
            self._refresh(data)

    def _on_group_joined(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        group = self._upsert(data)
        if group is not None:
            group.state = "active"
        return self._refresh(data)

    def _on_group_updated(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        self._upsert(data)
        return self._refresh(data)

    def _on_group_member_added(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        group = self.get(_text(data.get("group")))
        member_id = _text(data.get("member"))
        if group is not None and member_id is not None and member_id not in group.members:
            group.members[member_id] = Member(member_id, _text(data.get("name")))
        return self._refresh(data)

    def _gone(self, data: dict, state: str) -> list[Alert]:
        group = self.get(_text(data.get("group")))
        member_id = _text(data.get("member"))
        if group is None or member_id is None:
            return []
        group.members.pop(member_id, None)
        if member_id == self._me():
            group.state = state
            return []
        return self._refresh(data)

    def _on_group_member_removed(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        return self._gone(data, "removed")

    def _on_group_member_left(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        return self._gone(data, "left")

    def _on_group_message_received(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        group = self.get(_text(data.get("group")))
        if group is None:
            return self._refresh(data)
        message_id = str(data.get("message_id") or "")
        if not message_id or message_id in group.messages:
            return []
        self._message(group, data, now)
        group.tail.append(message_id)
        if group.key == open_key:   # placed where it belongs by the history this asks for
            return [Alert("group_history", {"group": group.group_id}),
                    Alert("group_mark_read", {"group": group.group_id})]
        group.unread += 1
        sender = _text(data.get("name")) or str(data.get("from") or "someone")[:11]
        notify = {"event": "group_message_received", "timestamp": data.get("created"),
                  "data": {"peer": f"{sender} in {group.name}", "message": str(data.get("body") or ""),
                           "group": group.group_id}}
        return [Alert("bell", {"peer": group.name, "notify": notify})]

    def _on_group_message_delivered(self, data: dict, now: float, open_key: Optional[str]) -> list[Alert]:
        group = self.get(_text(data.get("group")))
        message = group.messages.get(str(data.get("message_id"))) if group else None
        if message is None or not message.outgoing:
            return []
        if _text(data.get("member")):
            message.delivered_to.add(data["member"])
        self._advance(message, "all" if data.get("all") else "some")
        return []
