"""The input line: grows with multi-line text up to `max_rows`, then scrolls with the cursor."""

from __future__ import annotations

import urwid


class Prompt(urwid.WidgetWrap):
    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self, max_rows: int = 6) -> None:
        self.max_rows = max_rows
        self.edit = urwid.Edit(("prompt", "› "), multiline=True)
        super().__init__(urwid.AttrMap(self.edit, "input"))

    # -- text -------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self.edit.edit_text

    def set_text(self, text: str) -> None:
        self.edit.set_edit_text(text)
        self.edit.set_edit_pos(len(text))

    def insert(self, text: str) -> None:
        self.edit.insert_text(text)

    def set_caption(self, caption: str) -> None:
        self.edit.set_caption(("prompt", caption))

    # -- sizing -----------------------------------------------------------------------------
    def rows(self, size: tuple, focus: bool = False) -> int:
        return min(self.edit.rows(size, focus), self.max_rows)

    def render(self, size: tuple, focus: bool = False) -> urwid.Canvas:
        canvas = self._w.render(size, focus)
        total = canvas.rows()
        if total <= self.max_rows:
            return canvas
        cursor_row = canvas.cursor[1] if canvas.cursor else total - 1
        top = min(max(cursor_row - self.max_rows + 1, 0), total - self.max_rows)
        canvas = urwid.CompositeCanvas(canvas)
        canvas.trim(top, self.max_rows)
        return canvas

    def get_cursor_coords(self, size: tuple):
        coords = self.edit.get_cursor_coords(size)
        if coords is None:
            return None
        total = self.edit.rows(size, True)
        if total <= self.max_rows:
            return coords
        col, row = coords
        top = min(max(row - self.max_rows + 1, 0), total - self.max_rows)
        return col, row - top

    def keypress(self, size: tuple, key: str):
        return self.edit.keypress(size, key)
