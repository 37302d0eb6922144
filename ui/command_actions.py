"""What the contact, identity and session commands do (/add, /remove, /verify, /myid, /quit ...).

Each handler is `(app, args by name) -> None` and raises UsageError for a hint in the footer;
the command table (commands.py) names its handler, nothing here is looked up by name.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any, Mapping, Optional

from . import group_actions
from .model import Contact
from .usage import UsageError
from .views import chat_dialogs

if TYPE_CHECKING:
    from .app import App

Args = Mapping[str, Any]


def _contact(app: "App", name: Optional[str]) -> Contact:
    contact = app.model.by_name(name)
    if contact is None:
        raise UsageError(f"No contact named {name!r} ({app.keymap.label('complete')} completes names)")
    return contact


def add_contact(app: "App", args: Args) -> None:
    name, key = args["NAME"] or "", args["ID|KEY|@FILE"] or ""
    if key.startswith("@") and not key.startswith("@@"):
        path = os.path.expanduser(key[1:])
        try:
            key = pathlib.Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"Cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    elif key.startswith("@@"):
        key = key[1:]

    def added(_data: Any) -> None:
        app.notice(f"Added {name}. Reach them with /connect {name} HOST:PORT if they are not on your LAN")

        def listed(data: Any) -> None:
            app.on_contacts(data, False)
            contact = app.model.by_name(name)
            if contact is not None:
                app.open_chat(contact.fingerprint)
        app.request("contacts", "list", on_ok=listed)

    app.request("contacts", "add", {"peer": name, "public_key": key}, on_ok=added)


def remove_contact(app: "App", args: Args) -> None:
    contact = _contact(app, args["NAME"])
    name = contact.name

    def remove() -> None:
        app.request("contacts", "remove", {"peer": name},
                    on_ok=lambda _d: (app.model.forget(contact.fingerprint), app.notice(f"Removed {name}")))

    app.show_dialog(chat_dialogs.remove_contact(name, app.closing(remove), app.closing()))


def rename_contact(app: "App", args: Args) -> None:
    """/rename OLD NEW renames a contact; /rename NAME, in an open group, the group."""
    if args.get("NEW") is None:
        group = app.model.open_group
        if group is None:
            raise UsageError("Usage: /rename OLD NEW — or open a group and /rename NAME to rename it")
        group_actions.rename(app, group, args["OLD"] or "")
        return
    contact = _contact(app, args["OLD"])
    new = args["NEW"] or ""
    app.request("contacts", "rename", {"peer": contact.name, "new_name": new},
                on_ok=lambda data: (app.model.update_contact(data), app.notice(f"Renamed {args['OLD']} to {new}")))


def block_contact(app: "App", args: Args) -> None:
    name = args["NAME"] or ""
    contact = app.model.by_name(name)
    peer = contact.name if contact else name   # an ID blocks a stranger
    app.request("contacts", "block", {"peer": peer},
                on_ok=lambda data: (app.model.update_contact(data),
                                    app.notice(f"Blocked {peer}: /unblock {peer} to undo")))


def unblock_contact(app: "App", args: Args) -> None:
    contact = _contact(app, args["NAME"])
    app.request("contacts", "unblock", {"peer": contact.name},
                on_ok=lambda data: (app.model.update_contact(data), app.notice(f"Unblocked {contact.name}")))


def connect(app: "App", args: Args) -> None:
    contact = _contact(app, args["NAME"])
    address = args["HOST:PORT"] or ""
    if ":" not in address:
        raise UsageError("Usage: /connect NAME HOST:PORT — the address needs a port, e.g. 192.0.2.7:40000")
    app.notice(f"Connecting to {contact.name} at {address}…")

    def connected(data: Any) -> None:
        state = data.get("state") if isinstance(data, dict) else None
        where = f" at {data.get('address')}" if isinstance(data, dict) and data.get("address") else ""
        app.notice(f"{contact.name}: {state or 'connecting'}{where}")
        app.request("p2p", "peers", on_ok=app.on_peers, quiet=True)

    app.request("p2p", "connect", {"peer": contact.name, "address": address}, on_ok=connected)


def show_my_id(app: "App", args: Args) -> None:
    me = app.model.me
    if not me.get("id"):
        raise UsageError("Still loading: try again in a moment")
    path = args.get("FILE|--qr")
    if path == "--qr" or not path:
        from chatp2p_core.qr import qr_text
        app.copy_to_clipboard(me["id"])   # OSC 52, where the terminal allows it
        app.show_dialog(chat_dialogs.my_id(me, app.closing(), qr_text(me["id"]) if path else ""))
        return
    target = pathlib.Path(os.path.expanduser(path))
    try:
        target.write_text(me["public_key"] + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot write {target}: {exc.strerror or exc}") from None
    app.notice(f"Wrote your public key to {target}: they add you with /add {me.get('name') or 'NAME'} @FILE")


def compose_in_editor(app: "App", args: Args) -> None:
    """The draft goes to $EDITOR and comes back as the draft: nothing is sent until Enter."""
    draft = app.prompt.text
    edited = app.edit_externally("" if draft.startswith("/") else draft)
    if edited is None:
        app.notice("The editor failed: the draft is unchanged", error=True)
        return
    app.prompt.set_text(edited)
    app.set_focus("input")


def verify_contact(app: "App", args: Args) -> None:
    contact = _contact(app, args["NAME"])
    name = contact.name
    app.notice(f"Running the handshake with {name} to compare keys…")

    def negotiated(data: Any) -> None:
        if not isinstance(data, dict):
            return

        def verified() -> None:
            app.request("contacts", "verify", {"peer": name, "verified": True},
                        on_ok=lambda view: (app.model.update_contact(view), app.notice(f"{name} is verified ✔")))

        app.show_dialog(chat_dialogs.safety_number(name, data, app.closing(verified), app.closing()))

    app.request("contacts", "negotiate_keys", {"peer": name}, on_ok=negotiated)


def search(app: "App", args: Args) -> None:
    words = args["WORDS"] or ""
    app.request("p2p", "search", {"text": words, "limit": 100},
                on_ok=lambda found: app.show_dialog(chat_dialogs.search_results(words, found or [], app.closing())))


def delete_messages(app: "App", args: Args) -> None:
    """/delete: the newest message of the open conversation; /delete N: the Nth newest;
    /delete all: the conversation. Asks first; the daemon's messages_deleted event updates the view."""
    contact = app.model.open_contact
    if contact is None:
        raise UsageError("Open a conversation first")
    which = (args.get("N|all") or "1").strip().lower()
    if which == "all":
        data: dict[str, Any] = {"peer": contact.name, "all": True}
        what = None
    else:
        if not which.isdigit() or int(which) < 1:
            raise UsageError("Usage: /delete [N|all] — N counts from the newest message (1)")
        conv = app.model.conversations.get(contact.fingerprint)
        messages = conv.sorted_messages() if conv else []
        if int(which) > len(messages):
            raise UsageError(f"There are only {len(messages)} messages shown here")
        message = messages[-int(which)]
        data = {"peer": contact.name, "message_id": message.message_id}
        what = repr(message.body if len(message.body) <= 60 else message.body[:59] + "…")

    def delete() -> None:
        app.request("p2p", "delete_message", data,
                    on_ok=lambda answer: app.notice(f"Deleted {answer.get('deleted', 0)} message(s)"
                                                    + (f"; {answer['kept']} still on their way kept"
                                                       if answer.get("kept") else "")))

    app.show_dialog(chat_dialogs.delete_messages(contact.name, what, app.closing(delete), app.closing()))


