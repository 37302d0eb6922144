"""The frame around the chat: header line, footer line (key hints or a notice), the size guard,
and the key router on top of it all."""

from __future__ import annotations

from typing import Callable, Optional

import urwid

from ..model import Model

MIN_COLS = 60
MIN_ROWS = 16


class Header(urwid.WidgetWrap):
    """'ChatP2P │ alice abcde-fghij │ P2P :4000 │ NAT ? │ 1/2 online'."""

    def __init__(self) -> None:
        self.text = urwid.Text("ChatP2P", wrap="ellipsis")
        super().__init__(urwid.AttrMap(self.text, "header"))

    def update(self, model: Model, mode: str = "") -> None:
        me = model.me
        sep = " │ "
        parts: list = [" ChatP2P", sep]
        parts.append(me.get("name") or "?")
        if me.get("short_id"):
            parts.append(" " + me["short_id"])
        parts.append(sep)
        if not model.connected:
            parts.append(("header_warn", "daemon unreachable"))
        elif model.p2p.get("running"):
            port = model.p2p.get("port")
            parts.append(f"P2P on :{port}" if port else "P2P on")
        else:
            parts.append(("header_warn", "P2P off"))
        parts += [sep, model.nat_text]
        if model.mode_text:
            parts += [sep, model.mode_text]
        online = sum(1 for c in model.contacts.values() if c.online)
        parts += [sep, f"{online}/{len(model.contacts)} online"]
        if mode:
            parts += [sep, mode]
        self.text.set_text(parts)


class Footer(urwid.WidgetWrap):
    """Key hints, replaced by a transient notice (info or error) while there is one."""

    def __init__(self, hints: list[tuple[str, str]]) -> None:
        self.hints = hints
        self.text = urwid.Text("", wrap="ellipsis")
        self.notice: Optional[str] = None
        self.error = False
        super().__init__(urwid.AttrMap(self.text, "footer"))
        self._show()

    def _show(self) -> None:
        if self.notice:
            self.text.set_text([("notice_error" if self.error else "notice", " " + self.notice)])
            return
        markup: list = [" "]
        for key, label in self.hints:
            markup += [("footer_key", key), f" {label}  "]
        self.text.set_text(markup)

    def set_notice(self, text: str, error: bool = False) -> None:
        self.notice = " ".join(text.split()) if text else None
        self.error = error
        self._show()

    def clear_notice(self) -> None:
        self.set_notice("")


class SizeGuard(urwid.WidgetWrap):
    """Draws its body, or a 'terminal too small' notice below MIN_COLS x MIN_ROWS (never crashes)."""

    def __init__(self, body: urwid.Widget, min_cols: int = MIN_COLS, min_rows: int = MIN_ROWS,
                 quit_key: str = "Ctrl-Q") -> None:
        self.min_cols, self.min_rows = min_cols, min_rows
        self.quit_key = quit_key    # as bound in the key table: the notice must name the real key
        self.body = body
        super().__init__(body)

    def set_body(self, body: urwid.Widget) -> None:
        self.body = body
        self._w = body

    def too_small(self, size: tuple) -> bool:
        return len(size) == 2 and (size[0] < self.min_cols or size[1] < self.min_rows)

    def _small(self, size: tuple) -> urwid.Widget:
        cols, rows = size
        text = (f"Terminal too small: {cols}x{rows}. ChatP2P needs at least {self.min_cols}x{self.min_rows}."
                f" Enlarge the window, or press {self.quit_key} to quit.")
        return urwid.Filler(urwid.Text(text, align="center"), "middle")

    def render(self, size: tuple, focus: bool = False) -> urwid.Canvas:
        if self.too_small(size):
            return self._small(size).render(size, focus)
        return self.body.render(size, focus)

    def keypress(self, size: tuple, key: str) -> Optional[str]:
        if self.too_small(size):
            return key          # unhandled: the key router above still sees the quit key
        return self.body.keypress(size, key)

    def mouse_event(self, size: tuple, event: str, button: int, col: int, row: int, focus: bool) -> bool:
        if self.too_small(size):
            return False
        return bool(self.body.mouse_event(size, event, button, col, row, focus))

    def get_cursor_coords(self, size: tuple):
        if self.too_small(size):
            return None
        return self.body.get_cursor_coords(size)


class KeyRouter(urwid.WidgetWrap):
    """The top widget: `on_key` (the key table's global actions) first, then the focused widget."""

    def __init__(self, body: urwid.Widget, on_key: Callable[[str], bool]) -> None:
        self.on_key = on_key
        super().__init__(body)

    def keypress(self, size: tuple, key: str) -> Optional[str]:
        if self.on_key(key):
            return None
        return super().keypress(size, key)
