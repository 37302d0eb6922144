"""Every API action, declared in one table: command, action, data schema, handler.

Handlers are thin: they translate between the API's JSON and the node's objects. The seed
protocol's actions keep their names and shapes; extensions are marked as such in help.
"""

from __future__ import annotations

from typing import Any

from . import identity as ident, sealed
from .api import ApiError, CommandTable, Field
from .node import Node

NAME = Field("peer", "str", max_len=64)
MAX_MESSAGE_CHARS = 64 * 1024


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
    return node.contacts.set_blocked(data["peer"], True)


def contacts_unblock(node: Node, data: dict) -> Any:
    return node.contacts.set_blocked(data["peer"], False)


def contacts_show(node: Node, data: dict) -> Any:
    return node.contacts.view(node.contacts.get(data["peer"]))


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


def build_table() -> CommandTable:
    """The whole API. Add a row here to add an action; the server needs no change."""
    table = CommandTable()
    table.add("status", None, status, help="server state (any action, null or none)")

    table.add("contacts", "list", contacts_list, help="all contacts with their state")
    table.add("contacts", "add", contacts_add,
              (NAME, Field("public_key", "str", max_len=16384)),
              help="add a contact by ID or public key bundle")
    table.add("contacts", "remove", contacts_remove, (NAME,), help="remove a contact and its history")
    table.add("contacts", "rename", contacts_rename, (NAME, Field("new_name", "str", max_len=64)),
              help="extension: change a contact's local name")
    table.add("contacts", "block", contacts_block, (NAME,), help="extension: drop and silence a contact")
    table.add("contacts", "unblock", contacts_unblock, (NAME,), help="extension: undo block")
    table.add("contacts", "show", contacts_show, (NAME,), help="extension: one contact")

    table.add("crypto", "generate_keypair", crypto_generate_keypair,
              help="a fresh key pair (never the node's identity)")
    table.add("crypto", "encrypt", crypto_encrypt,
              (Field("message", "str", max_len=MAX_MESSAGE_CHARS * 4), Field("public_key", "str", max_len=16384),
               Field("aead", "str", required=False, default="chacha20poly1305")),
              help="HPKE (X-Wing) encryption to a public key bundle")
    table.add("crypto", "decrypt", crypto_decrypt,
              (Field("encrypted_data", "str", max_len=1 << 20), Field("private_key", "str", required=False)),
              help="decrypt with the given private key, or the node's own identity")
    return table
