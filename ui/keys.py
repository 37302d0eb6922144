"""Key bindings: ONE table. It drives the controller, the footer hints and the help screen.

Keys are written the way urwid reports them ('ctrl q', 'meta a', 'shift tab', 'page up',
'f1', '?'). The conf file's `[keys]` section replaces the keys of an action:

    [keys]
    quit = ctrl x          # one key
    help = f1, f2          # several, comma-separated
    next_unread = alt u    # 'alt' is read as urwid's 'meta'; 'ctrl+x', 'C-x', 'M-a' work too

A binding made of one printable character (like '?') acts only when the input line does not
have the focus, so it can still be typed in a message.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Binding:
    action: str
    keys: tuple[str, ...]
    help: str
    category: str
    hint: str = ""          # short label for the footer; empty: not shown there


CATEGORIES = (
    ("general", "General"),
    ("navigation", "Moving around"),
    ("compose", "Writing"),
)

BINDINGS: tuple[Binding, ...] = (
    Binding("help", ("f1", "?"), "Show or close this help ('?' outside the input line)", "general", "help"),
    Binding("quit", ("ctrl q",), "Quit (the embedded node stops cleanly)", "general", "quit"),
    Binding("redraw", ("ctrl l",), "Redraw the screen", "general"),
    Binding("focus_next", ("tab",), "Next area: input, contacts, conversation", "navigation", "focus"),
    Binding("focus_prev", ("shift tab",), "Previous area", "navigation"),
    Binding("next_contact", ("ctrl n",), "Open the next contact", "navigation", "next"),
    Binding("prev_contact", ("ctrl p",), "Open the previous contact", "navigation"),
    Binding("next_unread", ("meta a",), "Open the next conversation with unread messages", "navigation", "unread"),
    Binding("scroll_up", ("page up",), "Scroll the conversation back (the mouse wheel too)", "navigation"),
    Binding("scroll_down", ("page down",), "Scroll the conversation forward", "navigation"),
    Binding("open", ("enter", " "), "Open the contact selected in the list", "navigation"),
    Binding("send", ("enter",), "Send the message or run the /command; answer a question", "compose", "send"),
    Binding("newline", ("meta enter",), "New line in the message", "compose", "newline"),
    Binding("complete", ("tab",), "Complete a /command, contact name, file path or transfer ID", "compose"),
    Binding("cancel", ("esc",), "Close a dialog; clear the input line", "compose"),
)

BINDINGS_BY_ACTION: Mapping[str, Binding] = {b.action: b for b in BINDINGS}
# Actions that may share a key because they never apply in the same place: Tab completes in a
# /command and moves on elsewhere; Enter sends in the input line and opens in the contact list.
SHARED_KEYS: tuple[frozenset[str], ...] = (frozenset({"focus_next", "complete"}), frozenset({"send", "open"}))
FOOTER_ACTIONS = ("send", "newline", "focus_next", "next_contact", "help", "quit")
MOUSE_HELP = "Mouse: click a contact to open it; the wheel scrolls the conversation."

_NAMED = {
    "enter", "tab", "backspace", "delete", "insert", "home", "end", "page up", "page down",
    "up", "down", "left", "right", "esc",
} | {f"f{i}" for i in range(1, 21)}
_ALIASES = {
    "return": "enter", "ret": "enter", "escape": "esc", "del": "delete", "ins": "insert",
    "pgup": "page up", "pageup": "page up", "prior": "page up",
    "pgdn": "page down", "pagedown": "page down", "next": "page down", "space": " ", "bs": "backspace",
}
_MODIFIERS = {"ctrl": "ctrl", "control": "ctrl", "c": "ctrl", "alt": "meta", "meta": "meta", "m": "meta",
              "shift": "shift", "s": "shift"}
_MOD_ORDER = ("shift", "meta", "ctrl")   # the order urwid uses ('shift meta ctrl x' is not typical)


class KeyNameError(ValueError):
    """A key name in the conf file that cannot be read."""


def normalize_key(text: str) -> str:
    """'Ctrl+Q', 'C-q', 'ctrl q' -> 'ctrl q'; 'Alt-A' -> 'meta a'; 'PgUp' -> 'page up'."""
    raw = text.strip()
    if len(raw) == 1:
        return raw  # a printable key stays as typed ('?', 'A')
    lowered = raw.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    if lowered in _NAMED:
        return lowered
    parts = [p for p in re.split(r"[\s+]+|-(?=.)", raw) if p]
    if not parts:
        raise KeyNameError(f"empty key name {text!r}")
    modifiers: list[str] = []
    base_parts: list[str] = []
    for part in parts:
        if not base_parts and part.lower() in _MODIFIERS and len(parts) > 1:
            modifiers.append(_MODIFIERS[part.lower()])
        else:
            base_parts.append(part)
    base = " ".join(base_parts)
    if len(base) != 1:
        base = base.lower()
        base = _ALIASES.get(base, base)
        if base not in _NAMED:
            raise KeyNameError(f"unknown key {text!r}")
    elif modifiers:
        base = base.lower() if "shift" not in modifiers else base
    if not modifiers and len(base) == 1:
        return base
    mods = sorted(set(modifiers), key=_MOD_ORDER.index)
    return " ".join(mods + [base])


def display_key(key: str) -> str:
    """How the help screen writes a key: 'ctrl q' -> 'Ctrl-Q', 'meta enter' -> 'Alt-Enter'."""
    names = {"ctrl": "Ctrl", "meta": "Alt", "shift": "Shift", "page up": "PgUp", "page down": "PgDn",
             "esc": "Esc", " ": "Space"}
    if key in names:
        return names[key]
    parts = key.split(" ")
    mods, base = [], key
    while len(parts) > 1 and parts[0] in ("ctrl", "meta", "shift"):
        mods.append(names[parts.pop(0)])
        base = " ".join(parts)
    base = names.get(base, base)
    if len(base) == 1:
        base = base.upper() if mods else base
    elif base[:1] == "f" and base[1:].isdigit():
        base = base.upper()
    else:
        base = base[:1].upper() + base[1:]
    return "-".join(mods + [base])


def conf_name(key: str) -> str:
    """How the conf file writes a key: urwid's name, except ' ' which is 'space'."""
    return "space" if key == " " else key


