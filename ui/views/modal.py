"""The chat with a dialog centred on top; the dialog's width adapts to the screen."""

from __future__ import annotations

from typing import Any

import urwid

from .dialogs import Dialog


class Modal(urwid.WidgetWrap):
    """Draws `dialog` over `bottom`, rebuilding the overlay per size (a fixed Overlay would not shrink)."""

    def __init__(self, dialog: Dialog, bottom: urwid.Widget) -> None:
        self.dialog = dialog
        self.bottom = bottom
        super().__init__(bottom)

    def _overlay(self, size: tuple[int, int]) -> urwid.Overlay:
        cols, rows = size
        width = max(10, min(self.dialog.width, cols - 2))
        height: Any = max(3, rows - 2) if self.dialog.box else "pack"
        return urwid.Overlay(self.dialog, self.bottom, "center", width, "middle", height)

    def render(self, size, focus=False):
        return self._overlay(size).render(size, focus)

    def keypress(self, size, key):
        return self._overlay(size).keypress(size, key)

    def mouse_event(self, size, event, button, col, row, focus):
        return self._overlay(size).mouse_event(size, event, button, col, row, focus)

    def get_cursor_coords(self, size):
        return self._overlay(size).get_cursor_coords(size)

    def selectable(self):
        return True
