"""The node's SQLite database: `Store` (the connection) and its repositories.

    store = Store(data_dir / "chatp2p.db")
    store.contacts.get("bob")          contacts.py    contacts, read from an in-memory index
    store.messages.history(bob.id)     messages.py    messages and each contact's receive position
    store.held.take(fingerprint)       held.py        messages held from strangers
    store.transfers.get(transfer_id)   transfers.py   file transfers
    store.groups.get_group("family")   groups.py      group chats: groups, records, keys, history
    migrations.py                      the schema, one migration at a time

The row types, states and errors are re-exported here so callers import from one place.
"""
from .contacts import MAX_NAME_LENGTH, Contact, ContactRepository, validate_name
from .database import Store
from .errors import DuplicateError, InvalidValueError, NotFoundError, StoreError
from .fields import FINGERPRINT_SIZE
from .groups import Group, GroupMessage, GroupRepository, NewRecords, StoredRecord
from .held import HeldMessage, HeldMessageRepository
from .messages import OUTGOING_STATES, Message, MessageRepository, MessageState
from .migrations import MIGRATIONS
from .transfers import TransferRepository, TransferRow, TransferState

__all__ = [
    "FINGERPRINT_SIZE", "MAX_NAME_LENGTH", "MIGRATIONS", "OUTGOING_STATES",
    "Contact", "ContactRepository", "Group", "GroupMessage", "GroupRepository", "NewRecords", "StoredRecord", "DuplicateError", "HeldMessage", "HeldMessageRepository", "InvalidValueError",
    "Message", "MessageRepository", "MessageState", "NotFoundError", "Store", "StoreError",
    "TransferRepository", "TransferRow", "TransferState", "validate_name",
]
