"""Modal dialogs drawn over the chat: messages, confirmations, one-line questions, help."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import urwid

from .. import commands as slash
from ..keys import KeyMap
from .conversation import LEGEND

Callback = Callable[[], None]


class Dialog(urwid.WidgetWrap):
    """A framed box with text and buttons. `dismissable`: Esc closes it (runs `on_cancel`).

    A dialog that must be acknowledged (key mismatch) is not dismissable: only its button
    closes it.
    """

    def __init__(self, title: str, body: Sequence[urwid.Widget], buttons: Sequence[tuple[str, Callback]],
                 on_cancel: Optional[Callback] = None, dismissable: bool = True, warn: bool = False,
                 width: int = 78, box: bool = False) -> None:
        self.on_cancel = on_cancel
        self.dismissable = dismissable
        self.width = width
        self.box = box
        self.closed = False
        self.buttons = [urwid.AttrMap(urwid.Button(label, self._wrap(callback)), "button", "button_focus")
                        for label, callback in buttons]
        row = urwid.Columns([("pack", b) for b in self.buttons], dividechars=2) if self.buttons else None
        if box:
            pieces = [urwid.ListBox(urwid.SimpleFocusListWalker(list(body)))]
            if row is not None:
                pieces += [("pack", urwid.Divider()), ("pack", urwid.Padding(row, align="center", width="pack"))]
            inner: urwid.Widget = urwid.Pile(pieces)
        else:
            widgets = list(body)
            if row is not None:
                widgets += [urwid.Divider(), urwid.Padding(row, align="center", width="pack")]
            inner = urwid.Pile(widgets)
            if row is not None:
                inner.focus_position = len(widgets) - 1 if not any(w.selectable() for w in body) else \
                    next(i for i, w in enumerate(body) if w.selectable())
        frame = urwid.LineBox(urwid.Padding(inner, left=1, right=1), title=title,
                              title_attr="dialog_warn" if warn else "dialog_title")
        super().__init__(urwid.AttrMap(frame, "dialog_warn" if warn else "dialog"))

    def _wrap(self, callback: Callback) -> Callable:
        def run(_button=None) -> None:
            if not self.closed:
                self.closed = True
                callback()
        return run

    def cancel(self) -> bool:
        """Esc: close when allowed; returns whether it closed."""
        if not self.dismissable or self.closed:
            return False
        self.closed = True
        if self.on_cancel:
            self.on_cancel()
        return True


class QuestionEdit(urwid.Edit):
    """A one-line answer: Enter submits."""

    def __init__(self, caption: str, on_enter: Callable[[str], None]) -> None:
        super().__init__(caption)
        self.on_enter = on_enter

    def keypress(self, size, key):
        if key == "enter":
            self.on_enter(self.edit_text)
            return None
        return super().keypress(size, key)


def message(title: str, text, on_close: Callback, warn: bool = False, dismissable: bool = True,
            button: str = "OK") -> Dialog:
    return Dialog(title, [urwid.Text(text)], [(button, on_close)], on_cancel=on_close,
                  dismissable=dismissable, warn=warn)


def confirm(title: str, text, yes: str, on_yes: Callback, on_no: Callback, no: str = "Cancel") -> Dialog:
    return Dialog(title, [urwid.Text(text)], [(yes, on_yes), (no, on_no)], on_cancel=on_no)


def question(title: str, text, caption: str, on_answer: Callable[[str], None], on_cancel: Callback,
             initial: str = "") -> Dialog:
    holder: dict = {}

    def submit(value: str) -> None:
        dialog = holder["dialog"]
        if not dialog.closed:
            dialog.closed = True
            on_answer(value)

    edit = QuestionEdit(caption, submit)
    edit.set_edit_text(initial)
    edit.set_edit_pos(len(initial))
    dialog = Dialog(title, [urwid.Text(text), urwid.AttrMap(edit, "input")],
                    [("OK", lambda: on_answer(edit.edit_text)), ("Cancel", on_cancel)], on_cancel=on_cancel)
    holder["dialog"] = dialog
    return dialog


def help_body(keymap: KeyMap) -> list[urwid.Widget]:
    """Keys (from the key table) and commands (from the command table)."""
    rows: list[urwid.Widget] = []
    current = None
    for title, keys, text in keymap.help_lines():
        if title != current:
            rows.append(urwid.Text(("help_title", ("\n" if current else "") + title)))
            current = title
        rows.append(urwid.Columns([(18, urwid.Text(("help_key", "  " + keys))), urwid.Text(text)]))
    rows.append(urwid.Text(("help_title", "\nCommands")))
    for usage, text in slash.help_lines():
        rows.append(urwid.Columns([(26, urwid.Text(("help_key", "  " + usage))), urwid.Text(text)]))
    rows.append(urwid.Text(["\n  Names with spaces go in \"quotes\". Tab completes. //text sends a line starting with /."]))
    rows.append(urwid.Text(("help_title", "\nMarks")))
    rows.append(urwid.Text("  " + LEGEND + "\n  ● online  ○ offline  ✔ verified  ⊘ blocked; the number is unread messages."))
    rows.append(urwid.Text("\n  " + "Mouse: click a contact to open it; the wheel scrolls the conversation."))
    return rows


def help_dialog(keymap: KeyMap, on_close: Callback) -> Dialog:
    return Dialog("Help — Esc or F1 closes", help_body(keymap), [("Close", on_close)], on_cancel=on_close,
                  width=100, box=True)
