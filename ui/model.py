"""The UI's state: who I am, contacts, conversations, transfers. Pure Python, no urwid, no I/O.

The controller feeds it API answers (`set_status`, `set_contacts`, `set_peers`, `set_history`)
and events (`apply_event`); views read it. Everything is keyed by the contact's fingerprint
(the ID), which survives renames; the API and the events name contacts by their local name,
so `by_name` translates. Times are epoch seconds (floats); the API's ISO-8601 strings are
parsed once, here.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Iterable, Optional

from .groups import Group, Groups, is_group_key
from .model_common import Alert, parse_time

__all__ = ["Alert", "Contact", "Conversation", "Item", "Message", "Model", "Transfer", "local_date", "one_line",
           "parse_time"]

# An outgoing message only moves forward through these states (events and answers may arrive
# in any order: a delivery receipt can overtake the answer to the send request).
OUT_RANK = {"pending": 0, "queued": 1, "sent": 2, "failed": 3, "delivered": 4}
TRANSFER_DONE = ("done", "failed", "rejected", "cancelled")
# the core's transfer states (lib/transfer.py) -> the UI's
CORE_STATES = {"queued": "waiting", "offered": "offered", "active": "active", "paused": "paused",
               "completed": "done", "failed": "failed", "rejected": "rejected", "cancelled": "cancelled"}
PREVIEW_CHARS = 60


def local_date(ts: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(ts).date()


def one_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A message body as one short line for the contact list."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclasses.dataclass
class Contact:
    fingerprint: str
    name: str
    verified: bool = False
    blocked: bool = False
    online: bool = False
    unread: int = 0
    last_seen: Optional[float] = None
    state: str = "offline"          # link state from `p2p peers`: offline, connecting, connected
    path: Optional[str] = None      # lan, direct, relayed (when connected)
    address: Optional[str] = None
    rtt_ms: Optional[float] = None
    preview: str = ""
    preview_time: Optional[float] = None
    preview_out: bool = False


@dataclasses.dataclass
class Message:
    message_id: str
    direction: str                  # "in" or "out"
    body: str
    created: float
    state: str                      # out: pending, queued, sent, delivered, failed; in: received
    failure: Optional[str] = None
    row_id: Optional[int] = None    # the store's id, for paging (`p2p history before`)
    order: int = 0                  # arrival order, to keep equal timestamps stable

    @property
    def key(self) -> tuple[str, str]:
        return (self.direction, self.message_id)


@dataclasses.dataclass
class Transfer:
    transfer_id: str
    peer: str                       # the conversation: a contact's fingerprint, or a group's key
    file_name: str
    size: Optional[int]
    direction: str                  # "in" (offered to us) or "out"
    state: str = "offered"          # offered, waiting, active, paused, done, failed, rejected, cancelled
    done_bytes: int = 0
    rate: Optional[float] = None    # bytes per second, smoothed
    path: Optional[str] = None      # where a received file was saved
    error: Optional[str] = None
    created: float = 0.0
    order: int = 0
    paused_by: Optional[str] = None
    who: Optional[str] = None       # in a group: the member on the other side
    _last_sample: Optional[tuple[float, int]] = None

    @property
    def percent(self) -> Optional[float]:
        if not self.size:
            return 100.0 if self.state == "done" else None
        return max(0.0, min(100.0, 100.0 * self.done_bytes / self.size))

    @property
    def eta(self) -> Optional[float]:
        """Seconds left at the current rate, None when unknown."""
        if self.state != "active" or not self.size or not self.rate:
            return None
        return max(0.0, (self.size - self.done_bytes) / self.rate)

    def progress(self, done: int, size: Optional[int], now: float, rate: Optional[float] = None) -> None:
        """A progress report: the rate is the daemon's when given, else measured here (smoothed)."""
        if size:
            self.size = size
        if rate is not None:
            self.rate = float(rate)
        elif self._last_sample is not None:
            then, before = self._last_sample
            if now > then and done >= before:
                instant = (done - before) / (now - then)
                self.rate = instant if self.rate is None else 0.7 * self.rate + 0.3 * instant
        self._last_sample = (now, done)
        self.done_bytes = max(self.done_bytes, done)
        if self.state in ("offered", "waiting"):
            self.state = "active"