def is_printable(key: str) -> bool:
    return len(key) == 1 and key.isprintable()


class KeyMap:
    """The bindings in force: the table, with the conf file's `[keys]` applied."""

    def __init__(self, overrides: Optional[Mapping[str, str]] = None) -> None:
        self.keys: dict[str, tuple[str, ...]] = {b.action: b.keys for b in BINDINGS}
        self.errors: list[str] = []
        for action, value in (overrides or {}).items():
            action_name = action.strip().lower().replace("-", "_")
            if action_name not in self.keys:
                self.errors.append(f"[keys] {action}: unknown action (known: {', '.join(sorted(self.keys))})")
                continue
            try:
                keys = tuple(normalize_key(k) for k in value.split(",") if k.strip())
            except KeyNameError as exc:
                self.errors.append(f"[keys] {action}: {exc}")
                continue
            if not keys:
                self.errors.append(f"[keys] {action}: no key given")
                continue
            self.keys[action_name] = keys
        self._by_key: dict[str, list[str]] = {}
        for binding in BINDINGS:
            for key in self.keys[binding.action]:
                self._by_key.setdefault(key, []).append(binding.action)
        for key, actions in self._by_key.items():
            if len(actions) > 1 and not any(set(actions) <= shared for shared in SHARED_KEYS):
                self.errors.append(f"[keys] {display_key(key)} is bound to {' and '.join(actions)}")

    def actions(self, key: str) -> list[str]:
        """Actions bound to `key`, in table order (Tab: complete in a /command, else next area)."""
        return list(self._by_key.get(key, ()))

    def primary(self, action: str) -> str:
        return self.keys[action][0]

    def label(self, action: str) -> str:
        """The first key of `action` as the help writes it ('Ctrl-N'), for texts that name a key."""
        return display_key(self.primary(action))

    def footer_hints(self) -> list[tuple[str, str]]:
        """(key, label) pairs for the footer, e.g. ('Enter', 'send')."""
        return [(display_key(self.primary(a)), BINDINGS_BY_ACTION[a].hint) for a in FOOTER_ACTIONS]

    def help_lines(self) -> list[tuple[str, str, str]]:
        """(category title, keys, description) rows, in table order grouped by category."""
        rows = []
        for category, title in CATEGORIES:
            for binding in BINDINGS:
                if binding.category == category:
                    keys = ", ".join(display_key(k) for k in self.keys[binding.action])
                    rows.append((title, keys, binding.help))
        return rows

    def help_text(self) -> str:
        """The key part of the help screen as plain text."""
        lines: list[str] = []
        current = None
        for title, keys, text in self.help_lines():
            if title != current:
                if lines:
                    lines.append("")
                lines.append(title)
                current = title
            lines.append(f"  {keys:<16} {text}")
        lines += ["", MOUSE_HELP]
        return "\n".join(lines)


def parse_overrides(sections: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The `[keys]` section out of `config.read_sections(path, 'keys')`."""
    return dict(sections.get("keys") or {})


def all_actions() -> Iterable[str]:
    return (b.action for b in BINDINGS)
