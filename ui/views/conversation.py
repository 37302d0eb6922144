"""The conversation: a title line, then day separators, messages and file transfers.

Own messages carry their delivery mark: … queued, ✓ sent, ✓✓ delivered, ✗ failed
(· while the request is on its way). Rows are reused between updates (keyed by the model's
item keys), so scrolling back keeps its place while new messages arrive.
"""

from __future__ import annotations

from typing import Callable, Optional

import urwid

from ..keys import KeyMap
from ..groups import Group, GroupMessage
from ..model import Contact, Item, Message, Model, Transfer
from . import fmt, group_view

MARKS = {
    "pending": ("mark_pending", "·"),
    "queued": ("mark_pending", "…"),
    "sent": ("mark_sent", "✓"),
    "delivered": ("mark_delivered", "✓✓"),
    "failed": ("mark_failed", "✗"),
}
LEGEND = "… queued (until the contact is reachable)  ✓ sent  ✓✓ delivered  ✗ failed"


class DaySeparator(urwid.WidgetWrap):
    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(urwid.AttrMap(urwid.Divider("─") if not label else
                                       urwid.Columns([urwid.Divider("─"), ("pack", urwid.Text(f" {label} ")),
                                                      urwid.Divider("─")]), "day"))

    def update(self, value) -> None:
        pass


def message_markup(message: Message, peer_name: str) -> tuple[list, list]:
    """(body markup, mark markup) of one message row."""
    if message.direction == "out":
        body: list = [("own_name", "me: "), ("own_body", message.body)]
        style, mark = MARKS.get(message.state, ("mark_sent", "?"))
        if message.state == "failed" and message.failure:
            body.append(("failure", f"  (not delivered: {message.failure})"))
        elif message.state == "queued":
            body.append(("mark_pending", "  (queued)"))
        return body, [(style, mark)]
    return [("peer_name", f"{peer_name}: "), ("peer_body", message.body)], []


class MessageRow(urwid.WidgetWrap):
    def __init__(self, message: Message, peer_name: str) -> None:
        self.time = urwid.Text(("time", fmt.clock(message.created)))
        self.body = urwid.Text("")
        self.mark = urwid.Text("", align="right")
        self._state: Optional[tuple] = None
        self.update(message, peer_name)
        super().__init__(urwid.Columns([(6, self.time), self.body, (3, self.mark)]))

    def update(self, message: Message, peer_name: str = "") -> None:
        state = (message.state, message.failure, message.body, peer_name, message.created)
        if state == self._state:
            return
        self._state = state
        body, mark = message_markup(message, peer_name)
        self.time.set_text(("time", fmt.clock(message.created)))
        self.body.set_text(body)
        self.mark.set_text(mark or "")


class TransferRow(urwid.WidgetWrap):
    """An offer with Accept/Reject, then a progress bar with rate and ETA, then the outcome."""

    def __init__(self, transfer: Transfer, peer_name: str,
                 on_answer: Callable[[str, bool], None]) -> None:
        self.on_answer = on_answer
        self.transfer_id = transfer.transfer_id
        self.pile = urwid.Pile([])
        self.bar = urwid.ProgressBar("progress", "progress_done", 0, 100)
        self.info = urwid.Text("")
        self._shape: Optional[str] = None
        super().__init__(urwid.Padding(self.pile, left=6, right=3))
        self.update(transfer, peer_name)

    def update(self, transfer: Transfer, peer_name: str = "") -> None:
        arrow = "⇩" if transfer.direction == "in" else "⇧"
        who = f"from {peer_name}" if transfer.direction == "in" else f"to {peer_name}"
        title = urwid.Text([("transfer", f"{arrow} {transfer.file_name}"),
                            f" ({fmt.size(transfer.size)}) {who}  ", ("time", f"#{transfer.transfer_id[:8]}")])
        if transfer.state == "offered" and transfer.direction == "in":
            shape = "offer"
        elif transfer.state in ("offered", "waiting", "active", "paused"):
            shape = "progress"
        else:
            shape = "end"
        if shape == "progress":
            self.bar.set_completion(transfer.percent or 0.0)
            if transfer.state == "active":
                details = [fmt.rate(transfer.rate)]
                if transfer.eta is not None:
                    details.append("ETA " + fmt.duration(transfer.eta))
            elif transfer.state == "paused":
                details = ["paused" + (" by them" if transfer.paused_by == "peer" else "") + " (/resume)"]
            elif transfer.direction == "out":
                details = ["waiting for them"]
            else:
                details = ["starting…"]
            self.info.set_text(("time", "  ".join(d for d in details if d)))
        if shape != self._shape or shape == "end":
            self.pile.contents[:] = [(title, ("pack", None)), (self._second_line(shape, transfer), ("pack", None))]
        else:
            self.pile.contents[0] = (title, ("pack", None))
        self._shape = shape

    def _second_line(self, shape: str, transfer: Transfer) -> urwid.Widget:
        if shape == "offer":
            def button(label: str, accept: bool) -> tuple:
                widget = urwid.Button(label, lambda _b: self.on_answer(self.transfer_id, accept))
                return ("pack", urwid.AttrMap(widget, "button", "button_focus"))
            return urwid.Columns([button("Accept", True), ("pack", urwid.Text("  ")), button("Reject", False),
                                  urwid.Text(("time", "  or /accept, /reject"), wrap="ellipsis")])
        if shape == "progress":
            return urwid.Columns([self.bar, (28, urwid.Padding(self.info, left=1))])
        if transfer.state == "done":
            text = "✓ saved to " + transfer.path if transfer.path and transfer.direction == "in" else "✓ done"
            return urwid.Text(("mark_delivered", text))
        if transfer.state in ("rejected", "cancelled"):
            return urwid.Text(("failure", "✗ " + transfer.state))
        return urwid.Text(("failure", "✗ " + (transfer.error or "failed")))

    def selectable(self) -> bool:
        return self._shape == "offer"


