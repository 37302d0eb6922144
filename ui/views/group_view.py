"""A group's conversation rows and title: who wrote each message, and the delivery of our own
as ✓ (some members have it) / ✓✓ (all of them), from `group_message_delivered`."""

from __future__ import annotations

from typing import Optional

import urwid

from ..groups import Group, GroupMessage
from ..model import Model
from . import fmt
from .contacts import members_online

GROUP_MARKS = {
    "pending": ("mark_pending", "·"),
    "sent": ("mark_pending", "…"),
    "some": ("mark_sent", "✓"),
    "all": ("mark_delivered", "✓✓"),
    "failed": ("mark_failed", "✗"),
}
GROUP_LEGEND = "In groups: … no member has it yet  ✓ some members have it  ✓✓ all of them"


def member_label(model: Model, member_id: str, name: Optional[str] = None) -> str:
    """A member as the user knows them: the contact's name, else the name an event gave, else
    the start of the ID (a group peer who is not a contact)."""
    contact = model.contacts.get(member_id)
    if contact is not None:
        return contact.name
    return name or member_id[:11] or "?"


def group_message_markup(message: GroupMessage, sender: str) -> tuple[list, list]:
    """(body markup, mark markup) of one group message row."""
    if message.kind == "gap":   # the body is the number of messages gone (§13.6 Gaps)
        count = message.body.strip()
        text = (f"{count} message{'s' if count != '1' else ''} no longer available (older than the others keep)"
                if count.isdigit() else message.body or "Some messages are no longer available")
        return [("failure", "── " + text + " ──")], []
    body_text = message.body
    if message.kind == "file" and message.file:
        arrow = "⇧" if message.outgoing else "⇩"
        body_text = f"{arrow} {message.file.get('name') or '?'} ({fmt.size(message.file.get('size'))})"
    if message.outgoing:
        body: list = [("own_name", "me: "), ("own_body", body_text)]
        style, mark = GROUP_MARKS.get(message.state, ("mark_sent", "?"))
        if message.state == "failed" and message.failure:
            body.append(("failure", f"  (not sent: {message.failure})"))
        return body, [(style, mark)]
    return [("peer_name", f"{sender}: "), ("peer_body", body_text)], []


class GroupMessageRow(urwid.WidgetWrap):
    def __init__(self, message: GroupMessage, sender: str) -> None:
        self.time = urwid.Text("")
        self.body = urwid.Text("")
        self.mark = urwid.Text("", align="right")
        self._state: Optional[tuple] = None
        self.update(message, sender)
        super().__init__(urwid.Columns([(6, self.time), self.body, (3, self.mark)]))

    def update(self, message: GroupMessage, sender: str = "") -> None:
        state = (message.state, message.failure, message.body, sender, message.created, message.kind)
        if state == self._state:
            return
        self._state = state
        body, mark = group_message_markup(message, sender)
        self.time.set_text(("time", fmt.clock(message.created)))
        self.body.set_text(body)
        self.mark.set_text(mark or "")


def group_title_markup(group: Group, model: Model) -> list:
    online, others = members_online(group, model)
    markup: list = [("title", " # " + group.name)]
    if group.state != "active":
        return markup + [("failure", f"  you {'were removed' if group.state == 'removed' else 'left'}")]
    markup += [("online" if online else "offline", f"  {online}/{others} online"),
               ("title_dim", f" · {others + 1} members · /members")]
    me = group.members.get(model.me.get("id") or "")
    if (me is not None and me.admin) or (me is None and group.admin):
        markup.append(("title_dim", " · you are admin"))
    return markup


def empty_hint(group: Group, send_key: str) -> list:
    if group.state != "active":
        return [("title_dim", f"You are no longer a member of {group.name}.")]
    return [("title_dim", f"No messages in {group.name} yet. Type below and press {send_key}.\n"
                          "/members shows who is in it; /invite NAME adds a contact (admins).")]
