"""Modal dialogs drawn over the chat: the dialog widget, messages, confirmations, one-line questions.

The help screen is in help.py; the dialogs of the chat itself (and their text) in chat_dialogs.py.
"""

from __future__ import annotations

from typing import Callable, Collection, Optional, Sequence

import urwid

Callback = Callable[[], None]


class Dialog(urwid.WidgetWrap):
    """A framed box with text and buttons. `dismissable`: the cancel key closes it (runs `on_cancel`).

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
        """The cancel key: close when allowed; returns whether it closed."""
        if not self.dismissable or self.closed:
            return False
        self.closed = True
        if self.on_cancel:
            self.on_cancel()
        return True


class QuestionEdit(urwid.Edit):
    """A one-line answer: a key of the table's `send` action submits (they come from the keymap)."""

    def __init__(self, caption: str, on_enter: Callable[[str], None], submit_keys: Collection[str]) -> None:
        super().__init__(caption)
        self.on_enter = on_enter
        self.submit_keys = submit_keys

    def keypress(self, size, key):
        if key in self.submit_keys:
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
             submit_keys: Collection[str], initial: str = "") -> Dialog:
    holder: dict = {}

    def submit(value: str) -> None:
        dialog = holder["dialog"]
        if not dialog.closed:
            dialog.closed = True
            on_answer(value)

    edit = QuestionEdit(caption, submit, submit_keys)
    edit.set_edit_text(initial)
    edit.set_edit_pos(len(initial))
    dialog = Dialog(title, [urwid.Text(text), urwid.AttrMap(edit, "input")],
                    [("OK", lambda: on_answer(edit.edit_text)), ("Cancel", on_cancel)], on_cancel=on_cancel)
    holder["dialog"] = dialog
    return dialog
