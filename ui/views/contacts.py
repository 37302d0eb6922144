"""The contact column: groups (# name, unread count, members online), then contacts (online dot,
name, verified mark, unread count, path, last message)."""

from __future__ import annotations

from typing import Callable, Optional

import urwid

from ..groups import Group
from ..model import Contact, Model

ONLINE, CONNECTING, OFFLINE = "●", "◌", "○"
VERIFIED = "✔"
BLOCKED = "⊘"
GROUP = "#"


def contact_markup(contact: Contact) -> tuple[list, list, list]:
    """(dot, name line, detail line) markup for one contact."""
    if contact.blocked:
        dot = [("contact_blocked", BLOCKED + " ")]
    elif contact.online:
        dot = [("online", ONLINE + " ")]
    elif contact.state == "connecting":
        dot = [("offline", CONNECTING + " ")]
    else:
        dot = [("offline", OFFLINE + " ")]
    name: list = [("contact_blocked" if contact.blocked else "contact", contact.name)]
    badges: list = []
    if contact.verified:
        badges.append(("verified", " " + VERIFIED))
    if contact.unread:
        badges.append(("unread", f" {contact.unread}"))
    if contact.blocked:
        where = "blocked"
    elif contact.online:
        where = contact.path or "online"
    elif contact.state == "connecting":
        where = "connecting"
    else:
        where = "offline"
    detail = "  " + where
    if contact.preview:
        detail += " · " + ("me: " if contact.preview_out else "") + contact.preview
    return dot, name + badges, [("preview", detail)]


def members_online(group: Group, model: Model) -> tuple[int, int]:
    """(members online, other members): a contact's link state, else what `group info` said."""
    if not group.members:    # `group list` counts them; `group info` names them
        return group.online_count or 0, max(0, (group.member_count or 1) - 1)
    me = model.me.get("id")
    others = [m for m in group.members.values() if m.member_id != me]
    online = 0
    for member in others:
        contact = model.contacts.get(member.member_id)
        online += bool(contact.online if contact is not None else member.online)
    return online, len(others)


def group_markup(group: Group, model: Model) -> tuple[list, list, list]:
    """(icon, name line, detail line) markup for one group."""
    name: list = [("contact" if group.state == "active" else "contact_blocked", group.name)]
    if group.unread:
        name.append(("unread", f" {group.unread}"))
    online, others = members_online(group, model)
    if group.state != "active":
        detail = "  " + group.state
    else:
        detail = f"  {online}/{others} online" if others else "  only you"
    last = group.sorted_messages()[-1:] if group.messages else []
    if last:
        detail += " · " + ("me: " if last[0].outgoing else "") + " ".join(last[0].body.split())
    style = "online" if online and group.state == "active" else "offline"
    return [(style, GROUP + " ")], name, [("preview", detail)]


class ContactItem(urwid.WidgetWrap):
    """Two lines per contact or group; a click opens the conversation (keys: the table's `open`
    action). `fingerprint` is the conversation's key (a group's is "group:…")."""

    def __init__(self, contact: Optional[Contact], is_open: bool, on_open: Callable[[str], None],
                 markup: Optional[tuple[list, list, list]] = None, key: Optional[str] = None) -> None:
        self.fingerprint = key or contact.fingerprint
        self.on_open = on_open
        dot, name, detail = markup or contact_markup(contact)
        line = urwid.Columns([(2, urwid.Text(dot)), urwid.Text(name, wrap="ellipsis")])
        pile = urwid.Pile([line, urwid.Text(detail, wrap="ellipsis")])
        attr = "contact_open" if is_open else "contact"
        super().__init__(urwid.AttrMap(pile, attr, focus_map="contact_focus"))

    def selectable(self) -> bool:
        return True

    def keypress(self, size: tuple, key: str) -> Optional[str]:
        """No key of its own: the key router runs `open` on the focused item, so it can be remapped."""
        return key

    def mouse_event(self, size: tuple, event: str, button: int, col: int, row: int, focus: bool) -> bool:
        if event == "mouse press" and button == 1:
            self.on_open(self.fingerprint)
            return True
        return False


class ContactList(urwid.WidgetWrap):
    def __init__(self, on_open: Callable[[str], None]) -> None:
        self.on_open = on_open
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.empty = urwid.ListBox(urwid.SimpleListWalker([
            urwid.Text(("preview", " No contacts yet.\n /add NAME ID"))]))
        super().__init__(self.empty)

    def update(self, model: Model) -> None:
        focused = self.focused_fingerprint()
        items = [ContactItem(None, g.key == model.open_chat, self.on_open, group_markup(g, model), g.key)
                 for g in model.groups.sorted_groups()]
        items += [ContactItem(c, c.fingerprint == model.open_chat, self.on_open) for c in model.sorted_contacts()]
        self.walker[:] = items
        if not items:
            self._w = self.empty
            return
        self._w = self.listbox
        target = focused if focused in [i.fingerprint for i in items] else model.open_chat
        for i, item in enumerate(items):
            if item.fingerprint == target:
                self.walker.set_focus(i)
                break

    def focus_on(self, fingerprint: Optional[str]) -> None:
        for i, item in enumerate(self.walker):
            if item.fingerprint == fingerprint:
                self.walker.set_focus(i)
                return

    def focused_fingerprint(self) -> Optional[str]:
        if not len(self.walker):
            return None
        widget, _ = self.walker.get_focus()
        return widget.fingerprint if widget is not None else None

    def selectable(self) -> bool:
        return bool(len(self.walker))
