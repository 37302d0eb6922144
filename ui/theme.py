"""Themes as data: each style has a 16-color, a 256-color and a monochrome form.

A theme maps style names to (fg16, bg16, fg256, bg256); MONO gives the attribute used when the
terminal has no colors (or NO_COLOR is set, or the theme is 'mono'). The conf file's `[theme]`
section picks a theme and overrides single styles:

    [theme]
    name = light                       # dark (default), light, mono
    own_name = light cyan, bold on default
    header = h231 on h24               # 256-color values apply in 256-color terminals only
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import urwid

# style -> monochrome attribute; also the list of every style the views use
MONO: dict[str, str] = {
    "body": "",
    "header": "standout",
    "header_warn": "standout",
    "footer": "",
    "footer_key": "bold",
    "notice": "bold",
    "notice_error": "standout",
    "divider": "",
    "contact": "",
    "contact_focus": "standout",
    "contact_open": "bold",
    "contact_blocked": "",
    "online": "bold",
    "offline": "",
    "unread": "bold",
    "verified": "bold",
    "preview": "",
    "title": "bold",
    "title_dim": "",
    "day": "underline",
    "time": "",
    "own_name": "bold",
    "own_body": "",
    "peer_name": "underline",
    "peer_body": "",
    "mark_pending": "",
    "mark_sent": "",
    "mark_delivered": "bold",
    "mark_failed": "standout",
    "failure": "",
    "prompt": "bold",
    "input": "",
    "dialog": "",
    "dialog_title": "bold",
    "dialog_warn": "standout",
    "button": "",
    "button_focus": "standout",
    "progress": "",
    "progress_done": "standout",
    "transfer": "",
    "help_key": "bold",
    "help_title": "underline",
    "welcome_id": "bold",
    "qr": "",
}

# style -> (fg16, bg16, fg256, bg256); '' is the terminal's default
THEMES: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "dark": {
        "body": ("", "", "", ""),
        "header": ("white", "dark blue", "h255", "h24"),
        "header_warn": ("yellow", "dark blue", "h220", "h24"),
        "footer": ("light gray", "", "h250", ""),
        "footer_key": ("white,bold", "", "h255,bold", ""),
        "notice": ("yellow", "", "h220", ""),
        "notice_error": ("light red,bold", "", "h203,bold", ""),
        "divider": ("dark gray", "", "h240", ""),
        "contact": ("", "", "", ""),
        "contact_focus": ("black", "light gray", "h16", "h250"),
        "contact_open": ("white,bold", "dark gray", "h255,bold", "h237"),
        "contact_blocked": ("dark gray", "", "h242", ""),
        "online": ("light green", "", "h77", ""),
        "offline": ("dark gray", "", "h242", ""),
        "unread": ("yellow,bold", "", "h220,bold", ""),
        "verified": ("light green", "", "h77", ""),
        "preview": ("dark gray", "", "h245", ""),
        "title": ("white,bold", "", "h255,bold", ""),
        "title_dim": ("light gray", "", "h246", ""),
        "day": ("dark cyan", "", "h73", ""),
        "time": ("dark gray", "", "h244", ""),
        "own_name": ("light cyan,bold", "", "h81,bold", ""),
        "own_body": ("light cyan", "", "h153", ""),
        "peer_name": ("yellow,bold", "", "h215,bold", ""),
        "peer_body": ("", "", "h255", ""),
        "mark_pending": ("dark gray", "", "h244", ""),
        "mark_sent": ("light gray", "", "h250", ""),
        "mark_delivered": ("light green", "", "h77", ""),
        "mark_failed": ("light red,bold", "", "h203,bold", ""),
        "failure": ("light red", "", "h203", ""),
        "prompt": ("light cyan,bold", "", "h81,bold", ""),
        "input": ("", "", "", ""),
        "dialog": ("white", "dark gray", "h255", "h238"),
        "dialog_title": ("white,bold", "dark gray", "h255,bold", "h238"),
        "dialog_warn": ("white,bold", "dark red", "h231,bold", "h124"),
        "button": ("white", "dark gray", "h255", "h240"),
        "button_focus": ("black", "light cyan", "h16", "h81"),
        "progress": ("white", "dark gray", "h255", "h240"),
        "progress_done": ("black", "dark cyan", "h16", "h73"),
        "transfer": ("light magenta", "", "h176", ""),
        "help_key": ("light cyan,bold", "", "h81,bold", ""),
        "help_title": ("white,bold,underline", "", "h255,bold,underline", ""),
        "welcome_id": ("yellow,bold", "", "h220,bold", ""),
        "qr": ("white", "black", "h231", "h16"),   # drawn modules light on dark, whatever the theme
    },
}
# A light-background variant: the dark one with a few readable changes.
THEMES["light"] = dict(THEMES["dark"], **{
    "header": ("white", "dark blue", "h231", "h25"),
    "footer": ("black", "", "h236", ""),
    "footer_key": ("black,bold", "", "h16,bold", ""),
    "notice": ("brown", "", "h130", ""),
    "own_name": ("dark blue,bold", "", "h25,bold", ""),
    "own_body": ("dark blue", "", "h24", ""),
    "peer_name": ("brown,bold", "", "h130,bold", ""),
    "peer_body": ("black", "", "h16", ""),
    "title": ("black,bold", "", "h16,bold", ""),
    "contact_open": ("black,bold", "light gray", "h16,bold", "h252"),
    "welcome_id": ("dark blue,bold", "", "h25,bold", ""),
    "unread": ("dark red,bold", "", "h124,bold", ""),
})
THEME_NAMES = ("dark", "light", "mono")


class Theme:
    """A palette for urwid plus the color depth to run the screen at."""

    def __init__(self, name: str = "dark", overrides: Optional[Mapping[str, str]] = None,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        environ = os.environ if environ is None else environ
        self.errors: list[str] = []
        if name not in THEME_NAMES:
            self.errors.append(f"[theme] name: unknown theme {name!r} (known: {', '.join(THEME_NAMES)})")
            name = "dark"
        self.name = name
        self.styles = {k: list(v) for k, v in THEMES["dark" if name == "mono" else name].items()}
        self.mono = dict(MONO)
        for style, value in (overrides or {}).items():
            self._override(style.strip().lower(), value)
        self.colors = color_depth(environ, mono=name == "mono")

    def _override(self, style: str, value: str) -> None:
        if style not in MONO:
            self.errors.append(f"[theme] {style}: unknown style (known: {', '.join(sorted(MONO))})")
            return
        fg, _, bg = value.partition(" on ")
        fg, bg = fg.strip().replace(", ", ","), bg.strip().replace(", ", ",")
        fg = "" if fg == "default" else fg
        bg = "" if bg == "default" else bg
        high = any(part.strip().startswith(("h", "#", "g")) and part.strip() not in _BASIC_NAMES
                   for part in (fg + "," + bg).split(",") if part.strip())
        try:
            urwid.AttrSpec(fg or "default", bg or "default", 256)
            if not high:
                urwid.AttrSpec(fg or "default", bg or "default", 16)
        except urwid.AttrSpecError as exc:
            self.errors.append(f"[theme] {style}: {exc}")
            return
        entry = self.styles[style]
        if high:
            entry[2], entry[3] = fg, bg
        else:
            entry[:] = [fg, bg, fg, bg]

    def palette(self) -> list[tuple]:
        """urwid palette entries: (name, fg, bg, mono, fg_high, bg_high)."""
        out = []
        for style, (fg16, bg16, fg256, bg256) in self.styles.items():
            out.append((style, fg16 or "default", bg16 or "default", self.mono.get(style, ""),
                        fg256 or fg16 or "default", bg256 or bg16 or "default"))
        return out


_BASIC_NAMES = {"bold", "underline", "standout", "italics", "blink", "strikethrough", "default",
                "black", "brown", "dark gray", "light gray", "white", "yellow", "dark red", "light red",
                "dark green", "light green", "dark blue", "light blue", "dark magenta", "light magenta",
                "dark cyan", "light cyan"}


def color_depth(environ: Mapping[str, str], mono: bool = False) -> int:
    """1 for monochrome (NO_COLOR, TERM=dumb, theme mono), 256 when the terminal says so, else 16."""
    term = environ.get("TERM", "")
    if mono or "NO_COLOR" in environ or term in ("dumb", "vt100", "vt220"):
        return 1
    if "256" in term or environ.get("COLORTERM") in ("truecolor", "24bit") or term.startswith(("tmux", "screen")):
        return 256
    return 16


def from_sections(sections: Mapping[str, Mapping[str, str]], environ: Optional[Mapping[str, str]] = None) -> Theme:
    """The theme the conf file asks for (`config.read_sections(path, 'theme')`)."""
    values = dict(sections.get("theme") or {})
    name = values.pop("name", "dark").strip().lower()
    return Theme(name, values, environ)