class ChatListBox(urwid.ListBox):
    """A ListBox that remembers its size (for the table's scroll actions) and follows the end."""

    def __init__(self, walker: urwid.ListWalker) -> None:
        super().__init__(walker)
        self.last_size: Optional[tuple[int, int]] = None
        self.follow = True

    def render(self, size, focus=False):
        self.last_size = size
        if self.follow and len(self.body):
            self.set_focus(len(self.body) - 1)
            self.set_focus_valign("bottom")
        return super().render(size, focus)

    def at_end(self) -> bool:
        if self.last_size is None or not len(self.body):
            return True
        return "bottom" in self.ends_visible(self.last_size)

    def scroll(self, key: str) -> None:
        """'page up' / 'page down' (or 'up'/'down' for the wheel) from anywhere."""
        if self.last_size is None:
            return
        self.follow = False
        if key in ("page up", "up"):
            self._scroll_by(self.last_size, key)
        else:
            self._scroll_by(self.last_size, key)
            if self.at_end():
                self.follow = True

    def _scroll_by(self, size, key) -> None:
        # With no selectable rows urwid scrolls by lines; with buttons it moves the focus.
        super().keypress(size, key)

    def keypress(self, size, key):
        command = self._command_map[key]
        if command in (urwid.CURSOR_UP, urwid.CURSOR_DOWN):
            self.last_size = size
            self.scroll("up" if command == urwid.CURSOR_UP else "down")
            return None
        if command in (urwid.CURSOR_PAGE_UP, urwid.CURSOR_PAGE_DOWN):
            # Paging is the key table's scroll_up/scroll_down (run by the key router): urwid's own
            # page keys would keep scrolling after the user remapped them.
            return key
        return super().keypress(size, key)

    def mouse_event(self, size, event, button, col, row, focus):
        if event == "mouse press" and button in (4, 5):
            self.last_size = size
            for _ in range(3):
                self.scroll("up" if button == 4 else "down")
            return True
        return super().mouse_event(size, event, button, col, row, focus)


