"""What each action of the key table does. Keys come only from the table (keys.py, with the conf
file's `[keys]`), so every key can be remapped; this module never names a key.

`KEY_ACTIONS` maps every action of the table to a handler `(app, focus area) -> handled`; a
handler that returns False lets the key go on to the focused widget.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import commands as slash
from .keys import is_printable

if TYPE_CHECKING:
    from .app import App

KeyHandler = Callable[["App", str], bool]


def _quit(app: "App", area: str) -> bool:
    app.quit()
    return True


def _help(app: "App", area: str) -> bool:
    app.show_help()
    return True


def _redraw(app: "App", area: str) -> bool:
    app.redraw()
    return True


def _focus(step: int) -> KeyHandler:
    def move(app: "App", area: str) -> bool:
        app.cycle_focus(step)
        return True
    return move


def _contact(step: int) -> KeyHandler:
    def step_chat(app: "App", area: str) -> bool:
        key = app.model.step_chat(step)
        if key is not None:
            app.open_chat(key)
        return True
    return step_chat


def _next_unread(app: "App", area: str) -> bool:
    key = app.model.next_unread()
    if key is None:
        app.notice("No unread messages")
    else:
        app.open_chat(key)
    return True


def _scroll(step: int) -> KeyHandler:
    def scroll(app: "App", area: str) -> bool:
        app.layout.conversation.page(step)
        return True
    return scroll


def _open(app: "App", area: str) -> bool:
    """In the contact list: open the selected contact. Elsewhere the widget has the key (buttons)."""
    if area != "contacts":
        return False
    fingerprint = app.layout.contacts.focused_fingerprint()
    if fingerprint is not None:
        app.open_from_list(fingerprint)
    return True


def _send(app: "App", area: str) -> bool:
    if area != "input":
        return False
    app.submit()
    return True


def _newline(app: "App", area: str) -> bool:
    if area != "input":
        return False
    app.layout.prompt.insert("\n")
    return True


def _complete(app: "App", area: str) -> bool:
    if area != "input" or not slash.is_command(app.layout.prompt.text):
        return False
    app.complete()
    return True


def _cancel(app: "App", area: str) -> bool:
    """Clears the input line (closing a dialog is `dispatch`'s job: it comes first)."""
    if area != "input" or not app.layout.prompt.text:
        return False
    app.layout.prompt.set_text("")
    return True


KEY_ACTIONS: Mapping[str, KeyHandler] = MappingProxyType({
    "help": _help,
    "quit": _quit,
    "redraw": _redraw,
    "focus_next": _focus(1),
    "focus_prev": _focus(-1),
    "next_contact": _contact(1),
    "prev_contact": _contact(-1),
    "next_unread": _next_unread,
    "scroll_up": _scroll(-1),
    "scroll_down": _scroll(1),
    "open": _open,
    "send": _send,
    "newline": _newline,
    "complete": _complete,
    "cancel": _cancel,
})


def _paste(app: "App", key: str) -> bool:
    """Bracketed paste: the pasted text becomes one draft in the input line, to edit before
    sending; no key inside a paste runs an action (a pasted Enter is a new line)."""
    if key == "begin paste":
        app.pasting = True
        if app.layout.top_dialog is None:
            app.set_focus("input")
        return True
    if key == "end paste":
        app.pasting = False
        return True
    if app.layout.top_dialog is not None:
        return not is_printable(key)    # text for the dialog's own field; the rest is dropped
    if key == "enter":
        app.layout.prompt.insert("\n")
    elif key == "tab":
        app.layout.prompt.insert("    ")
    elif is_printable(key):
        app.layout.prompt.insert(key)
    return True


def dispatch(app: "App", key: Any) -> bool:
    """Global bindings, before the focused widget sees the key. True: handled.

    With a dialog open only quit, cancel (and help, for the help screen) act; the dialog gets
    the other keys. A printable key in the input line is text, whatever it is bound to.
    """
    if not isinstance(key, str):
        return False
    if key in ("begin paste", "end paste") or app.pasting:
        return _paste(app, key)
    actions = app.keymap.actions(key)
    dialog = app.layout.top_dialog
    if dialog is not None:
        if "quit" in actions:
            app.quit()
        if "cancel" in actions or ("help" in actions and dialog.box):
            app.dismiss(dialog)
            return True
        return False
    area = app.focus_area
    if is_printable(key) and area == "input":
        return False
    actions.sort(key=lambda a: a != "complete")   # the shared Tab completes in a /command first
    return any(KEY_ACTIONS[action](app, area) for action in actions)
