"""The controller: builds the widgets, routes keys and commands, talks to the core, runs urwid.

    header     me, short ID, P2P state, NAT, online count
    contacts │ conversation (title, days, messages, transfers)
    input line (grows with Alt-Enter)
    footer     key hints, or a notice

Everything runs on urwid's loop; network work happens in greenlets started by `Client`, whose
answers come back through the `Bridge` (see client.py). `App` can be driven without a
terminal (tests build one with a synchronous client and render `app.root`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
import uuid
from typing import Any, Callable, Mapping, Optional

import urwid

from . import commands as slash
from .client import Client
from .keys import KeyMap, is_printable
from .model import Model, Transfer
from .theme import Theme
from .views import dialogs
from .views.chrome import Footer, Header, SizeGuard
from .views.contacts import ContactList
from .views.conversation import ConversationView
from .views.prompt import Prompt

log = logging.getLogger("chatp2p.ui")

HISTORY_PAGE = 200
REFRESH_SECONDS = 5.0
NOTICE_SECONDS = 6.0
FOCUS_ORDER = ("input", "contacts", "conversation")
# File transfers: the API actions (p2p send_file is the seed protocol's, the others extensions).
TRANSFER_ACTIONS = {
    "send": ("p2p", "send_file"),
    "accept": ("p2p", "accept_file"),
    "reject": ("p2p", "reject_file"),
    "cancel": ("p2p", "cancel_transfer"),
    "pause": ("p2p", "pause_transfer"),
    "resume": ("p2p", "resume_transfer"),
    "list": ("p2p", "transfers"),
}


@dataclasses.dataclass
class UiSettings:
    """The conf file's `[ui]` section."""

    bell: bool = True
    errors: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_section(cls, values: Mapping[str, str]) -> "UiSettings":
        settings = cls()
        for key, raw in values.items():
            if key == "bell":
                value = raw.strip().lower()
                if value in ("1", "true", "yes", "on"):
                    settings.bell = True
                elif value in ("0", "false", "no", "off"):
                    settings.bell = False
                else:
                    settings.errors.append(f"[ui] bell: {raw!r} is not a boolean (true/false)")
            else:
                settings.errors.append(f"[ui] {key}: unknown setting (known: bell)")
        return settings


def load_ui_config(config_path: Optional[pathlib.Path], environ: Optional[Mapping[str, str]] = None
                   ) -> tuple[KeyMap, Theme, UiSettings, list[str]]:
    """Key bindings, theme and UI settings from the conf file; errors are reported, not fatal."""
    from chatp2p_core.config import read_sections

    from . import keys as keys_mod
    from . import theme as theme_mod

    errors: list[str] = []
    try:
        keys_sections = read_sections(config_path, "keys")
        theme_sections = read_sections(config_path, "theme")
        ui_sections = read_sections(config_path, "ui")
    except Exception as exc:   # the core already parsed the file; this is belt and braces
        errors.append(f"{config_path}: {exc}")
        keys_sections = theme_sections = ui_sections = {}
    keymap = KeyMap(keys_mod.parse_overrides(keys_sections))
    theme = theme_mod.from_sections(theme_sections, environ)
    settings = UiSettings.from_section(ui_sections.get("ui") or {})
    errors += keymap.errors + theme.errors + settings.errors
    return keymap, theme, settings, errors


class KeyRouter(urwid.WidgetWrap):
    """The top widget: global bindings first, then the focused widget."""

    def __init__(self, body: urwid.Widget, app: "App") -> None:
        self.app = app
        super().__init__(body)

    def keypress(self, size, key):
        if self.app.pre_key(key):
            return None
        return super().keypress(size, key)


class Modal(urwid.WidgetWrap):
    """The chat with a dialog centred on top; the dialog's width adapts to the screen."""

    def __init__(self, dialog: dialogs.Dialog, bottom: urwid.Widget) -> None:
        self.dialog = dialog
        self.bottom = bottom
        super().__init__(bottom)

    def _overlay(self, size) -> urwid.Overlay:
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


