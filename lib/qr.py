"""A QR code drawn with Unicode half blocks, for reading an ID from a terminal with a phone.

Why half blocks: one character cell holds two modules (upper and lower), so a 69-character ID
fits in about 25 lines. Light modules are drawn (`█`, `▀`, `▄`), dark ones left blank: terminals
mostly have dark backgrounds, and the quiet zone around the code is then drawn light. Pure: no
I/O; segno (PyPI) computes the matrix.
"""

from __future__ import annotations

import segno

BORDER = 2   # modules of quiet zone: phones read 2 well, and it saves 4 lines over segno's 4
CELLS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def qr_lines(text: str, border: int = BORDER) -> list[str]:
    """The QR code of `text` (error correction M), two module rows per line of text."""
    rows = [[not dark for dark in row] for row in segno.make(text, error="m", micro=False).matrix_iter(border=border)]
    if len(rows) % 2:
        rows.append([True] * len(rows[0]))  # a light row under the last one
    return ["".join(CELLS[(top, bottom)] for top, bottom in zip(rows[i], rows[i + 1]))
            for i in range(0, len(rows), 2)]


def qr_text(text: str, border: int = BORDER) -> str:
    return "\n".join(qr_lines(text, border)) + "\n"
