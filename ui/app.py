"""The controller: owns the model and the client, reacts to the daemon's answers and events, and
runs urwid. What keys and commands do is in key_actions.py, command_actions.py and
transfer_actions.py; how the screen is built in layout.py; the widgets in views/.

Everything runs on urwid's loop; network work happens in greenlets started by `Client`, whose
answers come back through the `Bridge` (see client.py). `App` can be driven without a
terminal (tests build one with a synchronous client and render `app.root`).
"""

from __future__ import annotations

import logging
import pathlib
import time
import uuid
from typing import Any, Callable, Optional

import urwid

from . import command_actions
from . import commands as slash
from . import group_actions
from . import key_actions
from . import transfer_actions
from .client import Client
from .groups import is_group_key
from .keys import KeyMap
from .layout import Layout
from .model import Model
from .notify import Notifier
from .settings import UiSettings, load_ui_config
from .theme import Theme
from .views import chat_dialogs
from .views.dialogs import Dialog
from .views.help import help_dialog
from .views.conversation import ConversationView
from .views.prompt import Prompt

__all__ = ["App", "UiSettings", "load_ui_config", "run"]

log = logging.getLogger("chatp2p.ui")

HISTORY_PAGE = 200
REFRESH_SECONDS = 5.0
NOTICE_SECONDS = 6.0


