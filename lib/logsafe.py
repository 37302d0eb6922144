"""Log lines that a peer cannot forge: text a peer controls (a CLOSE reason, a file name, a
transfer's HALT or ANSWER reason) reaches the log with its control, format and line-separator
characters escaped, so it can neither start a fake log line nor hide itself with bidi marks."""

from __future__ import annotations

import logging
import unicodedata

_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp"))


def escape_text(text: str) -> str:
    """`text` with every control/format/separator character written as a Python escape."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES or 0xD800 <= ord(ch) <= 0xDFFF:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


class EscapingFormatter(logging.Formatter):
    """Escapes the message part of each record (the traceback of an exception keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        return super().formatMessage(record)