class App:
    def __init__(self, client: Client, keymap: Optional[KeyMap] = None, theme: Optional[Theme] = None,
                 settings: Optional[UiSettings] = None, clock: Callable[[], float] = time.time,
                 later: Optional[Callable[[float, Callable[[], None]], Any]] = None) -> None:
        self.client = client
        self.keymap = keymap or KeyMap()
        self.theme = theme or Theme()
        self.settings = settings or UiSettings()
        self.clock = clock
        self._later = later
        self.model = Model()
        self.loop: Optional[urwid.MainLoop] = None
        self.events_state = "starting"
        self.dialogs: list[dialogs.Dialog] = []
        self._marking: set[str] = set()
        self._notice_serial = 0
        self.quitting = False
        self.rings = 0

        self.header = Header()
        self.contacts = ContactList(self.open_from_list)
        self.conversation = ConversationView(self.answer_transfer)
        self.prompt = Prompt()
        self.footer = Footer(self.keymap.footer_hints())
        self.columns = urwid.Columns([
            ("weight", 1, self.contacts),
            (1, urwid.AttrMap(urwid.SolidFill("│"), "divider")),
            ("weight", 3, self.conversation),
        ])
        self.bottom = urwid.Pile([urwid.AttrMap(urwid.Divider("─"), "divider"), self.prompt, self.footer])
        self.bottom.focus_position = 1
        self.frame = urwid.Frame(urwid.AttrMap(self.columns, "body"), header=self.header, footer=self.bottom,
                                 focus_part="footer")
        self.guard = SizeGuard(self.frame)
        self.root = KeyRouter(self.guard, self)
        self.refresh()

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
        log.info("notice: %s", text)
        self._notice_serial += 1
        serial = self._notice_serial
        self.footer.set_notice(text, error)

        def clear() -> None:
            if self._notice_serial == serial:
                self.footer.clear_notice()
        self.later(NOTICE_SECONDS, clear)

    def ring(self) -> None:
        self.rings += 1
        if self.loop is not None and self.settings.bell:
            try:
                self.loop.screen.write("\a")
                self.loop.screen.flush()
            except Exception:
                log.debug("bell failed", exc_info=True)

    # -- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        self.client.start_events(self.on_event, self.on_events_state)
        self.resync(first=True)
        self._schedule_periodic()

    def _schedule_periodic(self) -> None:
        def tick() -> None:
            if self.quitting:
                return
            self.periodic()
            self._schedule_periodic()
        self.later(REFRESH_SECONDS, tick)

    def resync(self, first: bool = False) -> None:
        """Reload everything from the daemon (start-up, events (re)connected)."""
        self.request("status", on_ok=self._on_status, quiet=not first)
        self.request("contacts", "list", on_ok=lambda data: self._on_contacts(data, first), quiet=not first)
        self.load_transfers()

    def load_transfers(self, then: Optional[Callable[[], None]] = None) -> None:
        def merge(data: Any) -> None:
            if isinstance(data, list):
                self.model.merge_transfers(data, self.clock())
            if then is not None:
                then()

        command, action = TRANSFER_ACTIONS["list"]
        self.request(command, action, on_ok=merge, on_error=lambda _e: then() if then else None, quiet=True)

    def periodic(self) -> None:
        self.request("status", on_ok=self._on_status, quiet=True)
        self.request("p2p", "peers", on_ok=self._on_peers, quiet=True)
        if self.events_state != "live":
            self.request("contacts", "list", on_ok=lambda data: self._on_contacts(data, False), quiet=True)
        if self.model.open_chat:
            self.load_history(self.model.open_chat, quiet=True)

    def quit(self) -> None:
        self.quitting = True
        raise urwid.ExitMainLoop()

    # -- answers ----------------------------------------------------------------------------
    def _on_status(self, data: Any) -> None:
        if isinstance(data, dict):
            self.model.set_status(data)

    def _on_contacts(self, data: Any, first: bool) -> None:
        if not isinstance(data, list):
            return
        self.model.set_contacts(data)
        self.request("p2p", "peers", on_ok=self._on_peers, quiet=True)
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

    def _on_peers(self, data: Any) -> None:
        if isinstance(data, list):
            self.model.set_peers(data)

    def load_history(self, fingerprint: str, quiet: bool = False) -> None:
        contact = self.model.contacts.get(fingerprint)
        if contact is None:
            return

        def loaded(data: Any) -> None:
            if isinstance(data, list):
                self.model.set_history(fingerprint, data, limit=HISTORY_PAGE)

        self.request("p2p", "history", {"peer": contact.name, "limit": HISTORY_PAGE}, on_ok=loaded, quiet=quiet)

    def mark_read(self, fingerprint: str) -> None:
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
            if alert.kind == "bell":
                self.ring()
            elif alert.kind == "mark_read":
                self.mark_read(alert.data["fingerprint"])
            elif alert.kind == "refresh":
                self.request("p2p", "peers", on_ok=self._on_peers, quiet=True)
                if not self.model.by_name((event.get("data") or {}).get("peer")):
                    self.request("contacts", "list", on_ok=lambda data: self._on_contacts(data, False), quiet=True)
            elif alert.kind == "key_mismatch":
                self.show_key_mismatch(alert.data)
            elif alert.kind == "contact_request":
                self.show_contact_request(alert.data)
        if event.get("event") == "identity_changed":
            self.request("status", on_ok=self._on_status, quiet=True)
        if event.get("event") == "contact_added" and self.model.open_chat is None:
            self.open_chat((event.get("data") or {}).get("fingerprint") or "")
        self.refresh()

    # -- drawing ----------------------------------------------------------------------------
    def refresh(self) -> None:
        self.header.update(self.model, self.client.description)
        self.contacts.update(self.model)
        self.conversation.update(self.model)
        contact = self.model.open_contact
        self.prompt.set_caption(f"{contact.name} › " if contact else "› ")

    def _layout(self) -> None:
        self.guard.set_body(Modal(self.dialogs[0], self.frame) if self.dialogs else self.frame)

    def show_dialog(self, dialog: dialogs.Dialog) -> dialogs.Dialog:
        self.dialogs.append(dialog)
        self._layout()
        return dialog

    def close_dialog(self, dialog: dialogs.Dialog) -> None:
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)
        self._layout()

    def _closing(self, fn: Optional[Callable[[], None]] = None) -> Callable[[], None]:
        """A dialog callback that closes the dialog on top first."""
        def run() -> None:
            if self.dialogs:
                self.close_dialog(self.dialogs[0])
            if fn is not None:
                fn()
            self.refresh()
        return run

    # -- focus ------------------------------------------------------------------------------
    @property
    def focus_area(self) -> str:
        if self.frame.focus_position == "footer":
            return "input"
        return "contacts" if self.columns.focus_position == 0 else "conversation"

    def set_focus(self, area: str) -> None:
        if area == "input":
            self.frame.focus_position = "footer"
            self.bottom.focus_position = 1
        else:
            self.frame.focus_position = "body"
            self.columns.focus_position = 0 if area == "contacts" else 2
            if area == "contacts":
                self.contacts.focus_on(self.model.open_chat)

    def cycle_focus(self, step: int) -> None:
        order = [a for a in FOCUS_ORDER if a != "contacts" or self.model.contacts]
        current = self.focus_area if self.focus_area in order else "input"
        self.set_focus(order[(order.index(current) + step) % len(order)])

    # -- keys -------------------------------------------------------------------------------
    def pre_key(self, key: str) -> bool:
        """Global bindings, before the focused widget sees the key. True: handled."""
        if not isinstance(key, str):
            return False
        actions = self.keymap.actions(key)
        if self.dialogs:
            dialog = self.dialogs[0]
            if "quit" in actions:
                self.quit()
            if key == "esc" or ("help" in actions and dialog.box):
                if dialog.cancel():
                    self.close_dialog(dialog)
                    self.refresh()
                return True
            return False
        area = self.focus_area
        if is_printable(key) and area == "input":
            return False
        actions.sort(key=lambda a: a != "complete")   # Tab in a /command completes first
        for action in actions:
            if self._action(action, area):
                return True
        return False

    def _action(self, action: str, area: str) -> bool:
        if action == "quit":
            self.quit()
        elif action == "help":
            self.show_help()
        elif action == "redraw":
            if self.loop is not None:
                self.loop.screen.clear()
        elif action == "complete":
            if area != "input" or not slash.is_command(self.prompt.text):
                return False
            self.complete()
        elif action in ("focus_next", "focus_prev"):
            self.cycle_focus(1 if action == "focus_next" else -1)
        elif action in ("next_contact", "prev_contact"):
            contact = self.model.step_contact(1 if action == "next_contact" else -1)
            if contact is not None:
                self.open_chat(contact.fingerprint)
        elif action == "next_unread":
            contact = self.model.next_unread()
            if contact is None:
                self.notice("No unread messages")
            else:
                self.open_chat(contact.fingerprint)
        elif action in ("scroll_up", "scroll_down"):
            self.conversation.scroll("page up" if action == "scroll_up" else "page down")
        elif action == "send":
            if area != "input":
                return False
            self.submit()
        elif action == "newline":
            if area != "input":
                return False
            self.prompt.insert("\n")
        elif action == "cancel":
            if area != "input" or not self.prompt.text:
                return False
            self.prompt.set_text("")
        else:
            return False
        return True

    def unhandled_key(self, key: Any) -> bool:
        """Keys no widget wanted (MainLoop's unhandled_input): ignored, never an error."""
        log.debug("unhandled input %r", key)
        return True

    # -- contacts ---------------------------------------------------------------------------
    def open_from_list(self, fingerprint: str) -> None:
        self.open_chat(fingerprint)
        self.set_focus("input")

    def open_chat(self, fingerprint: str) -> None:
        if fingerprint not in self.model.contacts:
            return
        self.model.open(fingerprint)
        self.conversation.listbox.follow = True
        self.contacts.focus_on(fingerprint)
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
        text = self.prompt.text
        if not text.strip():
            return
        if slash.is_command(text):
            self.prompt.set_text("")
            self.run_command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        contact = self.model.open_contact
        if contact is None:
            self.notice("Open a conversation first (Ctrl-N, or click a contact), or /add someone", error=True)
            return
        if contact.blocked:
            self.notice(f"{contact.name} is blocked: /unblock {contact.name} first", error=True)
            return
        body = text.rstrip()
        fingerprint = contact.fingerprint
        message_id = uuid.uuid4().hex
        self.model.add_outgoing(fingerprint, body, message_id, self.clock())
        self.prompt.set_text("")
        self.conversation.listbox.follow = True

        def done(reply: dict) -> None:
            self.model.outgoing_result(fingerprint, message_id, reply)
            if not reply.get("success"):
                self.notice(f"Not sent: {reply.get('error')}", error=True)
            self.refresh()

        self.client.request("p2p", "send_message", {"peer": contact.name, "message": body,
                                                    "message_id": message_id}, on_done=done)
        self.refresh()

    # -- commands ---------------------------------------------------------------------------
    def run_command(self, text: str) -> None:
        try:
            parsed = slash.parse(text)
        except slash.UsageError as exc:
            self.notice(str(exc), error=True)
            return
        handler = getattr(self, "cmd_" + parsed.name)
        try:
            handler(parsed.args)
        except slash.UsageError as exc:
            self.notice(str(exc), error=True)

    def _contact(self, name: Optional[str]):
        contact = self.model.by_name(name)
        if contact is None:
            raise slash.UsageError(f"No contact named {name!r} (Tab completes names)")
        return contact

    def cmd_add(self, args: dict) -> None:
        name, key = args["NAME"] or "", args["ID|KEY|@FILE"] or ""
        if key.startswith("@") and not key.startswith("@@"):
            path = os.path.expanduser(key[1:])
            try:
                key = pathlib.Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise slash.UsageError(f"Cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        elif key.startswith("@@"):
            key = key[1:]

        def added(_data: Any) -> None:
            self.notice(f"Added {name}. Reach them with /connect {name} HOST:PORT if they are not on your LAN")

            def listed(data: Any) -> None:
                self._on_contacts(data, False)
                contact = self.model.by_name(name)
                if contact is not None:
                    self.open_chat(contact.fingerprint)
            self.request("contacts", "list", on_ok=listed)

        self.request("contacts", "add", {"peer": name, "public_key": key}, on_ok=added)

    def cmd_remove(self, args: dict) -> None:
        contact = self._contact(args["NAME"])
        name = contact.name

        def remove() -> None:
            self.request("contacts", "remove", {"peer": name},
                         on_ok=lambda _d: (self.model._forget(contact.fingerprint), self.notice(f"Removed {name}")))

        self.show_dialog(dialogs.confirm(
            "Remove contact", f"Remove {name} and your whole conversation with them? This cannot be undone.",
            "Remove", self._closing(remove), self._closing()))

    def cmd_rename(self, args: dict) -> None:
        contact = self._contact(args["OLD"])
        new = args["NEW"] or ""
        self.request("contacts", "rename", {"peer": contact.name, "new_name": new},
                     on_ok=lambda data: (self.model._upsert_contact(data) if isinstance(data, dict) else None,
                                         self.notice(f"Renamed {args['OLD']} to {new}")))

    def cmd_block(self, args: dict) -> None:
        name = args["NAME"] or ""
        contact = self.model.by_name(name)
        peer = contact.name if contact else name   # an ID blocks a stranger
        self.request("contacts", "block", {"peer": peer},
                     on_ok=lambda data: (self.model._upsert_contact(data) if isinstance(data, dict) else None,
                                         self.notice(f"Blocked {peer}: /unblock {peer} to undo")))

    def cmd_unblock(self, args: dict) -> None:
        contact = self._contact(args["NAME"])
        self.request("contacts", "unblock", {"peer": contact.name},
                     on_ok=lambda data: (self.model._upsert_contact(data) if isinstance(data, dict) else None,
                                         self.notice(f"Unblocked {contact.name}")))

    def cmd_connect(self, args: dict) -> None:
        contact = self._contact(args["NAME"])
        address = args["HOST:PORT"] or ""
        if ":" not in address:
            raise slash.UsageError("Usage: /connect NAME HOST:PORT — the address needs a port, e.g. 192.0.2.7:40000")
        self.notice(f"Connecting to {contact.name} at {address}…")

        def connected(data: Any) -> None:
            state = data.get("state") if isinstance(data, dict) else None
            self.notice(f"{contact.name}: {state or 'connecting'}" + (f" at {data.get('address')}"
                                                                      if isinstance(data, dict) and data.get("address") else ""))
            self.request("p2p", "peers", on_ok=self._on_peers, quiet=True)

        self.request("p2p", "connect", {"peer": contact.name, "address": address}, on_ok=connected)

    def cmd_myid(self, args: dict) -> None:
        me = self.model.me
        if not me.get("id"):
            raise slash.UsageError("Still loading: try again in a moment")
        path = args.get("FILE")
        if path:
            target = pathlib.Path(os.path.expanduser(path))
            try:
                target.write_text(me["public_key"] + "\n", encoding="utf-8")
            except OSError as exc:
                raise slash.UsageError(f"Cannot write {target}: {exc.strerror or exc}") from None
            self.notice(f"Wrote your public key to {target}: they add you with /add {me.get('name') or 'NAME'} @FILE")
            return
        text = [
            "Your ID (read it out, or send it; any typo is detected):\n\n",
            ("welcome_id", "  " + me["id"]), "\n\n",
            f"Short form (for recognising, not for adding): {me.get('short_id')}\n",
            "Your full public key: /myid FILE writes it to a file.",
        ]
        self.show_dialog(dialogs.message("My ID", text, self._closing()))

    def cmd_verify(self, args: dict) -> None:
        contact = self._contact(args["NAME"])
        name = contact.name
        self.notice(f"Running the handshake with {name} to compare keys…")

        def negotiated(data: Any) -> None:
            if not isinstance(data, dict):
                return
            number = data.get("safety_number") or "?"
            groups = number.split()
            lines = "  " + " ".join(groups[:6]) + "\n  " + " ".join(groups[6:])
            text = [f"Safety number with {name}:\n\n", ("welcome_id", lines), "\n\n",
                    f"Compare it with {name} in person or by voice (not through this chat). ",
                    "It is the same on both sides only when nobody sits in between.\n\n",
                    ("title_dim", f"{name}'s ID: {data.get('fingerprint')}\n"
                                  f"Keys: {data.get('key_exchange')}, {data.get('signatures')}; "
                                  f"path {data.get('path')}")]

            def verified() -> None:
                self.request("contacts", "verify", {"peer": name, "verified": True},
                             on_ok=lambda view: (self.model._upsert_contact(view) if isinstance(view, dict) else None,
                                                 self.notice(f"{name} is verified ✔")))

            self.show_dialog(dialogs.confirm(f"Verify {name}", text, "They match: mark verified",
                                             self._closing(verified), self._closing(), no="They differ / later"))

        self.request("contacts", "negotiate_keys", {"peer": name}, on_ok=negotiated)

    def cmd_sendfile(self, args: dict) -> None:
        contact = self.model.open_contact
        if contact is None:
            raise slash.UsageError("Open the conversation to send the file to first (Ctrl-N)")
        path = os.path.abspath(os.path.expanduser(args["PATH"] or ""))
        if not os.path.isfile(path):
            raise slash.UsageError(f"No such file: {path}")
        transfer_id = uuid.uuid4().hex
        transfer = self.model.add_transfer(transfer_id, contact.fingerprint, os.path.basename(path),
                                           os.path.getsize(path), "out", self.clock(), state="waiting")
        self.conversation.listbox.follow = True

        def refused(error: str) -> None:
            transfer.state, transfer.error = "failed", error
            self.notice(f"Not sent: {error}", error=True)

        command, action = TRANSFER_ACTIONS["send"]
        self.request(command, action, {"peer": contact.name, "file_path": path, "transfer_id": transfer_id},
                     on_ok=lambda _data: self.notice(f"Offered {transfer.file_name} to {contact.name}"),
                     on_error=refused)

    def _offer(self, text: Optional[str]) -> Transfer:
        if text:
            transfer = self.model.find_transfer(text)
            if transfer is None:
                raise slash.UsageError(f"No transfer {text!r} (/transfers lists them)")
            return transfer
        offers = self.model.pending_offers(self.model.open_chat) or self.model.pending_offers()
        if not offers:
            raise slash.UsageError("No file offer is waiting for an answer")
        return offers[-1]

    def _running(self, text: Optional[str], states: tuple[str, ...]) -> Transfer:
        """The transfer named by (a prefix of) its ID, else the latest one in `states` here."""
        if text:
            return self._offer(text)
        candidates = sorted((t for t in self.model.transfers.values() if t.state in states),
                            key=lambda t: (t.peer == self.model.open_chat, t.order))
        if not candidates:
            raise slash.UsageError(f"No transfer is {' or '.join(states)} (/transfers lists them)")
        return candidates[-1]

    def _transfer_request(self, kind: str, transfer: Transfer, done: str,
                          on_ok: Optional[Callable[[], None]] = None) -> None:
        command, action = TRANSFER_ACTIONS[kind]

        def answered(data: Any) -> None:
            if isinstance(data, dict):
                self.model.merge_transfers([data], self.clock())
            if on_ok is not None:
                on_ok()
            self.notice(f"{done} {transfer.file_name}")

        self.request(command, action, {"transfer_id": transfer.transfer_id}, on_ok=answered)

    def answer_transfer(self, transfer_id: str, accept: bool) -> None:
        transfer = self.model.transfers.get(transfer_id)
        if transfer is None:
            return

        def moved() -> None:
            if transfer.state == "offered":
                transfer.state = "waiting" if accept else "rejected"

        self._transfer_request("accept" if accept else "reject", transfer, "Accepted" if accept else "Rejected",
                               moved)

    def cmd_accept(self, args: dict) -> None:
        self.answer_transfer(self._offer(args.get("ID")).transfer_id, True)

    def cmd_reject(self, args: dict) -> None:
        self.answer_transfer(self._offer(args.get("ID")).transfer_id, False)

    def cmd_cancel(self, args: dict) -> None:
        self._transfer_request("cancel", self._running(args.get("ID"), ("waiting", "active", "paused", "offered")),
                               "Cancelled")

    def cmd_pause(self, args: dict) -> None:
        self._transfer_request("pause", self._running(args.get("ID"), ("waiting", "active")), "Paused")

    def cmd_resume(self, args: dict) -> None:
        self._transfer_request("resume", self._running(args.get("ID"), ("paused", "failed")), "Resumed")

    def cmd_transfers(self, args: dict) -> None:
        def show() -> None:
            rows = []
            for transfer in sorted(self.model.transfers.values(), key=lambda t: t.order):
                contact = self.model.contacts.get(transfer.peer)
                percent = transfer.percent
                rows.append(f"{transfer.transfer_id[:12]:<12}  {'in ' if transfer.direction == 'in' else 'out'} "
                            f"{(contact.name if contact else '?')[:12]:<12} {transfer.state:<9} "
                            f"{'' if percent is None else f'{percent:5.1f}%'}  {transfer.file_name}")
            text = "\n".join(rows) if rows else "No file transfers."
            self.show_dialog(dialogs.message("File transfers", text, self._closing()))

        self.load_transfers(then=show)

    def cmd_nick(self, args: dict) -> None:
        self.notice("Your display name is set at start-up: run chatp2p --name NAME (or [node] name in the "
                    "conf file). Contacts see the name they gave you anyway.", error=True)

    def cmd_help(self, args: dict) -> None:
        self.show_help()

    def cmd_quit(self, args: dict) -> None:
        self.quit()

    # -- dialogs ----------------------------------------------------------------------------
    def show_help(self) -> None:
        if self.dialogs and self.dialogs[0].box:
            return
        self.show_dialog(dialogs.help_dialog(self.keymap, self._closing()))

    def show_key_mismatch(self, data: dict) -> None:
        text = [("dialog_warn", f"The node answering for {data.get('peer')} is NOT the one you added.\n\n"),
                "Expected ID:\n", ("welcome_id", f"  {data.get('expected')}\n"),
                "It answered as:\n", ("welcome_id", f"  {data.get('got') or 'unknown'}\n"),
                f"From address: {data.get('address') or '?'}\n\n",
                "Nothing was sent to it. Someone may be impersonating this contact, or they made a new "
                "identity: ask them through another channel before adding the new ID."]
        self.show_dialog(dialogs.message("⚠ Key mismatch", text, self._closing(), warn=True, dismissable=False,
                                         button="I understand"))
        self.ring()

    def show_contact_request(self, data: dict) -> None:
        fingerprint = data.get("fingerprint") or ""
        bundle = data.get("bundle") or fingerprint

        def ask_name() -> None:
            def add(name: str) -> None:
                self.close_dialog(self.dialogs[0]) if self.dialogs else None
                name = name.strip()
                if not name:
                    self.notice("No name given: the request stays ignored", error=True)
                    return
                self.model.requests.pop(fingerprint, None)
                self.request("contacts", "add", {"peer": name, "public_key": bundle},
                             on_ok=lambda _d: self.notice(f"Added {name}"))
                self.refresh()

            self.show_dialog(dialogs.question("Add contact", f"A name for {fingerprint}:", "Name: ", add,
                                              self._closing()))

        def block() -> None:
            self.model.requests.pop(fingerprint, None)
            self.request("contacts", "block", {"peer": fingerprint},
                         on_ok=lambda _d: self.notice("Blocked: it cannot reach you any more"))

        text = ["Someone who is not in your contacts connected to you:\n\n",
                ("welcome_id", "  " + fingerprint), "\n",
                f"  from {data.get('address') or '?'}\n\n",
                "Add them (their messages so far are kept until you decide), block them, or decide later."]
        self.show_dialog(dialogs.Dialog("Contact request", [urwid.Text(text)],
                                        [("Add…", self._closing(ask_name)), ("Block", self._closing(block)),
                                         ("Later", self._closing())], on_cancel=self._closing()))
        self.ring()


def run(backend: Any, config_path: Optional[pathlib.Path]) -> int:
    """Run the UI on this terminal until the user quits; returns the exit code (0)."""
    import signal

    import gevent

    from .client import Bridge

    keymap, theme, settings, errors = load_ui_config(config_path)
    bridge = Bridge()
    client = Client(backend, bridge.post)
    app = App(client, keymap, theme, settings)
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
