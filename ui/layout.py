"""The screen's widget tree, and where the focus and the dialogs are in it.

    header     me, short ID, P2P state, NAT, online count
    contacts │ conversation (title, days, messages, transfers)
    input line (grows with the newline key)
    footer     key hints, or a notice

No decisions here: the controller (app.py) says what to show; this module knows how the
widgets fit together.
"""

from __future__ import annotations

from typing import Callable, Optional

import urwid

from .keys import KeyMap
from .model import Model
from .views.chrome import Footer, Header, KeyRouter, SizeGuard
from .views.contacts import ContactList
from .views.conversation import ConversationView
from .views.dialogs import Dialog
from .views.modal import Modal
from .views.prompt import Prompt

FOCUS_ORDER = ("input", "contacts", "conversation")


class Layout:
    """Builds the frame once; `update` redraws it from the model, dialogs stack on top."""

    def __init__(self, keymap: KeyMap, on_key: Callable[[str], bool], on_open_contact: Callable[[str], None],
                 on_transfer_answer: Callable[[str, bool], None]) -> None:
        self.header = Header()
        self.contacts = ContactList(on_open_contact)
        self.conversation = ConversationView(on_transfer_answer, keymap)
        self.prompt = Prompt()
        self.footer = Footer(keymap.footer_hints())
        self.columns = urwid.Columns([
            ("weight", 1, self.contacts),
            (1, urwid.AttrMap(urwid.SolidFill("│"), "divider")),
            ("weight", 3, self.conversation),
        ])
        self.bottom = urwid.Pile([urwid.AttrMap(urwid.Divider("─"), "divider"), self.prompt, self.footer])
        self.bottom.focus_position = 1
        self.frame = urwid.Frame(urwid.AttrMap(self.columns, "body"), header=self.header, footer=self.bottom,
                                 focus_part="footer")
        self.guard = SizeGuard(self.frame, quit_key=keymap.label("quit"))
        self.root = KeyRouter(self.guard, on_key)
        self.dialogs: list[Dialog] = []

    def update(self, model: Model, description: str) -> None:
        self.header.update(model, description)
        self.contacts.update(model)
        self.conversation.update(model)
        chat = model.open_contact or model.open_group
        self.prompt.set_caption(f"{chat.name} › " if chat else "› ")

    # -- dialogs ----------------------------------------------------------------------------
    @property
    def top_dialog(self) -> Optional[Dialog]:
        """The dialog that has the keys (the first one shown; later ones wait under it)."""
        return self.dialogs[0] if self.dialogs else None

    def show_dialog(self, dialog: Dialog) -> Dialog:
        self.dialogs.append(dialog)
        self._place()
        return dialog

    def close_dialog(self, dialog: Dialog) -> None:
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)
        self._place()

    def _place(self) -> None:
        self.guard.set_body(Modal(self.dialogs[0], self.frame) if self.dialogs else self.frame)

    # -- focus ------------------------------------------------------------------------------
    @property
    def focus_area(self) -> str:
        if self.frame.focus_position == "footer":
            return "input"
        return "contacts" if self.columns.focus_position == 0 else "conversation"

    def set_focus(self, area: str, open_chat: Optional[str] = None) -> None:
        """Move the focus to an area; in the contact list, onto `open_chat`."""
        if area == "input":
            self.frame.focus_position = "footer"
            self.bottom.focus_position = 1
        else:
            self.frame.focus_position = "body"
            self.columns.focus_position = 0 if area == "contacts" else 2
            if area == "contacts":
                self.contacts.focus_on(open_chat)

    def cycle_focus(self, step: int, has_contacts: bool, open_chat: Optional[str]) -> None:
        """Next (+1) or previous (-1) area; an empty contact list is skipped."""
        order = [a for a in FOCUS_ORDER if a != "contacts" or has_contacts]
        current = self.focus_area if self.focus_area in order else "input"
        self.set_focus(order[(order.index(current) + step) % len(order)], open_chat)
