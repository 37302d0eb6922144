"""Every API action, declared in one table: command, action, data schema, handler.

Handlers are thin: they translate between the API's JSON and the node's objects. The seed
protocol's actions keep their names and shapes; extensions are marked as such in help.
"""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Any, Literal

import gevent

from ..crypto import identity as ident, sealed
from ..net import nat
from . import answers
from .table import ApiError, CommandTable, Deferred, Field, Reply
from ..contract import ContactView, MessageView, PeerView, TransferView
from ..services.messaging import MessageError
from ..services.transfer import TransferError
from ..node import Node
from ..net.peers import Link, LinkState, parse_address
from ..util import iso_utc

NAME = Field("peer", "str", max_len=64)
NAME_OR_ID = Field("peer", "str", max_len=128)   # an ID is 69 characters with its dashes
MAX_MESSAGE_CHARS = 64 * 1024


# -- status ---------------------------------------------------------------------------------
def status(node: Node, data: dict) -> dict:
    return node.status()


# -- contacts -------------------------------------------------------------------------------
def contacts_list(node: Node, data: dict) -> list:
    return node.contacts.list()


def contacts_add(node: Node, data: dict) -> Any:
    node.contacts.add(data["peer"], data["public_key"])
    contact = node.contacts.get(data["peer"])
    if node.messenger is not None:
        node.messenger.release_held(contact)  # a stranger we talked with: its messages now count
    return "Contact added"


def _disconnect(node: Node, fingerprint: bytes) -> None:
    if node.network is not None:
        node.network.forget(fingerprint)
    if node.messenger is not None:
        node.messenger.contact_removed(fingerprint)
    if node.transfers is not None:
        node.transfers.contact_removed(fingerprint)


def contacts_remove(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    node.contacts.remove(data["peer"])
    _disconnect(node, contact.fingerprint)
    return "Contact removed"


def contacts_rename(node: Node, data: dict) -> Any:
    view = node.contacts.rename(data["peer"], data["new_name"])
    if node.network is not None:
        contact = node.contacts.get(data["new_name"])
        link = node.network.links.get(contact.fingerprint)
        if link is not None:
            link.name = contact.name
    return view


def contacts_block(node: Node, data: dict) -> Any:
    """Block a contact by name, or a stranger by its ID (it becomes a blocked contact)."""
    name = data["peer"]
    try:
        contact = node.store.contacts.get(name)
    except Exception:
        if not ident.looks_like_id(name):
            raise ApiError(f"Peer not found: {name}") from None
        try:
            fingerprint = ident.parse_id(name)
        except ident.IdentityError as exc:
            raise ApiError(str(exc)) from None
        contact = node.store.contacts.find_by_fingerprint(fingerprint)
        if contact is None:
            node.contacts.add("blocked-" + ident.short_id(fingerprint), name)
            contact = node.store.contacts.find_by_fingerprint(fingerprint)
    view = node.contacts.set_blocked(contact.name, True)
    node.store.held.drop(contact.fingerprint)
    _disconnect(node, contact.fingerprint)
    return view


def contacts_unblock(node: Node, data: dict) -> Any:
    return node.contacts.set_blocked(data["peer"], False)


def contacts_show(node: Node, data: dict) -> Any:
    return node.contacts.view(node.contacts.get(data["peer"]))


def contacts_verify(node: Node, data: dict) -> Any:
    return node.contacts.set_verified(data["peer"], data["verified"])


def safety_number(own: bytes, other: bytes) -> str:
    """60 digits both users can compare; depends only on the two identities (order-free)."""
    low, high = sorted((own, other))
    digest = hashlib.sha512(b"chatp2p v1 safety number" + low + high).digest()
    return " ".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100000:05d}" for i in range(0, 60, 5))


