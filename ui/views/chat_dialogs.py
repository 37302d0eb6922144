"""The chat's own dialogs and their wording: who I am, safety numbers, removals, key mismatches,
contact requests, the transfer list. The controller decides when; these decide what is said."""

from __future__ import annotations

import time
from typing import Any, Callable, Collection, Mapping

import urwid

from ..model import Model
from . import dialogs
from .dialogs import Callback, Dialog


def remove_contact(name: str, on_yes: Callback, on_no: Callback) -> Dialog:
    return dialogs.confirm("Remove contact",
                           f"Remove {name} and your whole conversation with them? This cannot be undone.",
                           "Remove", on_yes, on_no)


def delete_messages(name: str, what: str, on_yes: Callback, on_no: Callback) -> Dialog:
    """`what`: the message quoted, or None for the whole conversation."""
    text = (f"Delete {what} from your conversation with {name}?" if what else
            f"Delete your whole conversation with {name}? Messages still on their way are kept.")
    return dialogs.confirm("Delete", text + " Only on this device: their copy stays. This cannot be undone.",
                           "Delete", on_yes, on_no)


def search_results(query: str, found: list[Mapping[str, Any]], on_close: Callback) -> Dialog:
    """Messages found, newest first: when, who, the text on one line."""
    from ..model import one_line, parse_time

    rows = []
    for message in found:
        when = parse_time(message.get("created"))
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "?"
        who = f"me → {message.get('peer')}" if message.get("direction") == "out" else str(message.get("peer"))
        rows.append(f"{stamp}  {who}: {one_line(str(message.get('body') or ''), 200)}")
    text = "\n".join(rows) if rows else f"Nothing found for {query!r}."
    return dialogs.message(f"Search: {query}", text, on_close)


ONLINE_CHOICE_TEXT = [
    "How should ChatP2P reach your contacts?\n\n",
    ("welcome_id", "Online"), ": contacts are found by ID alone, anywhere, through the public BitTorrent "
    "DHT and public STUN servers. What it costs:\n",
    "  • STUN servers and DHT nodes see your IP address.\n",
    "  • Anyone who has your ID can follow your IP address while you publish under it.\n",
    "  • DHT nodes near your record see the IP addresses that look you up.\n\n",
    ("welcome_id", "Private"), ": nothing is contacted that you did not configure: contacts on your LAN "
    "(if enabled), addresses you give, your own rendezvous and TURN servers.\n\n",
    "Messages are end-to-end encrypted either way. Change it later with /online on or /online off.",
]


def online_choice(on_online: Callback, on_private: Callback) -> Dialog:
    """The one-time choice of the first start (saved as `online = …` in the conf file)."""
    return dialogs.Dialog("Online or private?", [urwid.Text(ONLINE_CHOICE_TEXT)],
                          [("Online", on_online), ("Private", on_private)], dismissable=False)


def my_id(me: Mapping[str, Any], on_close: Callback, qr: str = "") -> Dialog:
    text = [
        "Your ID (read it out, or send it; any typo is detected):\n\n",
        ("welcome_id", "  " + me["id"]), "\n\n",
        *([("qr", qr), "\n"] if qr else []),
        f"Short form (for recognising, not for adding): {me.get('short_id')}\n",
        "Copied to the clipboard (in terminals that allow OSC 52). /myid --qr draws it as a QR code;\n",
        "your full public key: /myid FILE writes it to a file.",
    ]
    return dialogs.message("My ID", text, on_close)


def safety_number(name: str, data: Mapping[str, Any], on_match: Callback, on_later: Callback) -> Dialog:
    """The numbers to compare out of band; 'They match' marks the contact verified."""
    number = data.get("safety_number") or "?"
    groups = number.split()
    lines = "  " + " ".join(groups[:6]) + "\n  " + " ".join(groups[6:])
    text = [f"Safety number with {name}:\n\n", ("welcome_id", lines), "\n\n",
            f"Compare it with {name} in person or by voice (not through this chat). ",
            "It is the same on both sides only when nobody sits in between.\n\n",
            ("title_dim", f"{name}'s ID: {data.get('fingerprint')}\n"
                          f"Keys: {data.get('key_exchange')}, {data.get('signatures')}; "
                          f"path {data.get('path')}")]
    return dialogs.confirm(f"Verify {name}", text, "They match: mark verified", on_match, on_later,
                           no="They differ / later")


def key_mismatch(data: Mapping[str, Any], on_close: Callback) -> Dialog:
    """Must be acknowledged: the cancel key does not close it."""
    text = [("dialog_warn", f"The node answering for {data.get('peer')} is NOT the one you added.\n\n"),
            "Expected ID:\n", ("welcome_id", f"  {data.get('expected')}\n"),
            "It answered as:\n", ("welcome_id", f"  {data.get('got') or 'unknown'}\n"),
            f"From address: {data.get('address') or '?'}\n\n",
            "Nothing was sent to it. Someone may be impersonating this contact, or they made a new "
            "identity: ask them through another channel before adding the new ID."]
    return dialogs.message("⚠ Key mismatch", text, on_close, warn=True, dismissable=False, button="I understand")


def contact_request(data: Mapping[str, Any], on_add: Callback, on_block: Callback, on_later: Callback) -> Dialog:
    fingerprint = data.get("fingerprint") or ""
    text = ["Someone who is not in your contacts connected to you:\n\n",
            ("welcome_id", "  " + fingerprint), "\n",
            f"  from {data.get('address') or '?'}\n\n",
            "Add them (their messages so far are kept until you decide), block them, or decide later."]
    return Dialog("Contact request", [urwid.Text(text)],
                  [("Add…", on_add), ("Block", on_block), ("Later", on_later)], on_cancel=on_later)


def name_for(fingerprint: str, on_answer: Callable[[str], None], on_cancel: Callback,
             submit_keys: Collection[str]) -> Dialog:
    """Asks the local name of a contact being added from a request."""
    return dialogs.question("Add contact", f"A name for {fingerprint}:", "Name: ", on_answer, on_cancel,
                            submit_keys)


def transfers(model: Model, on_close: Callback) -> Dialog:
    """Every known transfer, oldest first: ID, direction, peer, state, progress, file."""
    rows = []
    for transfer in sorted(model.transfers.values(), key=lambda t: t.order):
        chat = model.contacts.get(transfer.peer) or model.groups.get(transfer.peer)
        percent = transfer.percent
        rows.append(f"{transfer.transfer_id[:12]:<12}  {'in ' if transfer.direction == 'in' else 'out'} "
                    f"{(chat.name if chat else '?')[:12]:<12} {transfer.state:<9} "
                    f"{'' if percent is None else f'{percent:5.1f}%'}  {transfer.file_name}")
    text = "\n".join(rows) if rows else "No file transfers."
    return dialogs.message("File transfers", text, on_close)
