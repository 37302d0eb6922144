"""Telling the user a message arrived outside the open conversation: a desktop notification
(notify-send, where a session bus is), an OSC 777/9 terminal notification, and an `on_message`
hook command that receives the event as JSON on its standard input.

Privacy: each shows who wrote, not what, unless `notify_text = true`. The controller calls
`message()` only for conversations that are not open (the model decides that, as for the bell).
Commands run without a shell and never block the UI: a greenlet waits for each to exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import subprocess
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger("chatp2p.ui.notify")

OSC_MODES = ("off", "777", "9")
HOOK_TIMEOUT = 30.0      # a hook still running after this is killed


@dataclasses.dataclass(frozen=True)
class NotifySettings:
    desktop: str = "auto"      # auto (when a session bus and notify-send exist), true, false
    osc: str = "off"           # off, 777 (rxvt-unicode, foot, kitty...), 9 (iTerm2, Windows Terminal...)
    on_message: str = ""       # a command line; the event JSON arrives on its stdin
    show_text: bool = False    # the message text in notifications and in the hook's event


def _plain(text: str, limit: int = 200) -> str:
    """No control characters (a peer's text must not end the escape sequence or start another),
    no ';' (OSC 777's field separator)."""
    return "".join(ch if ch.isprintable() and ch != ";" else " " for ch in text)[:limit]


def osc_sequence(mode: str, title: str, body: str) -> str:
    if mode == "777":
        return f"\x1b]777;notify;{_plain(title)};{_plain(body)}\x1b\\"
    if mode == "9":
        return f"\x1b]9;{_plain(title)}: {_plain(body)}\x1b\\"
    return ""


def desktop_available(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("DBUS_SESSION_BUS_ADDRESS")) and shutil.which("notify-send") is not None


class Notifier:
    """`write_terminal(text)` writes to the terminal the UI draws on; `spawn(fn)` runs `fn` in
    the background (a greenlet)."""

    def __init__(self, settings: NotifySettings, write_terminal: Callable[[str], None],
                 spawn: Callable[[Callable[[], None]], Any], environ: Optional[Mapping[str, str]] = None) -> None:
        self.settings = settings
        self.write_terminal = write_terminal
        self.spawn = spawn
        environ = os.environ if environ is None else environ
        self.desktop = settings.desktop == "true" or (settings.desktop == "auto" and desktop_available(environ))
        self.hook = shlex.split(settings.on_message) if settings.on_message.strip() else []

    def message(self, event: Mapping[str, Any]) -> None:
        """A message event (`p2p_message_received`) for a conversation that is not open."""
        data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
        peer = str(data.get("peer") or "someone")
        title = f"ChatP2P: {peer}"
        body = str(data.get("message") or "") if self.settings.show_text else "sent you a message"
        if self.settings.osc != "off":
            self.write_terminal(osc_sequence(self.settings.osc, title, body))
        if self.desktop:
            self._run(["notify-send", "--app-name=ChatP2P", title, body], None)
        if self.hook:
            shown = dict(data) if self.settings.show_text else {k: v for k, v in data.items() if k != "message"}
            payload = {"event": event.get("event"), "data": shown, "timestamp": event.get("timestamp")}
            self._run(self.hook, json.dumps(payload, ensure_ascii=False).encode() + b"\n")

    def _run(self, argv: list[str], stdin: Optional[bytes]) -> None:
        def run() -> None:
            try:
                subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=HOOK_TIMEOUT, start_new_session=True, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("notification command %s failed: %s", argv[0], exc)
        self.spawn(run)