class ConversationView(urwid.WidgetWrap):
    def __init__(self, on_transfer_answer: Callable[[str, bool], None], keymap: Optional[KeyMap] = None) -> None:
        self.on_transfer_answer = on_transfer_answer
        self.keymap = keymap or KeyMap()     # the welcome texts name keys as bound
        self.title = urwid.Text("", wrap="ellipsis")
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = ChatListBox(self.walker)
        self._rows: dict[tuple, urwid.Widget] = {}
        self.showing: Optional[str] = None
        self.placeholder = urwid.ListBox(urwid.SimpleListWalker([]))
        self.frame = urwid.Frame(self.listbox, header=urwid.Pile([self.title, urwid.AttrMap(urwid.Divider("─"), "divider")]))
        super().__init__(self.frame)

    def scroll(self, key: str) -> None:
        if self.frame.body is self.listbox:
            self.listbox.scroll(key)

    def page(self, step: int) -> None:
        """A page back (-1) or forward (+1): the key table's scroll actions, whatever their keys."""
        self.scroll("page up" if step < 0 else "page down")

    # -- content ----------------------------------------------------------------------------
    def update(self, model: Model) -> None:
        contact, group = model.open_contact, model.open_group
        if contact is None and group is None:
            self._welcome(model)
            return
        key = model.open_chat
        if self.showing != key:
            self._rows.clear()
            self.listbox.follow = True
            self.showing = key
        if group is not None:
            self.title.set_text(group_view.group_title_markup(group, model))
        else:
            self.title.set_text(self._title_markup(contact))
        items = model.conversation_items(key)
        if not items:
            if group is not None:
                hint = group_view.empty_hint(group, self.keymap.label("send"))
            else:
                hint = [("title_dim", f"No messages with {contact.name} yet. "
                                      f"Type below and press {self.keymap.label('send')}.")]
                if not contact.verified:
                    hint.append(("title_dim", f"\nTo check who you talk to: /verify {contact.name}"))
            self.frame.body = urwid.ListBox(urwid.SimpleListWalker([urwid.Text(hint)]))
            return
        self.frame.body = self.listbox
        widgets = []
        fresh: dict[tuple, urwid.Widget] = {}
        for item in items:
            who = self._who(item, model, contact, group)
            widget = self._rows.get(item.key)
            if widget is None:
                widget = self._row(item, who)
            elif item.kind != "day":
                widget.update(item.value, who)
            fresh[item.key] = widget
            widgets.append(widget)
        self._rows = fresh
        if list(self.walker) != widgets:
            focus_widget = self.walker.get_focus()[0] if len(self.walker) else None
            self.walker[:] = widgets
            if not self.listbox.follow and focus_widget in widgets:
                self.walker.set_focus(widgets.index(focus_widget))

    @staticmethod
    def _who(item: Item, model: Model, contact: Optional[Contact], group: Optional[Group]) -> str:
        """The name a row shows: the contact, or in a group the member who wrote or sends it."""
        if group is None:
            return contact.name if contact is not None else ""
        if item.kind == "message":
            return group_view.member_label(model, item.value.sender, item.value.sender_name)
        if item.kind == "transfer":
            who = item.value.who
            found = model.by_name(who) if who else None
            return found.name if found is not None else (who or group.name)
        return ""

    def _row(self, item: Item, who: str) -> urwid.Widget:
        if item.kind == "day":
            return DaySeparator(fmt.day_label(item.value))
        if item.kind == "transfer":
            return TransferRow(item.value, who, self.on_transfer_answer)
        if isinstance(item.value, GroupMessage):
            return group_view.GroupMessageRow(item.value, who)
        return MessageRow(item.value, who)

    @staticmethod
    def _title_markup(contact: Contact) -> list:
        markup: list = [("title", " " + contact.name)]
        if contact.blocked:
            markup.append(("failure", "  ⊘ blocked (/unblock)"))
        elif contact.online:
            details = [contact.path or "online"]
            if contact.rtt_ms is not None:
                details.append(f"{contact.rtt_ms:.0f} ms")
            markup += [("online", "  ● online"), ("title_dim", " · " + " · ".join(details))]
        else:
            markup += [("offline", "  ○ offline"), ("title_dim", " · last seen " + fmt.ago(contact.last_seen))]
        if contact.verified:
            markup.append(("verified", "  ✔ verified"))
        else:
            markup.append(("title_dim", f"  not verified: /verify {contact.name}"))
        return markup

    def _welcome(self, model: Model) -> None:
        self.showing = None
        self._rows.clear()
        me = model.me
        if model.contacts:
            self.title.set_text(("title", " No conversation open"))
            key = self.keymap.label
            lines = [urwid.Text([f"\n Pick a contact: {key('next_contact')} / {key('prev_contact')}, or "
                                 f"{key('focus_next')} to the list and {key('open')}, or click it.\n",
                                 f" {key('next_unread')} jumps to unread messages. "
                                 f"{key('help')} shows every key and command."])]
        else:
            self.title.set_text(("title", f" Welcome to ChatP2P, {me.get('name') or 'there'}"))
            lines = [
                urwid.Text("\n Your ID — read it out to a friend, or send it:"),
                urwid.Padding(urwid.Text(("welcome_id", me.get("id") or "(loading…)")), left=3),
                urwid.Text([
                    "\n To add someone, type their ID:      ", ("help_key", "/add NAME THEIR-ID"),
                    "\n Or save your full key to a file:    ", ("help_key", "/myid ~/my-chatp2p.key"),
                    "\n   and they add it with:             ", ("help_key", "/add YOURNAME @FILE"),
                    "\n Then, unless they are on your LAN:  ", ("help_key", "/connect NAME HOST:PORT"),
                    f"\n\n {self.keymap.label('help')} shows every key and command; "
                    f"{self.keymap.label('quit')} quits.",
                ]),
            ]
        self.frame.body = urwid.ListBox(urwid.SimpleListWalker(lines))