def contacts_negotiate_keys(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    link = _connect(node, contact, None)
    if not link.connected:
        with gevent.Timeout(data["timeout"], False):
            while not link.connected and (link.state.value == "connecting"):
                link.established.wait()
    if not link.connected:
        reason = link.failure or "no answer"
        if reason == "key_mismatch":
            raise ApiError(f"Key mismatch: the node answering for {contact.name} is not its ID (see key_mismatch)")
        raise ApiError(f"Could not reach {contact.name}: {reason}")
    contact = node.store.contacts.get_by_id(contact.id)
    session = link.session
    return {
        "peer": contact.name,
        "fingerprint": ident.format_id(contact.fingerprint),
        "safety_number": safety_number(node.identity.fingerprint, contact.fingerprint),
        "verified": contact.verified,
        "suite": session.keys.suite.name.lower() if session else None,
        "key_exchange": "X-Wing (ML-KEM-768+X25519), ephemeral + static",
        "signatures": "ML-DSA-65+Ed25519",
        "role": session.keys.role.value if session else None,
        "address": node.network.view(link)["address"],
        "path": link.path,
        "rtt_ms": node.network.view(link)["rtt_ms"],
    }


# -- p2p ------------------------------------------------------------------------------------
def _require_p2p(node: Node) -> None:
    if not node.p2p_running:
        raise ApiError("The P2P network is stopped: start it with p2p start")


def _resolve(text: str) -> tuple[str, int]:
    address = parse_address(text)
    if address is None:
        raise ApiError(f"Field 'address' must be host:port, got {text!r}")
    try:
        infos = socket.getaddrinfo(address[0], address[1], socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ApiError(f"Cannot resolve {address[0]}: {exc}") from None
    return infos[0][4][0], infos[0][4][1]


def _connect(node: Node, contact, address: str | None) -> Link:
    _require_p2p(node)
    if contact.blocked:
        raise ApiError(f"{contact.name} is blocked")
    candidates = [_resolve(address)] if address else []
    candidates += [a for a in (parse_address(t) for t in contact.addresses) if a]
    link = node.network.link_for_contact(contact)
    candidates += [a for a in link.candidates if a not in candidates]
    if link.connected:
        return link
    # In parallel: the known addresses, and introductions through the rendezvous servers
    # (the LAN announces itself; the relay is one of the candidates an introduction brings).
    asked = node.nat.reach(contact) if node.nat is not None and not address else 0
    if not candidates and not asked:
        raise ApiError(f"No known address for {contact.name}, and no rendezvous server to ask: "
                       "use p2p connect with an address")
    if not candidates:
        if link.state == LinkState.OFFLINE:
            link.state = LinkState.CONNECTING  # until the introductions answer or time out
        return link
    return node.network.connect(contact, candidates)


def p2p_start(node: Node, data: dict) -> Any:
    changes = {}
    if data["stun_urls"] is not None:
        changes["stun_urls"] = data["stun_urls"]
    if data["rendezvous"] is not None:
        changes["rendezvous_servers"] = data["rendezvous"]
    try:
        turn_servers = nat.turn_servers_from(data["turn_servers"]) if data["turn_servers"] is not None else None
        nat.check_settings(nat.NatSettings(tuple(changes.get("stun_urls", node.config.stun_urls)),
                                           tuple(changes.get("rendezvous_servers", node.config.rendezvous_servers))))
    except nat.NatConfigError as exc:
        raise ApiError(str(exc)) from None
    if turn_servers is not None:
        node.turn_override = turn_servers
    try:
        node.restart_p2p(**changes)
    except OSError as exc:
        raise ApiError(f"Cannot start the P2P network: {exc.strerror or exc}") from None
    return "P2P network started"


def p2p_stop(node: Node, data: dict) -> Any:
    node.stop_p2p()
    return "P2P network stopped"


def p2p_peers(node: Node, data: dict) -> list:
    peers = []
    for contact in node.store.contacts.all():
        link = node.network.links.get(contact.fingerprint) if node.network else None
        view = node.network.view(link) if link else {
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
    link = _connect(node, contact, data["address"])
    return {"peer": contact.name, "state": link.state.value,
            "address": node.network.view(link)["address"]}


def p2p_send_message(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    if node.messenger is None:
        raise ApiError("The P2P network is stopped: start it with p2p start")
    try:
        pending = node.messenger.submit(contact, data["message"], data["message_id"])
    except MessageError as exc:
        raise ApiError(str(exc)) from None
    # Answered when the group commit that stores it is done (no greenlet waits meanwhile).
    return Deferred(pending, lambda done: _message_stored(node, contact, data["message_id"], done))


def _message_stored(node: Node, contact, message_id: str | None, done) -> Reply:
    try:
        message, sent = done.get()
    except MessageError as exc:
        raise ApiError(str(exc)) from None
    except Exception as exc:
        if "already" in str(exc).lower():
            raise ApiError(f"message_id {message_id!r} was already used for {contact.name}") from None
        raise
    if not sent:
        try:
            _connect(node, contact, None)
        except ApiError:
            pass  # no address yet: it stays queued until the contact shows up
    return Reply("Message sent" if sent else "Message queued", {"message_id": message.message_id})


def p2p_history(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    messages = node.store.messages.history(contact.id, data["limit"], data["before"])
    return [dict(m.to_dict(), peer=contact.name) for m in messages]


def p2p_mark_read(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    count = node.store.messages.mark_read(contact.id)
    node.publish("contact_updated", node.contacts.view(node.store.contacts.get_by_id(contact.id)))
    return {"peer": contact.name, "marked": count}


# -- files ----------------------------------------------------------------------------------
TRANSFER_ID = Field("transfer_id", "str", max_len=128)


def _transfers(node: Node):
    if node.transfers is None:
        raise ApiError("The P2P network is stopped: start it with p2p start")
    return node.transfers


def p2p_send_file(node: Node, data: dict) -> Any:
    contact = node.contacts.get(data["peer"])
    try:
        transfer, offered = _transfers(node).send_file(contact, data["file_path"], data["chunk_size"],
                                                       data["transfer_id"])
    except TransferError as exc:
        raise ApiError(str(exc)) from None
    if not offered:
        try:
            _connect(node, contact, None)
        except ApiError:
            pass  # no address yet: the offer waits until the contact shows up
    return Reply("File transfer started" if offered else "File transfer queued",
                 {"transfer_id": transfer.transfer_id})


def _transfer_action(name: str):
    def handler(node: Node, data: dict) -> Any:
        transfers = _transfers(node)
        try:
            if name == "accept":
                transfer = transfers.accept(data["transfer_id"], data["save_as"])
            else:
                transfer = getattr(transfers, name)(data["transfer_id"])
        except TransferError as exc:
            raise ApiError(str(exc)) from None
        return transfer.view(time.monotonic())
    handler.__name__ = f"p2p_{name}_transfer"
    return handler


def p2p_transfers(node: Node, data: dict) -> Any:
    return _transfers(node).list()


# -- crypto ---------------------------------------------------------------------------------
def crypto_generate_keypair(node: Node, data: dict) -> dict:
    return ident.generate_keypair_export(node.backend)


def crypto_encrypt(node: Node, data: dict) -> dict:
    try:
        envelope = sealed.seal(data["public_key"], data["message"].encode("utf-8"), aead=data["aead"])
    except (sealed.SealedError, ident.IdentityError) as exc:
        raise ApiError(str(exc)) from None
    return {"encrypted_data": envelope}


def crypto_decrypt(node: Node, data: dict) -> dict:
    try:
        if data["private_key"]:
            seed = ident.private_key_from_base64(data["private_key"]).kem_seed
        else:
            seed = node.identity.kem_seed
        plaintext = sealed.open_sealed(data["encrypted_data"], seed)
    except (sealed.SealedError, ident.IdentityError) as exc:
        raise ApiError(str(exc)) from None
    try:
        return {"message": plaintext.decode("utf-8")}
    except UnicodeDecodeError:
        raise ApiError("Decrypted data is not UTF-8 text") from None


def crypto_rotate_identity(node: Node, data: dict) -> dict:
    """New identity keys; contacts follow because the change is signed by the old key."""
    try:
        old, new = node.rotate_identity()
    except ident.IdentityError as exc:
        raise ApiError(str(exc)) from None
    return {"fingerprint": new.id, "previous_fingerprint": old.id, "public_key": new.bundle.to_base64()}


def build_table() -> CommandTable:
    """The whole API. Add a row here to add an action; the server needs no change.

    `blocking=False` marks handlers that never wait on the network or the disk (the server
    runs them inline); every other one runs in a greenlet of its own, concurrently."""
    table = CommandTable()
    table.add("status", None, status, help="server state (any action, null or none)", blocking=False,
              answer=answers.Status)

    table.add("contacts", "list", contacts_list, help="all contacts with their state", blocking=False,
              answer=list[ContactView])
    table.add("contacts", "add", contacts_add,
              (NAME, Field("public_key", "str", max_len=16384)),
              help="add a contact by ID or public key bundle", blocking=False,
              answer=Literal["Contact added"])
    table.add("contacts", "remove", contacts_remove, (NAME,), help="remove a contact and its history", blocking=False,
              answer=Literal["Contact removed"])
    table.add("contacts", "rename", contacts_rename, (NAME, Field("new_name", "str", max_len=64)),
              help="extension: change a contact's local name", blocking=False,
              answer=ContactView)
    table.add("contacts", "block", contacts_block, (NAME_OR_ID,),
              help="extension: drop and silence a contact, or a stranger given by its ID", blocking=False,
              answer=ContactView)
    table.add("contacts", "unblock", contacts_unblock, (NAME,), help="extension: undo block", blocking=False,
              answer=ContactView)
    table.add("contacts", "show", contacts_show, (NAME,), help="extension: one contact", blocking=False,
              answer=ContactView)

    table.add("contacts", "negotiate_keys", contacts_negotiate_keys,
              (NAME, Field("timeout", "int", required=False, default=10, minimum=1, maximum=120)),
              help="run the handshake now (connecting if needed); session details and safety number",
              answer=answers.KeyNegotiation)
    table.add("contacts", "verify", contacts_verify,
              (NAME, Field("verified", "bool", required=False, default=True)),
              help="extension: mark a contact verified (after comparing safety numbers)", blocking=False,
              answer=ContactView)

    table.add("p2p", "start", p2p_start, (Field("stun_urls", "list", required=False, item_kind="str", max_len=16),
                                          Field("rendezvous", "list", required=False, item_kind="str", max_len=16),
                                          Field("turn_servers", "list", required=False, max_len=8)),
              help="start (or restart) the P2P network",
              answer=Literal["P2P network started"])
    table.add("p2p", "stop", p2p_stop, help="stop the P2P network",
              answer=Literal["P2P network stopped"])
    table.add("p2p", "peers", p2p_peers, help="every contact with its connection state", blocking=False,
              answer=list[PeerView])
    table.add("p2p", "connect", p2p_connect,
              (NAME, Field("address", "str", required=False, max_len=300)),
              help="extension: reach a contact (at host:port, or its known addresses)",
              answer=answers.ConnectStarted)
    table.add("p2p", "send_message", p2p_send_message,
              (NAME, Field("message", "str", max_len=MAX_MESSAGE_CHARS),
               Field("message_id", "str", required=False, max_len=128)),
              help="send (or queue) a chat message",
              blocking=False,
              answer=answers.MESSAGE_SENT)  # answered after the group commit (messaging.py), via a Deferred
    table.add("p2p", "history", p2p_history,
              (NAME, Field("limit", "int", required=False, default=50, minimum=1, maximum=1000),
               Field("before", "int", required=False, minimum=1)),
              help="extension: stored messages, newest page, oldest first", blocking=False,
              answer=list[MessageView])
    table.add("p2p", "mark_read", p2p_mark_read, (NAME,), help="extension: mark a conversation read", blocking=False,
              answer=answers.MarkedRead)
    table.add("p2p", "send_file", p2p_send_file,
              (NAME, Field("file_path", "str", max_len=4096),
               Field("chunk_size", "int", required=False, minimum=1, maximum=1 << 31),
               Field("transfer_id", "str", required=False, max_len=128)),
              help="offer a file to a contact (queued while it is offline)",
              answer=answers.FILE_SENT)
    table.add("p2p", "accept_file", _transfer_action("accept"),
              (TRANSFER_ID, Field("save_as", "str", required=False, max_len=255)),
              help="extension: accept a file offer (save_as: a bare file name in the downloads dir)",
              answer=TransferView)
    table.add("p2p", "reject_file", _transfer_action("reject"), (TRANSFER_ID,),
              help="extension: refuse a file offer",
              answer=TransferView)
    table.add("p2p", "transfers", p2p_transfers, help="extension: file transfers with state, bytes, rate, eta", blocking=False,
              answer=list[TransferView])
    table.add("p2p", "cancel_transfer", _transfer_action("cancel"), (TRANSFER_ID,),
              help="extension: stop a transfer for good (the partial file is deleted)",
              answer=TransferView)
    table.add("p2p", "pause_transfer", _transfer_action("pause"), (TRANSFER_ID,),
              help="extension: pause a transfer (either side)",
              answer=TransferView)
    table.add("p2p", "resume_transfer", _transfer_action("resume"), (TRANSFER_ID,),
              help="extension: resume a paused (or failed) transfer from what was received",
              answer=TransferView)

    table.add("crypto", "generate_keypair", crypto_generate_keypair,
              help="a fresh key pair (never the node's identity)", blocking=False,
              answer=answers.KeyPair)
    table.add("crypto", "encrypt", crypto_encrypt,
              (Field("message", "str", max_len=MAX_MESSAGE_CHARS * 4), Field("public_key", "str", max_len=16384),
               Field("aead", "str", required=False, default="chacha20poly1305")),
              help="HPKE (X-Wing) encryption to a public key bundle", blocking=False,
              answer=answers.Encrypted)
    table.add("crypto", "decrypt", crypto_decrypt,
              (Field("encrypted_data", "str", max_len=1 << 20), Field("private_key", "str", required=False)),
              help="decrypt with the given private key, or the node's own identity", blocking=False,
              answer=answers.Decrypted)
    table.add("crypto", "rotate_identity", crypto_rotate_identity,
              help="extension: replace the node's identity keys; contacts follow (signed by the old key)",
              answer=answers.IdentityRotated)
    return table