class App:
    def __init__(self, client: Client, keymap: Optional[KeyMap] = None, theme: Optional[Theme] = None,
                 settings: Optional[UiSettings] = None, clock: Callable[[], float] = time.time,
                 later: Optional[Callable[[float, Callable[[], None]], Any]] = None) -> None:
        self.client = client
        self.keymap = keymap or KeyMap()
        self.theme = theme or Theme()
        self.settings = settings or UiSettings()
        self.notifier = Notifier(self.settings.notify, self._write_terminal, _spawn)
        self.clock = clock
        self._later = later
        self.model = Model()
        self.loop: Optional[urwid.MainLoop] = None
        self.events_state = "starting"
        self._marking: set[str] = set()
        self._notice_serial = 0
        self.quitting = False
        self.rings = 0
        self.pasting = False    # between the terminal's "begin paste" and "end paste"
        self.conf_path: Optional[pathlib.Path] = None   # where /online saves the choice (run() sets it)
        self.ask_online = False                          # first start: nobody chose online or private yet
        self.layout = Layout(self.keymap, on_key=self.on_key, on_open_contact=self.open_from_list,
                             on_transfer_answer=lambda transfer_id, accept:
                             transfer_actions.answer(self, transfer_id, accept))
        self.refresh()

    # -- the layout's parts the tests and actions reach -------------------------------------
    @property
    def root(self) -> urwid.Widget:
        return self.layout.root

    @property
    def prompt(self) -> Prompt:
        return self.layout.prompt

    @property
    def conversation(self) -> ConversationView:
        return self.layout.conversation

    @property
    def dialogs(self) -> list[Dialog]:
        return self.layout.dialogs

    @property
    def focus_area(self) -> str:
        return self.layout.focus_area

    def set_focus(self, area: str) -> None:
        self.layout.set_focus(area, self.model.open_chat)

    def cycle_focus(self, step: int) -> None:
        self.layout.cycle_focus(step, bool(self.model.contacts or self.model.groups.groups), self.model.open_chat)

    def follow_conversation(self) -> None:
        """Keep the conversation scrolled to its end (after sending something)."""
        self.layout.conversation.listbox.follow = True

    # -- plumbing ---------------------------------------------------------------------------
    def later(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the UI loop after `seconds` (a greenlet timer posted through the bridge)."""
        if self._later is not None:
            self._later(seconds, fn)
            return
        import gevent

        gevent.spawn_later(seconds, self.client.post, fn)

    def request(self, command: str, action: Optional[str] = None, data: Any = None,
                on_ok: Optional[Callable[[Any], None]] = None,
                on_error: Optional[Callable[[str], None]] = None, quiet: bool = False) -> None:
        """An API request; its answer updates `model.connected`, errors become a notice."""
        def done(reply: dict) -> None:
            was = self.model.connected
            self.model.connected = not reply.get("unreachable")
            if was != self.model.connected:
                self.refresh()
                if self.model.connected:
                    self.resync()
            if reply.get("success"):
                if on_ok is not None:
                    on_ok(reply.get("data"))
            else:
                error = str(reply.get("error") or "request failed")
                if on_error is not None:
                    on_error(error)
                elif not quiet:
                    self.notice(error, error=True)
            self.refresh()

        self.client.request(command, action, data, on_done=done)

    def notice(self, text: str, error: bool = False) -> None:
        """A one-line message in the footer, cleared after NOTICE_SECONDS unless a newer one came."""
        log.info("notice: %s", text)
        self._notice_serial += 1
        serial = self._notice_serial
        self.layout.footer.set_notice(text, error)

        def clear() -> None:
            if self._notice_serial == serial:
                self.layout.footer.clear_notice()
        self.later(NOTICE_SECONDS, clear)

    def _write_terminal(self, text: str) -> None:
        """Escape sequences that draw nothing (OSC notifications), between two redraws."""
        if self.loop is not None and text:
            try:
                self.loop.screen.write(text)
                self.loop.screen.flush()
            except Exception:
                log.debug("terminal write failed", exc_info=True)

    def copy_to_clipboard(self, text: str) -> None:
        """OSC 52: the terminal (or tmux with set-clipboard) puts `text` on the clipboard."""
        import base64

        self._write_terminal("\x1b]52;c;" + base64.b64encode(text.encode()).decode() + "\x07")

    def edit_externally(self, text: str) -> Optional[str]:
        """`text` edited in $VISUAL or $EDITOR (else vi) on the whole terminal; None if the
        editor failed. The file is private (0600) and deleted afterwards."""
        import os
        import shlex
        import subprocess
        import tempfile

        editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
        fd, path = tempfile.mkstemp(prefix="chatp2p-draft-", suffix=".txt",
                                    dir=os.environ.get("XDG_RUNTIME_DIR") or None)
        screen = self.loop.screen if self.loop is not None else None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            if screen is not None:
                screen.stop()
            try:
                code = subprocess.call([*editor, path])
            finally:
                if screen is not None:
                    screen.start()
                    screen.clear()
            if code != 0:
                return None
            with open(path, encoding="utf-8", errors="replace") as handle:
                edited = handle.read()
            return edited[:-1] if edited.endswith("\n") else edited
        except OSError as exc:
            self.notice(f"Cannot run {editor[0]}: {exc.strerror or exc}", error=True)
            return None
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    def ring(self) -> None:
        self.rings += 1
        if self.loop is not None and self.settings.bell:
            try:
                self.loop.screen.write("\a")
                self.loop.screen.flush()
            except Exception:
                log.debug("bell failed", exc_info=True)

    def redraw(self) -> None:
        if self.loop is not None:
            self.loop.screen.clear()

    # -- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        self.client.start_events(self.on_event, self.on_events_state)
        self.resync(first=True)
        self._schedule_periodic()
        if self.ask_online:
            self.show_dialog(chat_dialogs.online_choice(self.closing(lambda: command_actions.choose_online(self, True)),
                                                        self.closing(lambda: command_actions.choose_online(self, False))))

    def _schedule_periodic(self) -> None:
        def tick() -> None:
            if self.quitting:
                return
            self.periodic()
            self._schedule_periodic()
        self.later(REFRESH_SECONDS, tick)

    def resync(self, first: bool = False) -> None:
        """Reload everything from the daemon (start-up, events (re)connected)."""
        self.request("status", on_ok=self.on_status, quiet=not first)
        self.request("contacts", "list", on_ok=lambda data: self.on_contacts(data, first), quiet=not first)
        group_actions.load(self)
        self.load_transfers()

    def load_transfers(self, then: Optional[Callable[[], None]] = None) -> None:
        transfer_actions.load(self, then)

    def periodic(self) -> None:
        """Polling that keeps the screen right when events are late or missing."""
        self.request("status", on_ok=self.on_status, quiet=True)
        self.request("p2p", "peers", on_ok=self.on_peers, quiet=True)
        if self.events_state != "live":
            self.request("contacts", "list", on_ok=lambda data: self.on_contacts(data, False), quiet=True)
            group_actions.load(self)
        group = self.model.open_group
        if group is not None:   # members come and go online; group peers are in no peer list
            group_actions.load_info(self, group)
        if self.model.open_chat:
            self.load_history(self.model.open_chat, quiet=True)

    def quit(self) -> None:
        self.quitting = True
        raise urwid.ExitMainLoop()

    # -- answers ----------------------------------------------------------------------------
    def on_status(self, data: Any) -> None:
        if isinstance(data, dict):
            self.model.set_status(data)

    def on_contacts(self, data: Any, first: bool) -> None:
        """The contact list arrived: previews, peers, and at start-up the first conversation to open."""
        if not isinstance(data, list):
            return
        self.model.set_contacts(data)
        self.request("p2p", "peers", on_ok=self.on_peers, quiet=True)
        for contact in list(self.model.contacts.values()):
            conv = self.model.conversations.get(contact.fingerprint)
            if contact.preview_time is None and (conv is None or not conv.loaded):
                fingerprint = contact.fingerprint
                self.request("p2p", "history", {"peer": contact.name, "limit": 1},
                             on_ok=lambda msgs, fp=fingerprint: self.model.set_preview(fp, msgs or []), quiet=True)
        if self.model.open_chat is None and first and self.model.contacts:
            target = next((c for c in self.model.sorted_contacts() if c.unread), None) \
                or self.model.sorted_contacts()[0]
            self.open_chat(target.fingerprint)
        elif self.model.open_chat:
            self.load_history(self.model.open_chat, quiet=True)

    def on_peers(self, data: Any) -> None:
        if isinstance(data, list):
            self.model.set_peers(data)

    def load_history(self, fingerprint: str, quiet: bool = False) -> None:
        group = self.model.groups.get(fingerprint) if is_group_key(fingerprint) else None
        if group is not None:
            group_actions.load_history(self, group, quiet=quiet)
            return
        contact = self.model.contacts.get(fingerprint)
        if contact is None:
            return

        def loaded(data: Any) -> None:
            if isinstance(data, list):
                self.model.set_history(fingerprint, data, limit=HISTORY_PAGE)

        self.request("p2p", "history", {"peer": contact.name, "limit": HISTORY_PAGE}, on_ok=loaded, quiet=quiet)

    def mark_read(self, fingerprint: str) -> None:
        group = self.model.groups.get(fingerprint) if is_group_key(fingerprint) else None
        if group is not None:
            group_actions.mark_read(self, group)
            return
        contact = self.model.contacts.get(fingerprint)
        if contact is None or fingerprint in self._marking:
            return
        self._marking.add(fingerprint)
        contact.unread = 0

        def done(_data: Any = None) -> None:
            self._marking.discard(fingerprint)

        self.request("p2p", "mark_read", {"peer": contact.name}, on_ok=done, on_error=lambda _e: done())

    # -- events -----------------------------------------------------------------------------
    def on_events_state(self, state: str) -> None:
        previous, self.events_state = self.events_state, state.split(":", 1)[0]
        if state == "live":
            if previous not in ("starting", "live"):
                self.notice("Event stream back: up to date")
            if previous != "starting":
                self.resync()
        elif state == "lost":
            self.notice("Lost the daemon's event stream; reconnecting…", error=True)
        elif state.startswith("none"):
            self.notice("No live events (" + state.split(":", 1)[-1].strip() + "); refreshing every few seconds",
                        error=True)
        self.refresh()

    def on_event(self, event: dict) -> None:
        for alert in self.model.apply_event(event, self.clock()):
            if alert.kind == "bell":   # a message outside the open conversation
                self.ring()
                self.notifier.message(alert.data.get("notify") or event)
            elif alert.kind.startswith("group_"):
                group_actions.on_alert(self, alert.kind, alert.data)
            elif alert.kind == "notice":
                self.notice(str(alert.data.get("text") or ""))
            elif alert.kind == "mark_read":
                self.mark_read(alert.data["fingerprint"])
            elif alert.kind == "refresh":
                self.request("p2p", "peers", on_ok=self.on_peers, quiet=True)
                if not self.model.by_name((event.get("data") or {}).get("peer")):
                    self.request("contacts", "list", on_ok=lambda data: self.on_contacts(data, False), quiet=True)
            elif alert.kind == "key_mismatch":
                self.show_key_mismatch(alert.data)
            elif alert.kind == "contact_request":
                self.show_contact_request(alert.data)
        if event.get("event") == "identity_changed":
            self.request("status", on_ok=self.on_status, quiet=True)
        if event.get("event") == "contact_added" and self.model.open_chat is None:
            self.open_chat((event.get("data") or {}).get("fingerprint") or "")
        self.refresh()

    # -- drawing and dialogs ----------------------------------------------------------------
    def refresh(self) -> None:
        self.layout.update(self.model, self.client.description)

    def show_dialog(self, dialog: Dialog) -> Dialog:
        return self.layout.show_dialog(dialog)

    def close_dialog(self, dialog: Dialog) -> None:
        self.layout.close_dialog(dialog)

    def dismiss(self, dialog: Dialog) -> None:
        """The cancel key on a dialog: closes it unless it must be acknowledged."""
        if dialog.cancel():
            self.close_dialog(dialog)
            self.refresh()

    def closing(self, fn: Optional[Callable[[], None]] = None) -> Callable[[], None]:
        """A dialog callback that closes the dialog on top first."""
        def run() -> None:
            top = self.layout.top_dialog
            if top is not None:
                self.close_dialog(top)
            if fn is not None:
                fn()
            self.refresh()
        return run

    def show_help(self) -> None:
        top = self.layout.top_dialog
        if top is not None and top.box:
            return
        self.show_dialog(help_dialog(self.keymap, self.closing()))

    def show_key_mismatch(self, data: dict) -> None:
        self.show_dialog(chat_dialogs.key_mismatch(data, self.closing()))
        self.ring()

    def show_contact_request(self, data: dict) -> None:
        fingerprint = data.get("fingerprint") or ""
        bundle = data.get("bundle") or fingerprint

        def ask_name() -> None:
            def add(name: str) -> None:
                top = self.layout.top_dialog
                if top is not None:
                    self.close_dialog(top)
                name = name.strip()
                if not name:
                    self.notice("No name given: the request stays ignored", error=True)
                    return
                self.model.requests.pop(fingerprint, None)
                self.request("contacts", "add", {"peer": name, "public_key": bundle},
                             on_ok=lambda _d: self.notice(f"Added {name}"))
                self.refresh()

            self.show_dialog(chat_dialogs.name_for(fingerprint, add, self.closing(), self.keymap.keys["send"]))

        def block() -> None:
            self.model.requests.pop(fingerprint, None)
            self.request("contacts", "block", {"peer": fingerprint},
                         on_ok=lambda _d: self.notice("Blocked: it cannot reach you any more"))

        self.show_dialog(chat_dialogs.contact_request(data, self.closing(ask_name), self.closing(block),
                                                      self.closing()))
        self.ring()

    # -- keys -------------------------------------------------------------------------------
    def on_key(self, key: Any) -> bool:
        """The key router's hook: the key table's actions (key_actions.py). True: handled."""
        return key_actions.dispatch(self, key)

    def unhandled_key(self, key: Any) -> bool:
        """Keys no widget wanted (MainLoop's unhandled_input): ignored, never an error."""
        log.debug("unhandled input %r", key)
        return True

    # -- contacts ---------------------------------------------------------------------------
    def open_from_list(self, fingerprint: str) -> None:
        self.open_chat(fingerprint)
        self.set_focus("input")

    def open_chat(self, fingerprint: str) -> None:
        """Open a contact's conversation, or a group's (`fingerprint` is then its "group:…" key)."""
        group = self.model.groups.get(fingerprint) if is_group_key(fingerprint) else None
        if fingerprint not in self.model.contacts and group is None:
            return
        self.model.open(fingerprint)
        self.follow_conversation()
        self.layout.contacts.focus_on(fingerprint)
        if group is not None:
            group_actions.opened(self, group)
        else:
            self.load_history(fingerprint)
            self.mark_read(fingerprint)
        self.refresh()

    # -- the input line ---------------------------------------------------------------------
    def complete(self) -> None:
        result = slash.complete(self.prompt.text, [c.name for c in self.model.contacts.values()],
                                list(self.model.transfers))
        self.prompt.set_text(result.text)
        if len(result.candidates) > 1:
            self.notice("  ".join(result.candidates))
        elif not result.candidates:
            self.notice("No completion")

    def submit(self) -> None:
        """The input line: a /command runs, anything else goes to the open conversation."""
        text = self.prompt.text
        if not text.strip():
            return
        if slash.is_command(text):
            self.prompt.set_text("")
            self.run_command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        if self.model.open_group is not None:
            self.prompt.set_text("")
            group_actions.send_message(self, text.rstrip())
            self.refresh()
            return
        contact = self.model.open_contact
        if contact is None:
            self.notice(f"Open a conversation first ({self.keymap.label('next_contact')}, or click a contact), "
                        "or /add someone", error=True)
            return
        if contact.blocked:
            self.notice(f"{contact.name} is blocked: /unblock {contact.name} first", error=True)
            return
        body = text.rstrip()
        fingerprint = contact.fingerprint
        message_id = uuid.uuid4().hex
        self.model.add_outgoing(fingerprint, body, message_id, self.clock())
        self.prompt.set_text("")
        self.follow_conversation()

        def done(reply: dict) -> None:
            self.model.outgoing_result(fingerprint, message_id, reply)
            if not reply.get("success"):
                self.notice(f"Not sent: {reply.get('error')}", error=True)
            self.refresh()

        self.client.request("p2p", "send_message", {"peer": contact.name, "message": body,
                                                    "message_id": message_id}, on_done=done)
        self.refresh()

    def run_command(self, text: str) -> None:
        """Parse a /command and run the handler the command table names; usage errors become hints."""
        try:
            parsed = slash.parse(text)
            parsed.command.handler(self, parsed.args)
        except slash.UsageError as exc:
            self.notice(str(exc), error=True)


def _spawn(fn: Callable[[], None]) -> None:
    import gevent

    gevent.spawn(fn)


def run(backend: Any, config_path: Optional[pathlib.Path], save_path: Optional[pathlib.Path] = None,
        ask_online: bool = False) -> int:
    """Run the UI on this terminal until the user quits; returns the exit code (0). `save_path`:
    the conf file /online writes to; `ask_online`: show the first start's online/private choice."""
    import signal

    import gevent

    from .client import Bridge

    keymap, theme, settings, errors = load_ui_config(config_path)
    bridge = Bridge()
    client = Client(backend, bridge.post)
    app = App(client, keymap, theme, settings)
    app.conf_path, app.ask_online = save_path or config_path, ask_online
    try:   # bracketed paste: a pasted paragraph arrives between "begin paste" and "end paste"
        screen = urwid.display.raw.Screen(bracketed_paste_mode=True)
    except TypeError:   # an urwid without it: pasted lines are sent one by one, as before
        screen = urwid.display.raw.Screen()
    screen.set_terminal_properties(colors=theme.colors)
    loop = urwid.MainLoop(app.root, palette=theme.palette(), screen=screen, handle_mouse=True,
                          unhandled_input=app.unhandled_key)
    app.loop = loop
    bridge.attach(loop)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        gevent.signal_handler(signum, bridge.post, app.quit)
    screen.start()
    try:
        # Ctrl-Q and Ctrl-S are XON/XOFF: free them. Done after start(), so stop() restores them.
        screen.tty_signal_keys(start="undefined", stop="undefined")
        if errors:
            app.notice(errors[0] + (f" (+{len(errors) - 1} more in the log)" if len(errors) > 1 else ""), error=True)
            for error in errors:
                log.warning("conf: %s", error)
        app.start()
        loop.run()
    finally:
        app.quitting = True
        screen.stop()
        client.close()
        bridge.close()
    return 0
