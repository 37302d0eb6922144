"""What the file-transfer commands do: /sendfile, /accept, /reject, /cancel, /pause, /resume,
/transfers, and the Accept/Reject buttons of an offer in the conversation."""

from __future__ import annotations

import os
import uuid
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from . import group_actions
from .model import Transfer
from .usage import UsageError
from .views import chat_dialogs

if TYPE_CHECKING:
    from .app import App

Args = Mapping[str, Optional[str]]

# The API actions (p2p send_file is the seed protocol's, the others extensions).
TRANSFER_ACTIONS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "send": ("p2p", "send_file"),
    "accept": ("p2p", "accept_file"),
    "reject": ("p2p", "reject_file"),
    "cancel": ("p2p", "cancel_transfer"),
    "pause": ("p2p", "pause_transfer"),
    "resume": ("p2p", "resume_transfer"),
    "list": ("p2p", "transfers"),
})


def load(app: "App", then: Optional[Callable[[], None]] = None) -> None:
    """Merge the daemon's transfer list into the model, then run `then` (also on error)."""
    def merge(data: Any) -> None:
        if isinstance(data, list):
            app.model.merge_transfers(data, app.clock())
        if then is not None:
            then()

    command, action = TRANSFER_ACTIONS["list"]
    app.request(command, action, on_ok=merge, on_error=lambda _e: then() if then else None, quiet=True)


def _offer(app: "App", text: Optional[str]) -> Transfer:
    if text:
        transfer = app.model.find_transfer(text)
        if transfer is None:
            raise UsageError(f"No transfer {text!r} (/transfers lists them)")
        return transfer
    offers = app.model.pending_offers(app.model.open_chat) or app.model.pending_offers()
    if not offers:
        raise UsageError("No file offer is waiting for an answer")
    return offers[-1]


def _running(app: "App", text: Optional[str], states: tuple[str, ...]) -> Transfer:
    """The transfer named by (a prefix of) its ID, else the latest one in `states` here."""
    if text:
        return _offer(app, text)
    candidates = sorted((t for t in app.model.transfers.values() if t.state in states),
                        key=lambda t: (t.peer == app.model.open_chat, t.order))
    if not candidates:
        raise UsageError(f"No transfer is {' or '.join(states)} (/transfers lists them)")
    return candidates[-1]


def _request(app: "App", kind: str, transfer: Transfer, done: str,
             on_ok: Optional[Callable[[], None]] = None) -> None:
    command, action = TRANSFER_ACTIONS[kind]

    def answered(data: Any) -> None:
        if isinstance(data, dict):
            app.model.merge_transfers([data], app.clock())
        if on_ok is not None:
            on_ok()
        app.notice(f"{done} {transfer.file_name}")

    app.request(command, action, {"transfer_id": transfer.transfer_id}, on_ok=answered)


def answer(app: "App", transfer_id: str, accept: bool) -> None:
    """Accept or reject an offer (the conversation's buttons, /accept, /reject)."""
    transfer = app.model.transfers.get(transfer_id)
    if transfer is None:
        return

    def moved() -> None:
        if transfer.state == "offered":
            transfer.state = "waiting" if accept else "rejected"

    _request(app, "accept" if accept else "reject", transfer, "Accepted" if accept else "Rejected", moved)


def send_file(app: "App", args: Args) -> None:
    """/sendfile PATH: to the open contact, or in a group to every member (group send_file)."""
    contact = app.model.open_contact
    if contact is None and app.model.open_group is None:
        raise UsageError(f"Open the conversation to send the file to first ({app.keymap.label('next_contact')})")
    path = os.path.abspath(os.path.expanduser(args["PATH"] or ""))
    if not os.path.isfile(path):
        raise UsageError(f"No such file: {path}")
    if contact is None:
        group_actions.send_file(app, path)
        return
    transfer_id = uuid.uuid4().hex
    transfer = app.model.add_transfer(transfer_id, contact.fingerprint, os.path.basename(path),
                                      os.path.getsize(path), "out", app.clock(), state="waiting")
    app.follow_conversation()

    def refused(error: str) -> None:
        transfer.state, transfer.error = "failed", error
        app.notice(f"Not sent: {error}", error=True)

    command, action = TRANSFER_ACTIONS["send"]
    app.request(command, action, {"peer": contact.name, "file_path": path, "transfer_id": transfer_id},
                on_ok=lambda _data: app.notice(f"Offered {transfer.file_name} to {contact.name}"),
                on_error=refused)


def accept(app: "App", args: Args) -> None:
    answer(app, _offer(app, args.get("ID")).transfer_id, True)


def reject(app: "App", args: Args) -> None:
    answer(app, _offer(app, args.get("ID")).transfer_id, False)


def cancel(app: "App", args: Args) -> None:
    _request(app, "cancel", _running(app, args.get("ID"), ("waiting", "active", "paused", "offered")), "Cancelled")


def pause(app: "App", args: Args) -> None:
    _request(app, "pause", _running(app, args.get("ID"), ("waiting", "active")), "Paused")


def resume(app: "App", args: Args) -> None:
    _request(app, "resume", _running(app, args.get("ID"), ("paused", "failed")), "Resumed")


def list_transfers(app: "App", args: Args) -> None:
    load(app, then=lambda: app.show_dialog(chat_dialogs.transfers(app.model, app.closing())))
