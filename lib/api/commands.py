"""Every API action, declared in one table: command, action, data schema, handler.

Handlers only translate: request data -> a use case of the node (services/) -> the answer's
JSON. They raise no errors of their own: the command table answers every
`errors.ChatP2PError` a use case raises with its text. The seed protocol's actions keep their
names and shapes; extensions are marked as such in help.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..crypto import identity as ident, sealed
from ..node import Node
from ..store import Contact, Message
from ..util import iso_utc
from . import actions
from .table import ApiError, CommandTable, Deferred, Handler, Reply, Subscription
from ..contract import EVENTS



# -- status ---------------------------------------------------------------------------------
def status(node: Node, data: dict) -> dict:
    return node.status()


# -- contacts -------------------------------------------------------------------------------
def contacts_list(node: Node, data: dict) -> list:
    return node.contacts.list()


def contacts_add(node: Node, data: dict) -> Any:
    node.contacts.add(data["peer"], data["public_key"])
    return "Contact added"


def contacts_remove(node: Node, data: dict) -> Any:
    node.contacts.remove(data["peer"])
    return "Contact removed"


def contacts_rename(node: Node, data: dict) -> Any:
    return node.contacts.rename(data["peer"], data["new_name"])


def contacts_block(node: Node, data: dict) -> Any:
    return node.contacts.block(data["peer"])


def contacts_unblock(node: Node, data: dict) -> Any:
    return node.contacts.unblock(data["peer"])


def contacts_show(node: Node, data: dict) -> Any:
    return node.contacts.view(node.contacts.get(data["peer"]))


def contacts_verify(node: Node, data: dict) -> Any:
    return node.contacts.set_verified(data["peer"], data["verified"])


def contacts_negotiate_keys(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    p2p = node.p2p
    link = p2p.connector.negotiate(contact, data["timeout"])
    contact = node.store.contacts.get_by_id(contact.id)
    session = link.session
    view = p2p.network.view(link)
    return {
        "peer": contact.name,
        "fingerprint": ident.format_id(contact.fingerprint),
        "safety_number": ident.safety_number(node.identity.fingerprint, contact.fingerprint),
        "verified": contact.verified,
        "suite": session.keys.suite.name.lower() if session else None,
        "key_exchange": "X-Wing (ML-KEM-768+X25519), ephemeral + static",
        "signatures": "ML-DSA-65+Ed25519",
        "role": session.keys.role.value if session else None,
        "address": view["address"],
        "path": link.path,
        "rtt_ms": view["rtt_ms"],
    }


# -- p2p ------------------------------------------------------------------------------------
def p2p_start(node: Node, data: dict) -> Any:
    node.restart_p2p(stun_urls=data["stun_urls"], rendezvous_servers=data["rendezvous"],
                     turn_servers=data["turn_servers"], online=data["online"])
    return "P2P network started"


def p2p_stop(node: Node, data: dict) -> Any:
    node.stop_p2p()
    return "P2P network stopped"


def p2p_peers(node: Node, data: dict) -> list:
    p2p = node.running_p2p
    peers = []
    for contact in node.store.contacts.all():
        link = p2p.network.links.get(contact.fingerprint) if p2p is not None else None
        view = p2p.network.view(link) if p2p is not None and link is not None else {
            "name": contact.name, "fingerprint": ident.format_id(contact.fingerprint), "state": "offline",
            "path": None, "address": None, "rtt_ms": None}
        view["name"] = contact.name
        view.pop("stranger", None)
        view["last_seen"] = iso_utc(contact.last_seen) if contact.last_seen else None
        if link and link.connected:
            view["last_seen"] = iso_utc(link.last_seen_wall or contact.last_seen or 0)
        view["blocked"] = contact.blocked
        peers.append(view)
    return peers


def p2p_connect(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    p2p = node.p2p
    link = p2p.connector.connect(contact, data["address"])
    return {"peer": contact.name, "state": link.state.value, "address": p2p.network.view(link)["address"]}


def p2p_send_message(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    p2p = node.p2p
    message_id = data["message_id"]
    pending = p2p.send_message(contact, data["message"], message_id)
    # Answered when the group commit that stores it is done (no greenlet waits meanwhile).
    return Deferred(pending, lambda done: _message_reply(*p2p.message_stored(contact, message_id, done)))


def _message_reply(message: Message, sent: bool) -> Reply:
    return Reply("Message sent" if sent else "Message queued", {"message_id": message.message_id})


def p2p_history(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    messages = node.store.messages.history(contact.id, data["limit"], data["before"])
    return [dict(m.to_dict(), peer=contact.name) for m in messages]


def p2p_search(node: Node, data: dict) -> Any:
    contact_id = node.contacts.get(data["peer"]).id if data["peer"] else None
    names = {contact.id: contact.name for contact in node.store.contacts.all()}
    messages = node.store.messages.search(data["text"], contact_id, data["limit"])
    return [dict(m.to_dict(), peer=names.get(m.contact_id, "")) for m in messages]


def p2p_delete_message(node: Node, data: dict) -> Any:
    if (data["message_id"] is None) == (not data["all"]):
        raise ApiError("Give either message_id (one message) or all=true (the whole conversation)")
    contact, deleted, kept = node.contacts.delete_messages(data["peer"], None if data["all"] else data["message_id"])
    return {"peer": contact.name, "deleted": deleted, "kept": kept}


def p2p_mark_read(node: Node, data: dict) -> Any:
    contact, count = node.contacts.mark_read(data["peer"])
    return {"peer": contact.name, "marked": count}


# -- files ----------------------------------------------------------------------------------


def p2p_send_file(node: Node, data: dict) -> Any:
    contact: Contact = node.contacts.get(data["peer"])
    transfer, offered = node.p2p.send_file(contact, data["file_path"], data["chunk_size"], data["transfer_id"])
    return Reply("File transfer started" if offered else "File transfer queued",
                 {"transfer_id": transfer.transfer_id})


def _transfer_action(name: str):
    def handler(node: Node, data: dict) -> Any:
        transfers = node.p2p.transfers
        if name == "accept":
            transfer = transfers.accept(data["transfer_id"], data["save_as"])
        else:
            transfer = getattr(transfers, name)(data["transfer_id"])
        return transfer.view(time.monotonic())
    handler.__name__ = f"p2p_{name}_transfer"
    return handler


def p2p_transfers(node: Node, data: dict) -> Any:
    return node.p2p.transfers.list()


# -- group ----------------------------------------------------------------------------------
# The table checked types and lengths in characters; the protocol counts some in UTF-8 bytes
# (PROTOCOL §13.2, §13.4). Every check runs before the P2P network is asked for, so a bad
# request gets its own error even while the network is stopped.
MAX_GROUP_NAME_BYTES = 64
MAX_GROUP_TEXT_BYTES = 65536
MAX_GROUP_MESSAGE_ID_BYTES = 255


def _utf8_at_most(text: str, limit: int, field: str) -> str:
    if len(text.encode("utf-8")) > limit:
        raise ApiError(f"Field '{field}' is too long (at most {limit} bytes in UTF-8)")
    return text


def _group_name(data: dict) -> str:
    name = data["name"]
    if not name.strip():
        raise ApiError("Field 'name' is blank")
    return _utf8_at_most(name, MAX_GROUP_NAME_BYTES, "name")


def _members(node: Node, names: list[str]) -> list[Contact]:
    """The contacts to put in a new group, each given once, by name or ID."""
    contacts: list[Contact] = []
    for name in names:
        contact = node.contacts.get_by_name_or_id(name)
        if any(c.id == contact.id for c in contacts):
            raise ApiError(f"Field 'members' names {contact.name} twice")
        contacts.append(contact)
    return contacts


def group_create(node: Node, data: dict) -> Any:
    name = _group_name(data)
    members = _members(node, data["members"])
    return node.p2p.groups.create(name, members)


def group_list(node: Node, data: dict) -> Any:
    return node.p2p.groups.list()


def group_info(node: Node, data: dict) -> Any:
    return node.p2p.groups.info(data["group"])


def group_invite(node: Node, data: dict) -> Any:
    contact = node.contacts.get_by_name_or_id(data["peer"])
    return node.p2p.groups.invite(data["group"], contact)


def group_remove(node: Node, data: dict) -> Any:
    return node.p2p.groups.remove(data["group"], data["peer"])


def group_promote(node: Node, data: dict) -> Any:
    return node.p2p.groups.promote(data["group"], data["peer"])


def group_leave(node: Node, data: dict) -> Any:
    return node.p2p.groups.leave(data["group"])


def group_rename(node: Node, data: dict) -> Any:
    name = _group_name(data)
    return node.p2p.groups.rename(data["group"], name)


def group_send_message(node: Node, data: dict) -> Any:
    body = _utf8_at_most(data["message"], MAX_GROUP_TEXT_BYTES, "message")
    message_id = data["message_id"]
    if message_id is not None:
        _utf8_at_most(message_id, MAX_GROUP_MESSAGE_ID_BYTES, "message_id")
    answer = node.p2p.groups.submit_message(data["group"], body, message_id)
    return Reply(answer, {"message_id": answer["message_id"]})


def group_history(node: Node, data: dict) -> Any:
    before = data["before"]
    if before is not None:
        before = before.strip().lower()
        if len(before) != 64 or not all(c in "0123456789abcdef" for c in before):
            raise ApiError("Field 'before' must be a message hash (64 hex digits, from history)")
    return node.p2p.groups.history(data["group"], data["limit"], before)


def group_mark_read(node: Node, data: dict) -> Any:
    return node.p2p.groups.mark_read(data["group"])


def group_send_file(node: Node, data: dict) -> Any:
    return node.p2p.groups.send_file(data["group"], data["file_path"])


# -- events ---------------------------------------------------------------------------------
def events_subscribe(node: Node, data: dict) -> Subscription:
    names = frozenset(data["events"] or ())
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise ApiError(f"Unknown event {unknown[0]!r} (events: {', '.join(sorted(EVENTS))})")
    return Subscription(node.events.subscribe, names)


# -- crypto ---------------------------------------------------------------------------------
def crypto_generate_keypair(node: Node, data: dict) -> dict:
    return ident.generate_keypair_export(node.backend)


def crypto_encrypt(node: Node, data: dict) -> dict:
    return {"encrypted_data": sealed.seal(data["public_key"], data["message"].encode("utf-8"), aead=data["aead"])}


def crypto_decrypt(node: Node, data: dict) -> dict:
    if data["private_key"]:
        seed = ident.private_key_from_base64(data["private_key"]).kem_seed
    else:
        seed = node.identity.kem_seed
    return {"message": sealed.open_sealed_text(data["encrypted_data"], seed)}


def crypto_rotate_identity(node: Node, data: dict) -> dict:
    """New identity keys; contacts follow because the change is signed by the old key."""
    old, new = node.rotate_identity()
    return {"fingerprint": new.id, "previous_fingerprint": old.id, "public_key": new.bundle.to_base64()}


HANDLERS: Mapping[tuple[str, Optional[str]], Handler] = MappingProxyType({
    ("status", None): status,
    ("contacts", "list"): contacts_list,
    ("contacts", "add"): contacts_add,
    ("contacts", "remove"): contacts_remove,
    ("contacts", "rename"): contacts_rename,
    ("contacts", "block"): contacts_block,
    ("contacts", "unblock"): contacts_unblock,
    ("contacts", "show"): contacts_show,
    ("contacts", "negotiate_keys"): contacts_negotiate_keys,
    ("contacts", "verify"): contacts_verify,
    ("p2p", "start"): p2p_start,
    ("p2p", "stop"): p2p_stop,
    ("p2p", "peers"): p2p_peers,
    ("p2p", "connect"): p2p_connect,
    ("p2p", "send_message"): p2p_send_message,
    ("p2p", "history"): p2p_history,
    ("p2p", "mark_read"): p2p_mark_read,
    ("p2p", "search"): p2p_search,
    ("p2p", "delete_message"): p2p_delete_message,
    ("p2p", "send_file"): p2p_send_file,
    ("p2p", "accept_file"): _transfer_action("accept"),
    ("p2p", "reject_file"): _transfer_action("reject"),
    ("p2p", "transfers"): p2p_transfers,
    ("p2p", "cancel_transfer"): _transfer_action("cancel"),
    ("p2p", "pause_transfer"): _transfer_action("pause"),
    ("p2p", "resume_transfer"): _transfer_action("resume"),
    ("group", "create"): group_create,
    ("group", "list"): group_list,
    ("group", "info"): group_info,
    ("group", "invite"): group_invite,
    ("group", "remove"): group_remove,
    ("group", "promote"): group_promote,
    ("group", "leave"): group_leave,
    ("group", "rename"): group_rename,
    ("group", "send_message"): group_send_message,
    ("group", "history"): group_history,
    ("group", "mark_read"): group_mark_read,
    ("group", "send_file"): group_send_file,
    ("events", "subscribe"): events_subscribe,
    ("crypto", "generate_keypair"): crypto_generate_keypair,
    ("crypto", "encrypt"): crypto_encrypt,
    ("crypto", "decrypt"): crypto_decrypt,
    ("crypto", "rotate_identity"): crypto_rotate_identity,
})


def build_table() -> CommandTable:
    """The whole API, every row bound to its handler (the daemon's table)."""
    return actions.build_table(HANDLERS)
