"""Peer-controlled text reaches the log escaped: one record is one line, no terminal escapes,
no bidi tricks. Checked through the daemon's own logging set-up (chatp2p._setup_logging)."""

import logging
import pathlib
import tempfile

import chatp2p
from chatp2p_core.logsafe import escape_text

HOSTILE = "bye\n2026-01-01 00:00:00 WARNING chatp2p.peers: forged\x1b[31m\u202edecoy\u2028\ud800"


def test_escape_text_leaves_ordinary_text_alone():
    assert escape_text("Olá, 世界 — file (1).txt") == "Olá, 世界 — file (1).txt"


def test_escape_text_escapes_controls_format_separators_and_surrogates():
    escaped = escape_text(HOSTILE)
    assert escaped == ("bye\\x0a2026-01-01 00:00:00 WARNING chatp2p.peers: forged\\x1b[31m"
                       "\\u202edecoy\\u2028\\ud800")
    assert escaped.isprintable()


def test_the_daemon_log_keeps_a_hostile_reason_on_one_line():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "chatp2p.log"
        try:
            chatp2p._setup_logging("info", str(path))
            logging.getLogger("chatp2p.peers").info("%s closed the session: %s", "Bob", HOSTILE)
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("chatp2p.test").exception("with a traceback")
            for handler in root.handlers:
                handler.flush()
        finally:
            for handler in root.handlers:
                handler.close()
            root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        lines = path.read_text(encoding="utf-8").splitlines()
    assert "Bob closed the session: bye\\x0a2026-01-01" in lines[0] and "\x1b" not in lines[0]
    assert not any(line.startswith("2026-01-01 00:00:00 WARNING") for line in lines)
    assert any(line.startswith("Traceback") for line in lines)   # tracebacks keep their lines
