"""Every API action's declaration: command, action, data fields, help, answer shape.

Pure data, no handlers: the command-line client builds its subcommands from it, the UI
checks slash commands with it, and the schema and docs/API.md are generated from it, all
without importing the node. lib/api/commands.py binds each row to its handler.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Mapping, Optional

from . import answers
from .table import CommandTable, Field, Handler
from ..contract import ContactView, GroupInfo, GroupView, MessageView, PeerView, TransferView
from ..errors import Internal

NAME = Field("peer", "str", max_len=64)
NAME_OR_ID = Field("peer", "str", max_len=128)   # an ID is 69 characters with its dashes
TRANSFER_ID = Field("transfer_id", "str", max_len=128)
MAX_MESSAGE_CHARS = 64 * 1024
GROUP = Field("group", "str", max_len=64)        # the group's 32 hex digits or its name
GROUP_NAME = Field("name", "str", max_len=64, min_len=1)
MEMBER = Field("peer", "str", max_len=128)       # a member's contact name or ID
MAX_GROUP_MEMBERS = 64                           # PROTOCOL §13.9, the creator included


def _unbound(node: Any, data: dict) -> Any:
    raise Internal("this command table is for declarations only: it runs no handler")


def _group_rows(table: CommandTable, bind: Callable[[str, Optional[str]], Handler]) -> None:
    """The `group` command (PROTOCOL §13): `group` is a group's id (32 hex digits) or name."""
    table.add("group", "create", bind("group", "create"),
              (GROUP_NAME, Field("members", "list", item_kind="str", min_len=1, max_len=MAX_GROUP_MEMBERS - 1,
                                 item_max_len=128)),
              help="extension: create a group with these contacts (names or IDs); this node is its admin",
              answer=GroupView)
    table.add("group", "list", bind("group", "list"), help="extension: the groups this node is or was in",
              blocking=False, answer=list[GroupView])
    table.add("group", "info", bind("group", "info"), (GROUP,),
              help="extension: a group with its members and what this node holds of it", blocking=False,
              answer=GroupInfo)
    table.add("group", "invite", bind("group", "invite"), (GROUP, MEMBER),
              help="extension: add a contact to a group (admins only)", answer=GroupView)
    table.add("group", "remove", bind("group", "remove"), (GROUP, MEMBER),
              help="extension: remove a member (admins only); keys are rotated before the next message",
              answer=GroupView)
    table.add("group", "promote", bind("group", "promote"), (GROUP, MEMBER),
              help="extension: make a member an admin (admins only)", answer=GroupView)
    table.add("group", "leave", bind("group", "leave"), (GROUP,),
              help="extension: leave a group (its history stays here)", answer=GroupView)
    table.add("group", "rename", bind("group", "rename"), (GROUP, GROUP_NAME),
              help="extension: rename a group (admins only)", answer=GroupView)
    table.add("group", "send_message", bind("group", "send_message"),
              (GROUP, Field("message", "str", max_len=MAX_MESSAGE_CHARS, min_len=1),
               Field("message_id", "str", required=False, max_len=128, min_len=1)),
              help="extension: send a message to the group; answered at once with its message_id",
              answer=answers.GROUP_MESSAGE_SENT)
    table.add("group", "history", bind("group", "history"),
              (GROUP, Field("limit", "int", required=False, default=50, minimum=1, maximum=1000),
               Field("before", "str", required=False, max_len=64)),
              help="extension: a page of the group's history in the group's order, oldest first "
                   "(before: a message's hash, for the page before it)",
              blocking=False, answer=answers.GroupHistory)
    table.add("group", "mark_read", bind("group", "mark_read"), (GROUP,),
              help="extension: mark a group's messages read", blocking=False, answer=answers.GroupMarkedRead)
    table.add("group", "send_file", bind("group", "send_file"), (GROUP, Field("file_path", "str", max_len=4096)),
              help="extension: announce a file in the group and offer it to each member (each accepts on their own)",
              answer=answers.GroupFileSent)


