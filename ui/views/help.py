"""The help screen: keys from the key table as bound now, commands from the command table."""

from __future__ import annotations

import urwid

from .. import commands as slash
from ..keys import MOUSE_HELP, KeyMap
from .conversation import LEGEND
from .group_view import GROUP_LEGEND
from .dialogs import Callback, Dialog


def help_body(keymap: KeyMap) -> list[urwid.Widget]:
    """Keys (from the key table, with the conf file's overrides) and commands (from the command table)."""
    rows: list[urwid.Widget] = []
    current = None
    for title, keys, text in keymap.help_lines():
        if title != current:
            rows.append(urwid.Text(("help_title", ("\n" if current else "") + title)))
            current = title
        rows.append(urwid.Columns([(18, urwid.Text(("help_key", "  " + keys))), urwid.Text(text)]))
    rows.append(urwid.Text(("help_title", "\nCommands")))
    for usage, text in slash.help_lines():
        rows.append(urwid.Columns([(30, urwid.Text(("help_key", "  " + usage))), urwid.Text(text)]))
    rows.append(urwid.Text([f"\n  Names with spaces go in \"quotes\". {keymap.label('complete')} completes. "
                            "//text sends a line starting with /."]))
    rows.append(urwid.Text(("help_title", "\nMarks")))
    rows.append(urwid.Text("  " + LEGEND + "\n  " + GROUP_LEGEND +
                           "\n  ● online  ○ offline  ✔ verified  ⊘ blocked  # a group (members online/all); "
                           "the number is unread messages."))
    rows.append(urwid.Text("\n  " + MOUSE_HELP))
    return rows


def help_dialog(keymap: KeyMap, on_close: Callback) -> Dialog:
    title = f"Help — {keymap.label('cancel')} or {keymap.label('help')} closes"
    return Dialog(title, help_body(keymap), [("Close", on_close)], on_cancel=on_close, width=100, box=True)