@dataclasses.dataclass
class Conversation:
    fingerprint: str
    messages: dict[tuple[str, str], Message] = dataclasses.field(default_factory=dict)
    loaded: bool = False            # the history was fetched at least once
    oldest_row: Optional[int] = None
    complete: bool = False          # no older messages on the daemon

    def sorted_messages(self) -> list[Message]:
        return sorted(self.messages.values(), key=lambda m: (m.created, m.order))


@dataclasses.dataclass
class Item:
    """One row of a conversation view."""

    key: tuple
    kind: str                       # day, message, transfer
    value: Any


class Model:
    def __init__(self) -> None:
        self.me: dict = {}
        self.p2p: dict = {}
        self.dht: dict = {}      # status "dht": online mode and the DHT's health
        self.contacts: dict[str, Contact] = {}
        self.conversations: dict[str, Conversation] = {}
        self.transfers: dict[str, Transfer] = {}
        self.open_chat: Optional[str] = None      # fingerprint of the conversation on screen
        self.requests: dict[str, dict] = {}       # contact requests by fingerprint
        self.connected = True                     # the API answers (False: daemon gone)
        self.groups = Groups(lambda: self.me.get("id") or "")
        self._order = 0

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # -- who I am ---------------------------------------------------------------------------
    def set_status(self, status: dict) -> None:
        identity = status.get("identity") or {}
        self.me = {
            "name": identity.get("name") or "",
            "id": identity.get("fingerprint") or "",
            "short_id": identity.get("short_id") or "",
            "public_key": identity.get("public_key") or "",
        }
        self.p2p = dict(status.get("p2p") or {})
        self.p2p["peers"] = status.get("peers")
        self.dht = dict(status.get("dht") or {})

    @property
    def mode_text(self):
        """'private', 'online · DHT 42', or a warning while online mode has no DHT node."""
        dht = self.dht
        if dht.get("mode") != "online":
            return "private" if dht else ""
        if not dht.get("running"):
            return ("header_warn", "online · DHT off" + (f": {dht['error']}" if dht.get("error") else ""))
        nodes = dht.get("nodes") or 0
        return f"online · DHT {nodes}" if nodes else ("header_warn", "online · no DHT node")

    @property
    def nat_text(self) -> str:
        """'NAT cone 203.0.113.5:4000', or 'NAT ?' while the core does not report it."""
        p2p = self.p2p
        nat = p2p.get("nat") if isinstance(p2p.get("nat"), dict) else {}
        kind = p2p.get("nat_type") or nat.get("type") or nat.get("nat_type")
        address = (p2p.get("public_address") or nat.get("public_address") or nat.get("mapped_address")
                   or nat.get("mapped") or nat.get("address"))
        if isinstance(address, (list, tuple)) and len(address) == 2:
            address = f"{address[0]}:{address[1]}"
        if not kind and not address:
            return "NAT ?"
        return " ".join(str(part) for part in ("NAT", kind or "?", address) if part)

    # -- contacts ---------------------------------------------------------------------------
    def by_name(self, name: Optional[str]) -> Optional[Contact]:
        if not name:
            return None
        for contact in self.contacts.values():
            if contact.name == name:
                return contact
        folded = name.casefold()
        matches = [c for c in self.contacts.values() if c.name.casefold() == folded]
        return matches[0] if len(matches) == 1 else None

    def _upsert_contact(self, view: dict) -> Optional[Contact]:
        fingerprint = view.get("fingerprint")
        if not fingerprint:
            return None
        contact = self.contacts.get(fingerprint)
        if contact is None:
            contact = self.contacts[fingerprint] = Contact(fingerprint, view.get("name") or fingerprint[:11])
        if view.get("name"):
            contact.name = view["name"]
        for field in ("verified", "blocked", "online"):
            if field in view and view[field] is not None:
                setattr(contact, field, bool(view[field]))
        if isinstance(view.get("unread"), int):
            contact.unread = view["unread"]
        if "last_seen" in view:
            contact.last_seen = parse_time(view.get("last_seen"), contact.last_seen)
        if not contact.online:
            contact.path = None
            if contact.state == "connected":
                contact.state = "offline"
        return contact

    def set_contacts(self, views: Iterable[dict]) -> None:
        seen = set()
        for view in views:
            contact = self._upsert_contact(view)
            if contact is not None:
                seen.add(contact.fingerprint)
        for fingerprint in list(self.contacts):
            if fingerprint not in seen:
                self._forget(fingerprint)

    def set_peers(self, peers: Iterable[dict]) -> None:
        for peer in peers:
            contact = self.contacts.get(peer.get("fingerprint") or "")
            if contact is None:
                continue
            contact.state = peer.get("state") or "offline"
            contact.online = contact.state == "connected"
            contact.path = peer.get("path") if contact.online else None
            contact.address = peer.get("address")
            contact.rtt_ms = peer.get("rtt_ms")
            contact.last_seen = parse_time(peer.get("last_seen"), contact.last_seen)

    def update_contact(self, view: Any) -> Optional[Contact]:
        """Apply a contact view from an API answer (rename, block, verify) before its event comes."""
        return self._upsert_contact(view) if isinstance(view, dict) else None

    def forget(self, fingerprint: str) -> None:
        """Drop a contact the user removed, as soon as the API says so (not waiting for the event)."""
        self._forget(fingerprint)

    def _forget(self, fingerprint: str) -> None:
        self.contacts.pop(fingerprint, None)
        self.conversations.pop(fingerprint, None)
        if self.open_chat == fingerprint:
            self.open_chat = None

    def sorted_contacts(self) -> list[Contact]:
        """Unblocked before blocked, then by name (case-insensitive): a stable, predictable list."""
        return sorted(self.contacts.values(), key=lambda c: (c.blocked, c.name.casefold(), c.name))

    def chat_keys(self) -> list[str]:
        """The contact list's order: groups first, then contacts (what Ctrl-N / Ctrl-P step through)."""
        return [g.key for g in self.groups.sorted_groups()] + [c.fingerprint for c in self.sorted_contacts()]

    def unread_of(self, key: str) -> int:
        chat = self.groups.get(key) if is_group_key(key) else self.contacts.get(key)
        return chat.unread if chat is not None else 0

    def step_chat(self, step: int) -> Optional[str]:
        """The conversation `step` places after the open one (wrapping), for Ctrl-N / Ctrl-P."""
        keys = self.chat_keys()
        if not keys:
            return None
        if self.open_chat not in keys:
            return keys[0] if step > 0 else keys[-1]
        return keys[(keys.index(self.open_chat) + step) % len(keys)]

    def next_unread(self) -> Optional[str]:
        """The next conversation after the open one with unread messages (wrapping), or None."""
        keys = self.chat_keys()
        start = keys.index(self.open_chat) + 1 if self.open_chat in keys else 0
        for i in range(len(keys)):
            key = keys[(start + i) % len(keys)]
            if self.unread_of(key) and key != self.open_chat:
                return key
        return None

    def open(self, key: str) -> bool:
        """Show this conversation (a contact's or a group's); True when it has unread messages
        to mark read."""
        chat = self.groups.get(key) if is_group_key(key) else self.contacts.get(key)
        if chat is None:
            return False
        self.open_chat = key
        if not is_group_key(key):
            self.conversation(key)
        had_unread = chat.unread > 0
        chat.unread = 0
        return had_unread

    @property
    def open_group(self) -> Optional[Group]:
        return self.groups.get(self.open_chat) if is_group_key(self.open_chat) else None

    @property
    def open_contact(self) -> Optional[Contact]:
        return self.contacts.get(self.open_chat) if self.open_chat else None

    # -- conversations ----------------------------------------------------------------------
    def conversation(self, fingerprint: str) -> Conversation:
        conv = self.conversations.get(fingerprint)
        if conv is None:
            conv = self.conversations[fingerprint] = Conversation(fingerprint)
        return conv

    def _update_preview(self, fingerprint: str) -> None:
        contact = self.contacts.get(fingerprint)
        conv = self.conversations.get(fingerprint)
        if contact is None or conv is None or not conv.messages:
            return
        last = conv.sorted_messages()[-1]
        if contact.preview_time is None or last.created >= contact.preview_time:
            contact.preview = one_line(last.body)
            contact.preview_time = last.created
            contact.preview_out = last.direction == "out"

    def set_history(self, fingerprint: str, messages: Iterable[dict], page: bool = False,
                    limit: Optional[int] = None) -> None:
        """Merge a `p2p history` answer. The daemon's copy wins, but states never go back."""
        conv = self.conversation(fingerprint)
        count = 0
        for view in messages:
            count += 1
            direction = view.get("direction") or "in"
            message_id = str(view.get("message_id") or view.get("id"))
            key = (direction, message_id)
            state = view.get("state") or ("received" if direction == "in" else "sent")
            existing = conv.messages.get(key)
            if existing is None:
                conv.messages[key] = Message(message_id, direction, view.get("body") or "",
                                             parse_time(view.get("created"), time.time()), state,
                                             view.get("failure"), view.get("id"), self._next_order())
            else:
                existing.body = view.get("body") or existing.body
                existing.created = parse_time(view.get("created"), existing.created)
                existing.row_id = view.get("id", existing.row_id)
                if direction == "out" and OUT_RANK.get(state, 0) >= OUT_RANK.get(existing.state, 0):
                    existing.state = state
                    existing.failure = view.get("failure")
            row = view.get("id")
            if isinstance(row, int) and (conv.oldest_row is None or row < conv.oldest_row):
                conv.oldest_row = row
        if page or not conv.loaded:
            conv.complete = limit is not None and count < limit
        conv.loaded = True
        self._update_preview(fingerprint)

    def set_preview(self, fingerprint: str, messages: list[dict]) -> None:
        """The last message of a conversation not loaded yet (for the contact list)."""
        contact = self.contacts.get(fingerprint)
        if contact is None or not messages:
            return
        last = messages[-1]
        created = parse_time(last.get("created"), 0.0)
        if contact.preview_time is None or created >= contact.preview_time:
            contact.preview = one_line(last.get("body") or "")
            contact.preview_time = created
            contact.preview_out = last.get("direction") == "out"

    def add_outgoing(self, fingerprint: str, body: str, message_id: str, now: float) -> Message:
        conv = self.conversation(fingerprint)
        message = Message(message_id, "out", body, now, "pending", order=self._next_order())
        conv.messages[message.key] = message
        self._update_preview(fingerprint)
        return message

    def outgoing_result(self, fingerprint: str, message_id: str, reply: dict) -> None:
        """The answer to `p2p send_message`: 'Message sent' or 'Message queued', or an error."""
        conv = self.conversations.get(fingerprint)
        message = conv.messages.get(("out", message_id)) if conv else None
        if message is None:
            return
        if reply.get("success"):
            state = "queued" if "queued" in str(reply.get("data") or "").lower() else "sent"
            self._advance(message, state)
        else:
            self._advance(message, "failed", reply.get("error") or "not sent")

    @staticmethod
    def _advance(message: Message, state: str, failure: Optional[str] = None) -> None:
        if OUT_RANK.get(state, 0) >= OUT_RANK.get(message.state, 0):
            message.state = state
            if failure is not None:
                message.failure = failure

    def conversation_items(self, fingerprint: str) -> list[Item]:
        """Messages and transfers in time order, with a day separator before each new local day.
        A group's messages keep the daemon's order (the DAG's); its transfers follow them."""
        transfers = sorted((t for t in self.transfers.values() if t.peer == fingerprint),
                           key=lambda t: (t.created, t.order))
        entries: list[tuple[str, Any]]
        group = self.groups.get(fingerprint) if is_group_key(fingerprint) else None
        if group is not None:
            entries = [("message", m) for m in group.sorted_messages()] + [("transfer", t) for t in transfers]
        else:
            conv = self.conversations.get(fingerprint)
            dated = [(m.created, m.order, "message", m) for m in (conv.messages.values() if conv else ())]
            dated += [(t.created, t.order, "transfer", t) for t in transfers]
            entries = [(kind, value) for _, _, kind, value in sorted(dated, key=lambda e: (e[0], e[1]))]
        items: list[Item] = []
        day = None
        days: dict[str, int] = {}    # a group's clocks may go back: a day can come twice
        for kind, value in entries:
            today = local_date(value.created)
            if today != day:
                day = today
                label = today.isoformat()
                days[label] = days.get(label, 0) + 1
                items.append(Item(("day", label) + ((days[label],) if days[label] > 1 else ()), "day", today))
            key = ("message",) + value.key if kind == "message" else ("transfer", value.transfer_id)
            items.append(Item(key, kind, value))
        return items

    # -- transfers --------------------------------------------------------------------------
    def add_transfer(self, transfer_id: str, fingerprint: str, file_name: str, size: Optional[int],
                     direction: str, now: float, state: str = "offered") -> Transfer:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            transfer = self.transfers[transfer_id] = Transfer(
                transfer_id, fingerprint, file_name, size, direction, state, created=now,
                order=self._next_order())
        return transfer

    def pending_offers(self, fingerprint: Optional[str] = None) -> list[Transfer]:
        offers = [t for t in self.transfers.values() if t.direction == "in" and t.state == "offered"]
        if fingerprint is not None:
            offers = [t for t in offers if t.peer == fingerprint]
        return sorted(offers, key=lambda t: t.order)

    def find_transfer(self, text: str) -> Optional[Transfer]:
        """A transfer by its full ID or an unambiguous prefix of it."""
        if text in self.transfers:
            return self.transfers[text]
        matches = [t for tid, t in self.transfers.items() if tid.startswith(text)]
        return matches[0] if len(matches) == 1 else None

    # -- events -----------------------------------------------------------------------------
    def apply_event(self, event: dict, now: Optional[float] = None) -> list[Alert]:
        """Apply one event object {event, data, timestamp}; returns what needs more than a redraw."""
        now = time.time() if now is None else now
        name = event.get("event") or ""
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if name.startswith("group_"):
            return self.groups.apply_event(name, data, now, self.open_chat)
        handler = getattr(self, "_on_" + name, None)
        if handler is None:
            return []
        return handler(data, now) or []

    def _on_contact_added(self, data: dict, now: float) -> list[Alert]:
        contact = self._upsert_contact(data)
        if contact is not None:
            self.requests.pop(contact.fingerprint, None)
        return []

    def _on_contact_updated(self, data: dict, now: float) -> list[Alert]:
        contact = self._upsert_contact(data)
        if contact is not None and contact.fingerprint == self.open_chat and contact.unread:
            return [Alert("mark_read", {"fingerprint": contact.fingerprint})]
        return []

    def _on_contact_removed(self, data: dict, now: float) -> list[Alert]:
        contact = self.contacts.get(data.get("fingerprint") or "") or self.by_name(data.get("name"))
        if contact is not None:
            self._forget(contact.fingerprint)
        return []

    def _on_p2p_started(self, data: dict, now: float) -> list[Alert]:
        self.p2p.update(running=True, port=data.get("port", self.p2p.get("port")))
        return [Alert("refresh", {})]

    def _on_p2p_stopped(self, data: dict, now: float) -> list[Alert]:
        self.p2p.update(running=False, port=None)
        for contact in self.contacts.values():
            contact.online, contact.state, contact.path = False, "offline", None
        return []

    def _on_peer_connected(self, data: dict, now: float) -> list[Alert]:
        contact = self.contacts.get(data.get("fingerprint") or "") or self.by_name(data.get("peer"))
        if contact is not None:
            contact.online, contact.state = True, "connected"
            contact.path = data.get("path") or contact.path or "direct"
            contact.address = data.get("address") or contact.address
            contact.last_seen = now
        return [Alert("refresh", {})]

    def _on_peer_disconnected(self, data: dict, now: float) -> list[Alert]:
        contact = self.contacts.get(data.get("fingerprint") or "") or self.by_name(data.get("peer"))
        if contact is not None:
            contact.online, contact.state, contact.path = False, "offline", None
            contact.last_seen = now
        return []

    def _on_p2p_message_received(self, data: dict, now: float) -> list[Alert]:
        contact = self.by_name(data.get("peer"))
        if contact is None:
            return [Alert("refresh", {})]   # a contact we have not heard of yet: reload the list
        conv = self.conversation(contact.fingerprint)
        message_id = str(data.get("message_id") or f"event-{self._next_order()}")
        key = ("in", message_id)
        if key in conv.messages:
            return []
        conv.messages[key] = Message(message_id, "in", data.get("message") or "",
                                     parse_time(data.get("timestamp"), now), "received",
                                     order=self._next_order())
        self._update_preview(contact.fingerprint)
        if contact.fingerprint == self.open_chat:
            return [Alert("mark_read", {"fingerprint": contact.fingerprint})]
        contact.unread += 1
        return [Alert("bell", {"peer": contact.name})]

    def _out_message(self, data: dict) -> Optional[Message]:
        contact = self.by_name(data.get("peer"))
        if contact is None:
            return None
        conv = self.conversations.get(contact.fingerprint)
        return conv.messages.get(("out", str(data.get("message_id")))) if conv else None

    def _on_message_delivered(self, data: dict, now: float) -> list[Alert]:
        message = self._out_message(data)
        if message is not None:
            self._advance(message, "delivered")
            message.failure = None
        return []

    def _on_message_failed(self, data: dict, now: float) -> list[Alert]:
        message = self._out_message(data)
        if message is not None:
            self._advance(message, "failed", data.get("reason") or "failed")
        return []

    def _on_messages_deleted(self, data: dict, now: float) -> list[Alert]:
        """One message (both directions may share its id) or the whole conversation, but for
        our messages still in flight, which the daemon keeps."""
        contact = self.by_name(data.get("peer"))
        conv = self.conversations.get(contact.fingerprint) if contact else None
        if contact is None or conv is None:
            return []
        message_id = data.get("message_id")
        for key, message in list(conv.messages.items()):
            in_flight = message.direction == "out" and message.state in ("pending", "queued", "sent")
            if (message_id is None or key[1] == message_id) and not in_flight:
                del conv.messages[key]
        self._update_preview(contact.fingerprint)
        return []

    def _on_contact_request(self, data: dict, now: float) -> list[Alert]:
        fingerprint = data.get("fingerprint")
        if not fingerprint or fingerprint in self.contacts or fingerprint in self.requests:
            return []
        self.requests[fingerprint] = dict(data)
        return [Alert("contact_request", dict(data))]

    def _on_key_mismatch(self, data: dict, now: float) -> list[Alert]:
        return [Alert("key_mismatch", dict(data))]

    # -- file transfer events (contract.TransferRef and the shapes built on it) -------------
    def _transfer_for(self, data: dict, now: float, state: str = "active") -> Optional[Transfer]:
        """The transfer an event names; one started elsewhere (chatp2pctl) is added on the fly."""
        transfer_id = str(data.get("transfer_id") or "")
        transfer = self.transfers.get(transfer_id)
        if transfer is None and transfer_id:
            chat = self._transfer_chat(data)
            if chat is None:
                return None
            transfer = self.add_transfer(transfer_id, chat, data.get("file_name") or "?",
                                         _int_or_none(data.get("size")), data.get("direction") or "in", now, state)
            transfer.who = data.get("peer") if is_group_key(chat) else None
        return transfer

    def _transfer_chat(self, data: dict) -> Optional[str]:
        """The conversation a transfer belongs to: its group (a group file, §13.4), else the contact."""
        group = self.groups.get(data.get("group")) if isinstance(data.get("group"), str) else None
        if group is not None:
            return group.key
        contact = self.by_name(data.get("peer"))
        return contact.fingerprint if contact is not None else None

    def _on_file_offer(self, data: dict, now: float) -> list[Alert]:
        """An offer from a contact, or from a member for a group (`group` set): it shows in
        that conversation, with the same buttons."""
        chat_key = self._transfer_chat(data)
        transfer_id = str(data.get("transfer_id") or "")
        if chat_key is None or not transfer_id or transfer_id in self.transfers:
            return []
        transfer = self.add_transfer(transfer_id, chat_key, data.get("file_name") or "?",
                                     _int_or_none(data.get("size")), "in", now)
        chat = self.groups.get(chat_key) if is_group_key(chat_key) else self.contacts.get(chat_key)
        if is_group_key(chat_key):
            transfer.who = data.get("peer")
        if chat is not None and chat_key != self.open_chat:
            chat.unread += 1
            return [Alert("bell", {"peer": chat.name})]
        return []

    def _on_file_transfer_started(self, data: dict, now: float) -> list[Alert]:
        transfer = self._transfer_for(data, now)
        if transfer is not None and transfer.state not in TRANSFER_DONE:
            transfer.state = "active"
        return []

    _on_file_transfer_resumed = _on_file_transfer_started

    def _on_file_transfer_paused(self, data: dict, now: float) -> list[Alert]:
        transfer = self._transfer_for(data, now, "paused")
        if transfer is not None and transfer.state not in TRANSFER_DONE:
            transfer.state = "paused"
            transfer.paused_by = data.get("by")
            transfer.rate = None
        return []

    def _on_file_transfer_progress(self, data: dict, now: float) -> list[Alert]:
        transfer = self._transfer_for(data, now)
        if transfer is None or transfer.state in TRANSFER_DONE:
            return []
        done = _int_or_none(data.get("bytes")) or 0
        size = _int_or_none(data.get("size"))
        rate = data.get("rate") if isinstance(data.get("rate"), (int, float)) and data.get("rate") else None
        transfer.progress(done, size, now, rate)
        return []

    def _on_file_received(self, data: dict, now: float) -> list[Alert]:
        transfer = self._transfer_for(data, now)
        if transfer is not None:
            transfer.state = "done"
            transfer.path = data.get("path") or transfer.path
            transfer.rate = None
            if transfer.size:
                transfer.done_bytes = transfer.size
        return []

    _on_file_transfer_completed = _on_file_received

    def _on_file_transfer_failed(self, data: dict, now: float) -> list[Alert]:
        transfer = self._transfer_for(data, now, "failed")
        if transfer is not None:
            reason = str(data.get("reason") or "failed")
            lowered = reason.lower()
            transfer.state = ("rejected" if lowered.startswith(("rejected", "offer refused")) else
                              "cancelled" if lowered.startswith("cancelled") else "failed")
            transfer.error = reason
            transfer.rate = None
        return []

    def merge_transfers(self, views: Iterable[dict], now: float) -> None:
        """A `p2p transfers` answer: the daemon's list of transfers, current and recent."""
        for view in views:
            transfer = self._transfer_for(view, now, "active")
            if transfer is None:
                continue
            transfer.state = CORE_STATES.get(str(view.get("state")), transfer.state)
            if transfer.direction == "out" and transfer.state == "offered":
                transfer.state = "waiting"
            transfer.size = _int_or_none(view.get("size")) or transfer.size
            transfer.done_bytes = max(transfer.done_bytes, _int_or_none(view.get("bytes")) or 0)
            if isinstance(view.get("rate"), (int, float)) and transfer.state == "active":
                transfer.rate = float(view["rate"]) or None
            transfer.path = view.get("path") or transfer.path
            transfer.error = view.get("error") or transfer.error


def _int_or_none(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None