def set_nick(app: "App", args: Args) -> None:
    app.notice("Your display name is set at start-up: run chatp2p --name NAME (or [node] name in the "
               "conf file). Contacts see the name they gave you anyway.", error=True)


def set_online(app: "App", args: Args) -> None:
    """/online [on|off]: show or switch the mode (saved in the conf file for every program)."""
    word = (args.get("on|off") or "").strip().lower()
    if not word:
        mode = app.model.mode_text
        app.notice(f"Mode: {mode[1] if isinstance(mode, tuple) else mode or 'unknown'} "
                   "(/online on: find contacts by ID through the public DHT; /online off: private)")
        return
    if word not in ("on", "off"):
        raise UsageError("Usage: /online on|off (on: the public DHT and STUN see your IP address)")
    choose_online(app, word == "on")


def choose_online(app: "App", online: bool) -> None:
    """Save `online = …` in the conf file, then restart the P2P network in that mode."""
    from chatp2p_core.config import ConfigError, save_setting

    app.ask_online = False
    if app.conf_path is not None:
        try:
            save_setting(app.conf_path, "online", online)
        except (OSError, ConfigError) as exc:
            app.notice(f"Could not save the choice in {app.conf_path}: {getattr(exc, 'strerror', None) or exc}",
                       error=True)
    word = "online" if online else "private"

    def started(_data: Any) -> None:
        app.notice("Online mode: contacts are found by ID through the DHT" if online else
                   "Private mode: nothing is contacted that you did not configure")
        app.request("status", on_ok=app.on_status, quiet=True)
    app.request("p2p", "start", {"online": online}, on_ok=started,
                on_error=lambda error: app.notice(f"Could not switch to {word} mode: {error}", error=True))


def show_help(app: "App", args: Args) -> None:
    app.show_help()


def quit_app(app: "App", args: Args) -> None:
    app.quit()