def build_table(handlers: Optional[Mapping[tuple[str, Optional[str]], Handler]] = None) -> CommandTable:
    """The whole API. Add a row here (and its handler in commands.HANDLERS) to add an action;
    the server needs no change. Without `handlers` the rows are bound to nothing: what the
    command-line client, the UI, the schema and the docs need, without importing the node.

    `blocking=False` marks handlers that never wait on the network or the disk (the server
    runs them inline); every other one runs in a greenlet of its own, concurrently."""

    def bind(command: str, action: Optional[str]) -> Handler:
        if handlers is None:
            return _unbound
        return handlers[(command, action)]

    table = CommandTable()
    table.add("status", None, bind("status", None), help="server state (any action, null or none)", blocking=False,
              answer=answers.Status)

    table.add("contacts", "list", bind("contacts", "list"), help="all contacts with their state", blocking=False,
              answer=list[ContactView])
    table.add("contacts", "add", bind("contacts", "add"),
              (NAME, Field("public_key", "str", max_len=16384)),
              help="add a contact by ID or public key bundle", blocking=False,
              answer=Literal["Contact added"])
    table.add("contacts", "remove", bind("contacts", "remove"), (NAME,), help="remove a contact and its history", blocking=False,
              answer=Literal["Contact removed"])
    table.add("contacts", "rename", bind("contacts", "rename"), (NAME, Field("new_name", "str", max_len=64)),
              help="extension: change a contact's local name", blocking=False,
              answer=ContactView)
    table.add("contacts", "block", bind("contacts", "block"), (NAME_OR_ID,),
              help="extension: drop and silence a contact, or a stranger given by its ID", blocking=False,
              answer=ContactView)
    table.add("contacts", "unblock", bind("contacts", "unblock"), (NAME,), help="extension: undo block", blocking=False,
              answer=ContactView)
    table.add("contacts", "show", bind("contacts", "show"), (NAME,), help="extension: one contact", blocking=False,
              answer=ContactView)

    table.add("contacts", "negotiate_keys", bind("contacts", "negotiate_keys"),
              (NAME, Field("timeout", "int", required=False, default=10, minimum=1, maximum=120)),
              help="run the handshake now (connecting if needed); session details and safety number",
              answer=answers.KeyNegotiation)
    table.add("contacts", "verify", bind("contacts", "verify"),
              (NAME, Field("verified", "bool", required=False, default=True)),
              help="extension: mark a contact verified (after comparing safety numbers)", blocking=False,
              answer=ContactView)

    table.add("p2p", "start", bind("p2p", "start"), (Field("stun_urls", "list", required=False, item_kind="str", max_len=16),
                                          Field("rendezvous", "list", required=False, item_kind="str", max_len=16),
                                          Field("turn_servers", "list", required=False, max_len=8),
                                          Field("online", "bool", required=False)),
              help="start (or restart) the P2P network; `online` switches online mode (public DHT and STUN) "
                   "on or off for this run",
              answer=Literal["P2P network started"])
    table.add("p2p", "stop", bind("p2p", "stop"), help="stop the P2P network",
              answer=Literal["P2P network stopped"])
    table.add("p2p", "peers", bind("p2p", "peers"), help="every contact with its connection state", blocking=False,
              answer=list[PeerView])
    table.add("p2p", "connect", bind("p2p", "connect"),
              (NAME, Field("address", "str", required=False, max_len=300)),
              help="extension: reach a contact (at host:port, or its known addresses)",
              answer=answers.ConnectStarted)
    table.add("p2p", "send_message", bind("p2p", "send_message"),
              (NAME, Field("message", "str", max_len=MAX_MESSAGE_CHARS),
               Field("message_id", "str", required=False, max_len=128)),
              help="send (or queue) a chat message",
              blocking=False,
              answer=answers.MESSAGE_SENT)  # answered after the group commit (messaging.py), via a Deferred
    table.add("p2p", "history", bind("p2p", "history"),
              (NAME, Field("limit", "int", required=False, default=50, minimum=1, maximum=1000),
               Field("before", "int", required=False, minimum=1)),
              help="extension: stored messages, newest page, oldest first", blocking=False,
              answer=list[MessageView])
    table.add("p2p", "search", bind("p2p", "search"),
              (Field("text", "str", max_len=1000), Field("peer", "str", required=False, max_len=64),
               Field("limit", "int", required=False, default=50, minimum=1, maximum=1000)),
              help="extension: messages holding every word of text (word prefixes, case and accents "
                   "folded), newest first; one contact's with peer", blocking=False,
              answer=list[MessageView])
    table.add("p2p", "delete_message", bind("p2p", "delete_message"),
              (NAME, Field("message_id", "str", required=False, max_len=128),
               Field("all", "bool", required=False, default=False)),
              help="extension: delete a message (message_id) or the whole conversation (all=true) from "
                   "this node's history and search index; messages still in flight are kept",
              blocking=False, answer=answers.MessagesDeleted)
    table.add("p2p", "mark_read", bind("p2p", "mark_read"), (NAME,), help="extension: mark a conversation read", blocking=False,
              answer=answers.MarkedRead)
    table.add("p2p", "send_file", bind("p2p", "send_file"),
              (NAME, Field("file_path", "str", max_len=4096),
               Field("chunk_size", "int", required=False, minimum=1, maximum=1 << 31),
               Field("transfer_id", "str", required=False, max_len=128)),
              help="offer a file to a contact (queued while it is offline)",
              answer=answers.FILE_SENT)
    table.add("p2p", "accept_file", bind("p2p", "accept_file"),
              (TRANSFER_ID, Field("save_as", "str", required=False, max_len=255)),
              help="extension: accept a file offer (save_as: a bare file name in the downloads dir)",
              answer=TransferView)
    table.add("p2p", "reject_file", bind("p2p", "reject_file"), (TRANSFER_ID,),
              help="extension: refuse a file offer",
              answer=TransferView)
    table.add("p2p", "transfers", bind("p2p", "transfers"), help="extension: file transfers with state, bytes, rate, eta", blocking=False,
              answer=list[TransferView])
    table.add("p2p", "cancel_transfer", bind("p2p", "cancel_transfer"), (TRANSFER_ID,),
              help="extension: stop a transfer for good (the partial file is deleted)",
              answer=TransferView)
    table.add("p2p", "pause_transfer", bind("p2p", "pause_transfer"), (TRANSFER_ID,),
              help="extension: pause a transfer (either side)",
              answer=TransferView)
    table.add("p2p", "resume_transfer", bind("p2p", "resume_transfer"), (TRANSFER_ID,),
              help="extension: resume a paused (or failed) transfer from what was received",
              answer=TransferView)

    _group_rows(table, bind)

    table.add("events", "subscribe", bind("events", "subscribe"),
              (Field("events", "list", required=False, item_kind="str", max_len=64),),
              help="extension: stream events on this connection, one JSON line each after this answer "
                   "(only the named ones when `events` is given); for clients without ZeroMQ",
              blocking=False, answer=answers.EventsSubscribed)

    table.add("crypto", "generate_keypair", bind("crypto", "generate_keypair"),
              help="a fresh key pair (never the node's identity)", blocking=False,
              answer=answers.KeyPair)
    table.add("crypto", "encrypt", bind("crypto", "encrypt"),
              (Field("message", "str", max_len=MAX_MESSAGE_CHARS * 4), Field("public_key", "str", max_len=16384),
               Field("aead", "str", required=False, default="chacha20poly1305")),
              help="HPKE (X-Wing) encryption to a public key bundle", blocking=False,
              answer=answers.Encrypted)
    table.add("crypto", "decrypt", bind("crypto", "decrypt"),
              (Field("encrypted_data", "str", max_len=1 << 20), Field("private_key", "str", required=False)),
              help="decrypt with the given private key, or the node's own identity", blocking=False,
              answer=answers.Decrypted)
    table.add("crypto", "rotate_identity", bind("crypto", "rotate_identity"),
              help="extension: replace the node's identity keys; contacts follow (signed by the old key)",
              answer=answers.IdentityRotated)
    return table
