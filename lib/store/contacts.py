"""Contacts: keys the user chose to talk to, under local names (`store.contacts`).

Reads are served from memory (`_ContactIndex`): every API request naming a contact reads this
table, and a query plus `Contact.from_row` (JSON addresses, a ~4 KB bundle) per request was a
sizeable share of the daemon's CPU. The copy stays right because every write to `contacts`
goes through `ContactRepository._write()`, which drops it, committed or rolled back (the data
dir is locked to one process, and the store is its only writer). The one exception is the
receive position (`in_seq`), written by the message repository: it is not a `Contact` field.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import unicodedata
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..util import BIDI_CONTROLS, iso_utc
from .errors import DuplicateError, InvalidValueError, NotFoundError
from .fields import check_fingerprint, iso_or_none

if TYPE_CHECKING:
    from .database import Store

MAX_NAME_LENGTH = 64
MAX_ADDRESSES = 5

# SQLite's NOCASE collation (the `name` column's) folds ASCII A-Z only: "É" and "é" differ.
_NOCASE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def validate_name(name: str) -> str:
    """Return the name stripped, or raise StoreError saying why it cannot be a contact name."""
    stripped = name.strip()
    if not stripped:
        raise InvalidValueError("A contact name cannot be empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise InvalidValueError(f"A contact name is at most {MAX_NAME_LENGTH} characters")
    for ch in stripped:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS:
            raise InvalidValueError("A contact name cannot contain control characters")
    return stripped


def _nocase_key(name: str) -> str:
    """The form under which `name = ?` (COLLATE NOCASE) finds a name: ASCII-lowered.

    str.lower() is the same fold on an all-ASCII name, and much faster than translate()."""
    return name.lower() if name.isascii() else name.translate(_NOCASE)


@dataclasses.dataclass(frozen=True)
class Contact:
    """One row of `contacts`: a key the user chose to talk to, under a local name.

    Frozen (and `addresses` a tuple): the store hands out the same cached objects to every
    caller, so none may change one. Ask the store for a fresh one after a write.
    """

    id: int
    name: str
    fingerprint: bytes
    bundle: str | None
    verified: bool
    blocked: bool
    created: float
    last_seen: float | None
    addresses: tuple[str, ...]
    notes: str | None = None
    lan_secret: bytes | None = dataclasses.field(default=None, repr=False)  # never in views or logs
    previous_lan_secret: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def pair_secrets(self) -> list[bytes]:
        """The pair secrets shared with this contact, newest first (the peer may hold either)."""
        return [s for s in (self.lan_secret, self.previous_lan_secret) if s is not None]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Contact:
        return cls(
            id=row["id"],
            name=row["name"],
            fingerprint=bytes(row["fingerprint"]),
            bundle=row["bundle"],
            verified=bool(row["verified"]),
            blocked=bool(row["blocked"]),
            created=row["created"],
            last_seen=row["last_seen"],
            addresses=tuple(json.loads(row["addresses"])),
            notes=row["notes"],
            lan_secret=_blob_or_none(row, "lan_secret"),
            previous_lan_secret=_blob_or_none(row, "previous_lan_secret"),
        )

    def to_dict(self, format_fp: Callable[[bytes], str]) -> dict[str, Any]:
        """JSON-ready view; the bundle is left out (large) and shown as `has_bundle`."""
        return {
            "id": self.id,
            "name": self.name,
            "fingerprint": format_fp(self.fingerprint),
            "has_bundle": self.bundle is not None,
            "verified": self.verified,
            "blocked": self.blocked,
            "created": iso_utc(self.created),
            "last_seen": iso_or_none(self.last_seen),
            "addresses": list(self.addresses),
            "notes": self.notes,
        }


def _blob_or_none(row: sqlite3.Row, column: str) -> bytes | None:
    """A BLOB column that a schema before its migration lacks (a store opened with fewer
    migrations, as the tests do) reads as None."""
    if column not in row.keys():
        return None
    value = row[column]
    return bytes(value) if value is not None else None


class _ContactIndex:
    """All of `contacts` in memory, loaded by one query, indexed the ways readers look.

    Built whole and never updated in place: a write drops it and the next read loads it
    again. The Contacts are frozen because every caller shares them.
    """

    __slots__ = ("ordered", "by_name", "by_id", "by_fingerprint")

    def __init__(self, rows: list[sqlite3.Row]) -> None:
        self.ordered = tuple(Contact.from_row(row) for row in rows)  # ORDER BY name, id
        # One entry per key: the UNIQUE name column has the same NOCASE collation.
        self.by_name = {_nocase_key(c.name): c for c in self.ordered}
        self.by_id = {c.id: c for c in self.ordered}
        self.by_fingerprint = {c.fingerprint: c for c in self.ordered}


def _row_by_name(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM contacts WHERE name = ?", (name.strip(),)).fetchone()
    if row is None:
        raise NotFoundError(f"Peer not found: {name.strip()}")
    return row


def _row_by_id(conn: sqlite3.Connection, contact_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Peer not found: #{contact_id}")
    return row


class ContactRepository:
    """The `contacts` table: reads from the in-memory index, writes that drop it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # The table in memory; None until the first read after opening or after a write.
        self._index: _ContactIndex | None = None

    def invalidate(self) -> None:
        """Drop the in-memory copy (always safe: the next read loads it again)."""
        self._index = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that writes `contacts`: drops the index before and after, whether
        it commits or rolls back (a read inside it may have cached uncommitted rows)."""
        self._index = None
        try:
            with self._store.transaction() as conn:
                yield conn
        finally:
            self._index = None

    def _loaded(self) -> _ContactIndex:
        """The index, loaded with one query if a write dropped it."""
        index = self._index
        if index is None:
            index = _ContactIndex(self._store.query("SELECT * FROM contacts ORDER BY name, id"))
            self._index = index
        return index

    # ---- reads (from memory) -------------------------------------------------------

    def get(self, name: str) -> Contact:
        """Look a contact up by name, ignoring (ASCII) case."""
        index = self._index or self._loaded()  # not a call per read: the API's hot path
        name = name.strip()
        contact = index.by_name.get(_nocase_key(name))
        if contact is None:
            # A name SQLite could not have bound (a lone surrogate, from JSON "\ud800")
            # fails as the query did, with UnicodeEncodeError: a NotFoundError would echo
            # a string the API cannot encode into its reply.
            name.encode()
            raise NotFoundError(f"Peer not found: {name}")
        return contact

    def get_by_id(self, contact_id: int) -> Contact:
        """Look a contact up by row id (NotFoundError "Peer not found: #ID")."""
        contact = (self._index or self._loaded()).by_id.get(contact_id)
        if contact is None:
            raise NotFoundError(f"Peer not found: #{contact_id}")
        return contact

    def find_by_fingerprint(self, fp: bytes) -> Contact | None:
        """The contact with this key, or None (a stranger)."""
        return (self._index or self._loaded()).by_fingerprint.get(bytes(fp))

    def all(self) -> list[Contact]:
        """All contacts, ordered by name (ASCII case ignored), then id."""
        return list(self._loaded().ordered)

    def count(self) -> int:
        return len(self._loaded().ordered)

    # ---- writes (each drops the index) ---------------------------------------------

    def add(self, name: str, fingerprint: bytes, bundle: str | None) -> Contact:
        """Add a contact; DuplicateError names the contact that already has the name or key."""
        name = validate_name(name)
        fingerprint = check_fingerprint(fingerprint)
        with self._write() as conn:
            same_name = conn.execute(
                "SELECT name FROM contacts WHERE name = ?", (name,)
            ).fetchone()
            if same_name is not None:
                raise DuplicateError(f"A contact named {same_name['name']} already exists")
            same_key = conn.execute(
                "SELECT name FROM contacts WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
            if same_key is not None:
                raise DuplicateError(f"This key is already a contact: {same_key['name']}")
            cur = conn.execute(
                "INSERT INTO contacts (name, fingerprint, bundle, created) "
                "VALUES (?, ?, ?, ?)",
                (name, fingerprint, bundle, time.time()),
            )
            return Contact.from_row(_row_by_id(conn, cur.lastrowid))

    def remove(self, name: str) -> Contact:
        """Delete a contact and, by cascade, its messages and transfers; return it as it was."""
        with self._write() as conn:
            row = _row_by_name(conn, name)
            conn.execute("DELETE FROM contacts WHERE id = ?", (row["id"],))
            return Contact.from_row(row)

    def rename(self, name: str, new_name: str) -> Contact:
        """Rename; changing only the case of the contact's own name is allowed."""
        new_name = validate_name(new_name)
        with self._write() as conn:
            row = _row_by_name(conn, name)
            clash = conn.execute(
                "SELECT name FROM contacts WHERE name = ? AND id != ?", (new_name, row["id"])
            ).fetchone()
            if clash is not None:
                raise DuplicateError(f"A contact named {clash['name']} already exists")
            conn.execute("UPDATE contacts SET name = ? WHERE id = ?", (new_name, row["id"]))
            return Contact.from_row(_row_by_id(conn, row["id"]))

    def set_blocked(self, name: str, blocked: bool) -> Contact:
        return self._set_flag(name, "blocked", blocked)

    def set_verified(self, name: str, verified: bool) -> Contact:
        return self._set_flag(name, "verified", verified)

    def _set_flag(self, name: str, column: str, value: bool) -> Contact:
        with self._write() as conn:
            row = _row_by_name(conn, name)
            conn.execute(
                f"UPDATE contacts SET {column} = ? WHERE id = ?", (int(value), row["id"])
            )
            return Contact.from_row(_row_by_id(conn, row["id"]))

    def set_bundle(self, contact_id: int, bundle: str) -> None:
        """Record the identity bundle of a contact first added by fingerprint only."""
        with self._write() as conn:
            _row_by_id(conn, contact_id)
            conn.execute("UPDATE contacts SET bundle = ? WHERE id = ?", (bundle, contact_id))

    def set_lan_secret(self, contact_id: int, secret: bytes | None) -> None:
        """Store the LAN pair secret shared with a contact (32 bytes), or forget it (None); the
        one it replaces is kept as `previous_lan_secret` (forgetting forgets both)."""
        if secret is not None and len(secret) != 32:
            raise InvalidValueError("A LAN pair secret is 32 bytes")
        with self._write() as conn:
            row = _row_by_id(conn, contact_id)
            if row["lan_secret"] != secret:
                previous = row["lan_secret"] if secret is not None else None
                conn.execute("UPDATE contacts SET lan_secret = ?, previous_lan_secret = ? WHERE id = ?",
                             (secret, previous, contact_id))

    def replace_key(self, contact_id: int, new_fingerprint: bytes, new_bundle: str) -> Contact:
        """Move a contact to its new identity key (a rollover signed by its old key).

        Name, history, receive position and `verified` are kept: the change was approved by
        the key the user knew (and possibly verified). DuplicateError if another contact has
        the new key already."""
        new_fingerprint = check_fingerprint(new_fingerprint)
        with self._write() as conn:
            _row_by_id(conn, contact_id)
            same_key = conn.execute(
                "SELECT name FROM contacts WHERE fingerprint = ? AND id != ?",
                (new_fingerprint, contact_id),
            ).fetchone()
            if same_key is not None:
                raise DuplicateError(f"This key is already a contact: {same_key['name']}")
            conn.execute(
                "UPDATE contacts SET fingerprint = ?, bundle = ? WHERE id = ?",
                (new_fingerprint, new_bundle, contact_id),
            )
            return Contact.from_row(_row_by_id(conn, contact_id))

    def touch(self, contact_id: int, when: float, address: str | None = None) -> None:
        """Note that the contact was seen; keep its last 5 distinct addresses, newest first.

        last_seen never moves backwards, so a late, older report cannot hide a newer one.
        """
        with self._write() as conn:
            row = _row_by_id(conn, contact_id)
            addresses: list[str] = json.loads(row["addresses"])
            if address is not None:
                addresses = [address] + [a for a in addresses if a != address]
                addresses = addresses[:MAX_ADDRESSES]
            last_seen = when if row["last_seen"] is None else max(row["last_seen"], when)
            conn.execute(
                "UPDATE contacts SET last_seen = ?, addresses = ? WHERE id = ?",
                (last_seen, json.dumps(addresses), contact_id),
            )
