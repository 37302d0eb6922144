"""The node's persistent state: one SQLite database (`DATA_DIR/chatp2p.db`).

Durability: every write method commits before it returns. With the default
`synchronous=NORMAL` in WAL mode a committed write survives a crash or kill of the
process (SIGKILL included) but the last commits may be lost on power failure;
`durable=True` sets `synchronous=FULL`, which syncs the WAL on every commit so a
commit also survives power loss, at the cost of one fsync per write.

Concurrency: one connection, used by the greenlets of one gevent process. Every call
is short and never yields to the hub in the middle of a transaction, so greenlets
cannot interleave inside one. No threads.

Caching: the contacts table is also held in memory (see `_ContactIndex`), so any write
to `contacts` must go through `_contact_write()`, which drops that copy.

Privacy: the database and its -wal/-shm side files are created mode 0600.

Schema: `PRAGMA user_version` counts the migrations applied. Add a table by appending
a migration to `MIGRATIONS`; never edit one that has shipped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sqlite3
import time
import unicodedata
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .util import BIDI_CONTROLS, iso_utc

FINGERPRINT_SIZE = 32
MAX_NAME_LENGTH = 64
MAX_ADDRESSES = 5
BUSY_TIMEOUT_MS = 5000

OUTGOING_STATES = ("queued", "sent", "delivered", "failed")
MESSAGE_STATES = OUTGOING_STATES + ("received",)

# Each migration is a tuple of SQL statements run in one transaction, after which
# user_version is set to its 1-based position. foreign_keys is ON while they run: a
# migration that rebuilds a table must take care of that itself.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: contacts, their messages, messages held from strangers.
    (
        """
        CREATE TABLE contacts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            fingerprint BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
            bundle TEXT,
            verified INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
            blocked INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
            created REAL NOT NULL,
            last_seen REAL,
            addresses TEXT NOT NULL DEFAULT '[]',
            notes TEXT
        )
        """,
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            message_id TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            body TEXT NOT NULL,
            created REAL NOT NULL,
            received REAL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'sent', 'delivered', 'failed', 'received')),
            seq INTEGER,
            read INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
            failure TEXT,
            UNIQUE (contact_id, direction, message_id)
        )
        """,
        "CREATE INDEX messages_contact ON messages (contact_id, id)",
        """
        CREATE TABLE held_messages (
            id INTEGER PRIMARY KEY,
            fingerprint BLOB NOT NULL CHECK (length(fingerprint) = 32),
            bundle TEXT NOT NULL,
            message_id TEXT NOT NULL,
            body TEXT NOT NULL,
            created REAL NOT NULL,
            UNIQUE (fingerprint, message_id)
        )
        """,
    ),
    # 2: per-contact receive position, for in-order exactly-once delivery across restarts.
    (
        "ALTER TABLE contacts ADD COLUMN in_seq INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX messages_out_state ON messages (contact_id, direction, state, seq)",
    ),
    # 3: file transfers, both directions; `have` = chunk ranges durable in the .part file.
    (
        """
        CREATE TABLE transfers (
            id INTEGER PRIMARY KEY,
            transfer_id TEXT NOT NULL UNIQUE,
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            file_name TEXT NOT NULL,
            path TEXT,
            part_path TEXT,
            size INTEGER NOT NULL CHECK (size >= 0),
            chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
            tag BLOB NOT NULL,
            state TEXT NOT NULL,
            stopped_by TEXT,
            have TEXT NOT NULL DEFAULT '',
            sha256 TEXT,
            error TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )
        """,
        "CREATE INDEX transfers_state ON transfers (state)",
    ),
    # 4: a held message's sequence number, so release keeps the sender's order.
    ("ALTER TABLE held_messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",),
    # 5: a contact's messages by direction and seq: the next outgoing seq (max) and the
    # delivered ranges are index lookups instead of scans of every outgoing row.
    ("CREATE INDEX messages_seq ON messages (contact_id, direction, seq)",),
)


class StoreError(Exception):
    """Base of the store's errors; its message is meant for the user."""


class DuplicateError(StoreError):
    """A name, key or message id that must be unique is already taken."""


class NotFoundError(StoreError):
    """The contact or message asked for does not exist."""


def _iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def validate_name(name: str) -> str:
    """Return the name stripped, or raise StoreError saying why it cannot be a contact name."""
    stripped = name.strip()
    if not stripped:
        raise StoreError("A contact name cannot be empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise StoreError(f"A contact name is at most {MAX_NAME_LENGTH} characters")
    for ch in stripped:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS:
            raise StoreError("A contact name cannot contain control characters")
    return stripped


def _fingerprint(fp: bytes) -> bytes:
    """Check a fingerprint's size so a truncated key never matches or gets stored."""
    fp = bytes(fp)
    if len(fp) != FINGERPRINT_SIZE:
        raise StoreError(f"A key fingerprint is {FINGERPRINT_SIZE} bytes, not {len(fp)}")
    return fp


# SQLite's NOCASE collation (the `name` column's) folds ASCII A-Z only: "É" and "é" differ.
_NOCASE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


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
            "last_seen": _iso_or_none(self.last_seen),
            "addresses": list(self.addresses),
            "notes": self.notes,
        }


@dataclasses.dataclass
class Message:
    """One row of `messages`, incoming or outgoing."""

    id: int
    contact_id: int
    message_id: str
    direction: str
    body: str
    created: float
    received: float | None
    state: str
    seq: int | None
    read: bool
    failure: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Message:
        return cls(
            id=row["id"],
            contact_id=row["contact_id"],
            message_id=row["message_id"],
            direction=row["direction"],
            body=row["body"],
            created=row["created"],
            received=row["received"],
            state=row["state"],
            seq=row["seq"],
            read=bool(row["read"]),
            failure=row["failure"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view with ISO-8601 UTC timestamps."""
        return {
            "id": self.id,
            "contact_id": self.contact_id,
            "message_id": self.message_id,
            "direction": self.direction,
            "body": self.body,
            "created": iso_utc(self.created),
            "received": _iso_or_none(self.received),
            "state": self.state,
            "seq": self.seq,
            "read": self.read,
            "failure": self.failure,
        }


@dataclasses.dataclass
class HeldMessage:
    """A message from a stranger, kept until the user accepts or refuses the sender."""

    id: int
    fingerprint: bytes
    bundle: str
    message_id: str
    body: str
    created: float
    seq: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> HeldMessage:
        return cls(
            id=row["id"],
            fingerprint=bytes(row["fingerprint"]),
            bundle=row["bundle"],
            message_id=row["message_id"],
            body=row["body"],
            created=row["created"],
            seq=row["seq"],
        )

    def to_dict(self, format_fp: Callable[[bytes], str]) -> dict[str, Any]:
        """JSON-ready view; the bundle is left out (large)."""
        return {
            "id": self.id,
            "fingerprint": format_fp(self.fingerprint),
            "message_id": self.message_id,
            "body": self.body,
            "created": iso_utc(self.created),
        }


class _ContactIndex:
    """All of `contacts` in memory, loaded by one query, indexed the ways readers look.

    Why: every API request naming a contact (send_message, status, ...) reads the table,
    and a query plus Contact.from_row (JSON addresses, a ~4 KB bundle) per request was a
    sizeable share of the daemon's CPU. Why it stays right: every write to `contacts` goes
    through Store, the only writer of the database (the data dir is locked to one
    process), and each such write drops the whole index (Store._contact_write), committed
    or rolled back; the next read loads it again. No partial updates. The Contacts are
    frozen because every caller shares them.
    """

    __slots__ = ("ordered", "by_name", "by_id", "by_fingerprint")

    def __init__(self, rows: list[sqlite3.Row]) -> None:
        self.ordered = tuple(Contact.from_row(row) for row in rows)  # ORDER BY name, id
        # One entry per key: the UNIQUE name column has the same NOCASE collation.
        self.by_name = {_nocase_key(c.name): c for c in self.ordered}
        self.by_id = {c.id: c for c in self.ordered}
        self.by_fingerprint = {c.fingerprint: c for c in self.ordered}


class Store:
    """The SQLite database of one node. See the module docstring for durability."""

    migrations: tuple[tuple[str, ...], ...] = MIGRATIONS

    def __init__(self, path: pathlib.Path, durable: bool = False) -> None:
        self.path = pathlib.Path(path)
        self.durable = durable
        # The contacts table in memory (see _ContactIndex); None until the first read
        # after opening or after a contact write.
        self._contacts: _ContactIndex | None = None
        self._conn: sqlite3.Connection | None = self._open()

    # ---- opening and closing -------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Create the file 0600, connect under umask 077 (for -wal/-shm), then migrate."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)  # tighten a file left readable by someone else
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"Cannot open database {self.path}: {exc.strerror}") from exc
        old_umask = os.umask(0o077)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(
                    f"Database {self.path} cannot use WAL mode (got {mode!r}): "
                    "put the data directory on a local file system"
                )
            conn.execute("PRAGMA synchronous = " + ("FULL" if self.durable else "NORMAL"))
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"Cannot open database {self.path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            os.umask(old_umask)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations the file lacks; refuse a file from a newer version."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        known = len(self.migrations)
        if version > known:
            raise StoreError(
                f"Database {self.path} has schema version {version}, but this version of "
                f"ChatP2P only knows up to {known}: upgrade ChatP2P to open it"
            )
        for number in range(version + 1, known + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in self.migrations[number - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._contacts = None

    def close(self) -> None:
        """Fold the WAL back into the main file and close, so the file stands alone."""
        self._contacts = None
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed before the caller returns.

        SQLite's own errors (disk full, busy past the timeout) become StoreError so the
        callers handle one family of exceptions.
        """
        conn = self._checked()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"Database error: {exc}") from exc

    @contextmanager
    def _contact_write(self) -> Iterator[sqlite3.Connection]:
        """`_tx()` for a write to `contacts`: drops the contact cache before and after,
        whether the transaction commits or rolls back (dropping is always safe)."""
        self._contacts = None
        try:
            with self._tx() as conn:
                yield conn
        finally:
            self._contacts = None

    def _contact_index(self) -> _ContactIndex:
        """The cached contacts, loaded with one query if a write dropped them."""
        index = self._contacts
        if index is None:
            index = _ContactIndex(self._query("SELECT * FROM contacts ORDER BY name, id"))
            self._contacts = index
        return index

    def _checked(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("The store is closed")
        return self._conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._checked().execute(sql, params).fetchall()

    # ---- contacts ------------------------------------------------------------------

    def _contact_row(self, conn: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = conn.execute(
            "SELECT * FROM contacts WHERE name = ?", (name.strip(),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"Peer not found: {name.strip()}")
        return row

    def _contact_by_id(self, conn: sqlite3.Connection, contact_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"Peer not found: #{contact_id}")
        return row

    def add_contact(self, name: str, fingerprint: bytes, bundle: str | None) -> Contact:
        """Add a contact; DuplicateError names the contact that already has the name or key."""
        name = validate_name(name)
        fingerprint = _fingerprint(fingerprint)
        with self._contact_write() as conn:
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
            return Contact.from_row(self._contact_by_id(conn, cur.lastrowid))

    def get_contact(self, name: str) -> Contact:
        """Look a contact up by name, ignoring (ASCII) case."""
        index = self._contact_index()
        name = name.strip()
        contact = index.by_name.get(_nocase_key(name))
        if contact is None:
            # A name SQLite could not have bound (a lone surrogate, from JSON "\ud800")
            # fails as the query did, with UnicodeEncodeError: a NotFoundError would echo
            # a string the API cannot encode into its reply.
            name.encode()
            raise NotFoundError(f"Peer not found: {name}")
        return contact

    def get_contact_by_id(self, contact_id: int) -> Contact:
        """Look a contact up by row id (NotFoundError "Peer not found: #ID")."""
        contact = self._contact_index().by_id.get(contact_id)
        if contact is None:
            raise NotFoundError(f"Peer not found: #{contact_id}")
        return contact

    def find_contact_by_fingerprint(self, fp: bytes) -> Contact | None:
        return self._contact_index().by_fingerprint.get(bytes(fp))

    def list_contacts(self) -> list[Contact]:
        """All contacts, ordered by name (ASCII case ignored), then id."""
        return list(self._contact_index().ordered)

    def remove_contact(self, name: str) -> Contact:
        """Delete a contact and, by cascade, its messages; return it as it was."""
        with self._contact_write() as conn:
            row = self._contact_row(conn, name)
            conn.execute("DELETE FROM contacts WHERE id = ?", (row["id"],))
            return Contact.from_row(row)

    def rename_contact(self, name: str, new_name: str) -> Contact:
        """Rename; changing only the case of the contact's own name is allowed."""
        new_name = validate_name(new_name)
        with self._contact_write() as conn:
            row = self._contact_row(conn, name)
            clash = conn.execute(
                "SELECT name FROM contacts WHERE name = ? AND id != ?", (new_name, row["id"])
            ).fetchone()
            if clash is not None:
                raise DuplicateError(f"A contact named {clash['name']} already exists")
            conn.execute("UPDATE contacts SET name = ? WHERE id = ?", (new_name, row["id"]))
            return Contact.from_row(self._contact_by_id(conn, row["id"]))

    def _set_flag(self, name: str, column: str, value: bool) -> Contact:
        with self._contact_write() as conn:
            row = self._contact_row(conn, name)
            conn.execute(
                f"UPDATE contacts SET {column} = ? WHERE id = ?", (int(value), row["id"])
            )
            return Contact.from_row(self._contact_by_id(conn, row["id"]))

    def set_blocked(self, name: str, blocked: bool) -> Contact:
        return self._set_flag(name, "blocked", blocked)

    def set_verified(self, name: str, verified: bool) -> Contact:
        return self._set_flag(name, "verified", verified)

    def set_notes(self, name: str, notes: str | None) -> Contact:
        with self._contact_write() as conn:
            row = self._contact_row(conn, name)
            conn.execute("UPDATE contacts SET notes = ? WHERE id = ?", (notes, row["id"]))
            return Contact.from_row(self._contact_by_id(conn, row["id"]))

    def set_bundle(self, contact_id: int, bundle: str) -> None:
        """Record the identity bundle of a contact first added by fingerprint only."""
        with self._contact_write() as conn:
            self._contact_by_id(conn, contact_id)
            conn.execute("UPDATE contacts SET bundle = ? WHERE id = ?", (bundle, contact_id))

    def replace_key(self, contact_id: int, new_fingerprint: bytes, new_bundle: str) -> Contact:
        """Move a contact to its new identity key (a rollover signed by its old key).

        Name, history, receive position and `verified` are kept: the change was approved by
        the key the user knew (and possibly verified). DuplicateError if another contact has
        the new key already."""
        new_fingerprint = _fingerprint(new_fingerprint)
        with self._contact_write() as conn:
            self._contact_by_id(conn, contact_id)
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
            return Contact.from_row(self._contact_by_id(conn, contact_id))

    def touch_contact(self, contact_id: int, when: float, address: str | None = None) -> None:
        """Note that the contact was seen; keep its last 5 distinct addresses, newest first.

        last_seen never moves backwards, so a late, older report cannot hide a newer one.
        """
        with self._contact_write() as conn:
            row = self._contact_by_id(conn, contact_id)
            addresses: list[str] = json.loads(row["addresses"])
            if address is not None:
                addresses = [address] + [a for a in addresses if a != address]
                addresses = addresses[:MAX_ADDRESSES]
            last_seen = when if row["last_seen"] is None else max(row["last_seen"], when)
            conn.execute(
                "UPDATE contacts SET last_seen = ?, addresses = ? WHERE id = ?",
                (last_seen, json.dumps(addresses), contact_id),
            )

    def count_contacts(self) -> int:
        return len(self._contact_index().ordered)

    def unread_counts(self) -> dict[int, int]:
        """contact_id -> unread incoming messages; contacts with none are left out."""
        rows = self._query(
            "SELECT contact_id, count(*) FROM messages "
            "WHERE direction = 'in' AND read = 0 GROUP BY contact_id"
        )
        return {row[0]: row[1] for row in rows}

    def last_messages(self) -> dict[int, Message]:
        """Latest message per contact, by arrival order in this store (row id)."""
        rows = self._query(
            "SELECT m.* FROM messages m JOIN "
            "(SELECT max(id) AS id FROM messages GROUP BY contact_id) latest "
            "ON m.id = latest.id"
        )
        return {row["contact_id"]: Message.from_row(row) for row in rows}

    # ---- messages ------------------------------------------------------------------

    def _message(self, conn: sqlite3.Connection, row_id: int) -> Message:
        return Message.from_row(
            conn.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
        )

    def add_outgoing(
        self,
        contact_id: int,
        message_id: str,
        body: str,
        created: float,
        state: str = "queued",
    ) -> Message:
        """Store a message we send, with the contact's next outgoing sequence number."""
        result = self.add_outgoing_many([(contact_id, message_id, body, created, state)])[0]
        if isinstance(result, StoreError):
            raise result
        return result

    def add_outgoing_many(
        self, items: list[tuple[int, str, str, float, str]]
    ) -> list[Message | StoreError]:
        """Store many outgoing messages (contact_id, message_id, body, created, state) in ONE
        transaction, each with its contact's next sequence number, in the order given.

        An item that cannot be stored (unknown contact, message_id already used, bad state)
        gets its StoreError in the result and the others are stored; a database error fails
        them all (raised, nothing stored)."""
        results: list[Message | StoreError] = []
        next_seq: dict[int, int] = {}
        with self._tx() as conn:
            for contact_id, message_id, body, created, state in items:
                if state not in OUTGOING_STATES:
                    results.append(StoreError(f"Invalid state for an outgoing message: {state}"))
                    continue
                seq = next_seq.get(contact_id)
                if seq is None:
                    try:
                        self._contact_by_id(conn, contact_id)
                    except NotFoundError as exc:
                        results.append(exc)
                        continue
                    seq = conn.execute(
                        "SELECT coalesce(max(seq), 0) + 1 FROM messages "
                        "WHERE contact_id = ? AND direction = 'out'",
                        (contact_id,),
                    ).fetchone()[0]
                cur = conn.execute(
                    "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                    "state, seq, read) VALUES (?, ?, 'out', ?, ?, ?, ?, 1) "
                    "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                    (contact_id, message_id, body, created, state, seq),
                )
                next_seq[contact_id] = seq + cur.rowcount
                if cur.rowcount != 1:
                    results.append(DuplicateError(f"Message {message_id} already exists"))
                    continue
                results.append(Message(cur.lastrowid, contact_id, message_id, "out", body, created,
                                       None, state, seq, True, None))
        return results

    def add_incoming(
        self, contact_id: int, message_id: str, body: str, created: float, received: float
    ) -> tuple[Message, bool]:
        """Store a received message; a repeated message_id returns the stored one and False."""
        with self._tx() as conn:
            self._contact_by_id(conn, contact_id)
            cur = conn.execute(
                "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                "received, state, read) VALUES (?, ?, 'in', ?, ?, ?, 'received', 0) "
                "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                (contact_id, message_id, body, created, received),
            )
            if cur.rowcount == 1:
                return self._message(conn, cur.lastrowid), True
            row = conn.execute(
                "SELECT * FROM messages "
                "WHERE contact_id = ? AND direction = 'in' AND message_id = ?",
                (contact_id, message_id),
            ).fetchone()
            return Message.from_row(row), False

    def in_seq(self, contact_id: int) -> int:
        """The highest sequence number delivered in order from this contact."""
        rows = self._query("SELECT in_seq FROM contacts WHERE id = ?", (contact_id,))
        if not rows:
            raise NotFoundError(f"Peer not found: #{contact_id}")
        return int(rows[0][0])

    def deliver_incoming(
        self, contact_id: int, seq: int, message_id: str, body: str, created: float, received: float
    ) -> tuple[Message, bool]:
        """Store a received message AND advance the contact's in_seq to `seq`, atomically.

        The acknowledgement is sent only after this commits, so a crash in between makes the
        sender resend, and the resent copy is recognised by its message_id (False).
        """
        with self._tx() as conn:
            self._contact_by_id(conn, contact_id)
            cur = conn.execute(
                "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                "received, state, seq, read) VALUES (?, ?, 'in', ?, ?, ?, 'received', ?, 0) "
                "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                (contact_id, message_id, body, created, received, seq),
            )
            conn.execute("UPDATE contacts SET in_seq = ? WHERE id = ?", (seq, contact_id))
            if cur.rowcount == 1:
                return self._message(conn, cur.lastrowid), True
            row = conn.execute(
                "SELECT * FROM messages "
                "WHERE contact_id = ? AND direction = 'in' AND message_id = ?",
                (contact_id, message_id),
            ).fetchone()
            return Message.from_row(row), False

    def deliver_incoming_many(
        self,
        contact_id: int,
        items: list[tuple[int, str, str, float]],
        received: float,
    ) -> list[bool]:
        """`deliver_incoming` for a run of messages (seq, message_id, body, created) in sequence
        order, in ONE transaction: every message, and in_seq set to the last seq. Returns, per
        message, True if it is new (False: a copy, recognised by its message_id)."""
        if not items:
            return []
        new: list[bool] = []
        with self._tx() as conn:
            self._contact_by_id(conn, contact_id)
            for seq, message_id, body, created in items:
                cur = conn.execute(
                    "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                    "received, state, seq, read) VALUES (?, ?, 'in', ?, ?, ?, 'received', ?, 0) "
                    "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                    (contact_id, message_id, body, created, received, seq),
                )
                new.append(cur.rowcount == 1)
            conn.execute("UPDATE contacts SET in_seq = ? WHERE id = ?", (items[-1][0], contact_id))
        return new

    def deliver_position(self, contact_id: int, seq: int) -> None:
        """Set the receive position (a stranger's held messages became a contact's)."""
        with self._tx() as conn:
            conn.execute("UPDATE contacts SET in_seq = ? WHERE id = ?", (seq, contact_id))

    def has_incoming(self, contact_id: int, message_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM messages WHERE contact_id = ? AND direction = 'in' AND message_id = ?",
            (contact_id, message_id),
        )
        return bool(rows)

    def mark_delivered(self, contact_id: int, seqs: list[int]) -> list[Message]:
        """Outgoing messages with these seqs not yet delivered become delivered; returns them."""
        if not seqs:
            return []
        done: list[Message] = []
        with self._tx() as conn:
            for seq in seqs:
                row = conn.execute(
                    "SELECT * FROM messages WHERE contact_id = ? AND direction = 'out' AND seq = ? "
                    "AND state IN ('queued', 'sent')",
                    (contact_id, seq),
                ).fetchone()
                if row is None:
                    continue
                conn.execute("UPDATE messages SET state = 'delivered', failure = NULL WHERE id = ?", (row["id"],))
                done.append(self._message(conn, row["id"]))
        return done

    def mark_delivered_ranges(
        self, contact_id: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, str]]:
        """Outgoing messages with a seq in these inclusive ranges, still queued or sent, become
        delivered, in one transaction; returns their (seq, message_id) in seq order."""
        done: list[tuple[int, str]] = []
        if not ranges:
            return done
        with self._tx() as conn:
            for first, last in ranges:
                where = ("WHERE contact_id = ? AND direction = 'out' AND seq BETWEEN ? AND ? "
                         "AND state IN ('queued', 'sent')")
                rows = conn.execute(
                    f"SELECT seq, message_id FROM messages {where} ORDER BY seq",
                    (contact_id, first, last),
                ).fetchall()
                if rows:
                    conn.execute(
                        f"UPDATE messages SET state = 'delivered', failure = NULL {where}",
                        (contact_id, first, last),
                    )
                    done.extend((row[0], row[1]) for row in rows)
        return done

    def mark_sent_ranges(self, contact_id: int, ranges: list[tuple[int, int]]) -> None:
        """Outgoing messages still queued with a seq in these ranges become sent (one transaction)."""
        if not ranges:
            return
        with self._tx() as conn:
            conn.executemany(
                "UPDATE messages SET state = 'sent' WHERE contact_id = ? AND direction = 'out' "
                "AND seq BETWEEN ? AND ? AND state = 'queued'",
                [(contact_id, first, last) for first, last in ranges],
            )

    def set_message_state(
        self, contact_id: int, message_id: str, state: str, failure: str | None = None
    ) -> None:
        """Set an outgoing message's state (and failure reason, cleared when None).

        The store does not police transitions: the messaging layer owns that logic.
        """
        if state not in OUTGOING_STATES:
            raise StoreError(f"Invalid state for an outgoing message: {state}")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE messages SET state = ?, failure = ? "
                "WHERE contact_id = ? AND direction = 'out' AND message_id = ?",
                (state, failure, contact_id, message_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"Message not found: {message_id}")

    def pending_outgoing(self, contact_id: int) -> list[Message]:
        """Messages still to deliver (queued or sent), in sequence order."""
        rows = self._query(  # the state index: the seq one would walk the whole history
            "SELECT * FROM messages INDEXED BY messages_out_state "
            "WHERE contact_id = ? AND direction = 'out' "
            "AND state IN ('queued', 'sent') ORDER BY seq",
            (contact_id,),
        )
        return [Message.from_row(row) for row in rows]

    def expire_queued(self, older_than: float) -> list[Message]:
        """Fail queued messages created before `older_than` (all contacts); return them."""
        with self._tx() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM messages WHERE direction = 'out' AND state = 'queued' "
                    "AND created < ? ORDER BY contact_id, seq",
                    (older_than,),
                )
            ]
            conn.executemany(
                "UPDATE messages SET state = 'failed', failure = 'expired' WHERE id = ?",
                [(row_id,) for row_id in ids],
            )
            return [self._message(conn, row_id) for row_id in ids]

    def history(
        self, contact_id: int, limit: int = 50, before: int | None = None
    ) -> list[Message]:
        """The newest `limit` messages (older than row id `before` if given), oldest first."""
        if limit < 1:
            raise StoreError("The history limit must be at least 1")
        if before is None:
            rows = self._query(
                "SELECT * FROM messages WHERE contact_id = ? ORDER BY id DESC LIMIT ?",
                (contact_id, limit),
            )
        else:
            rows = self._query(
                "SELECT * FROM messages WHERE contact_id = ? AND id < ? "
                "ORDER BY id DESC LIMIT ?",
                (contact_id, before, limit),
            )
        return [Message.from_row(row) for row in reversed(rows)]

    def mark_read(self, contact_id: int) -> int:
        """Mark the contact's incoming messages read; return how many were unread."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE messages SET read = 1 "
                "WHERE contact_id = ? AND direction = 'in' AND read = 0",
                (contact_id,),
            )
            return cur.rowcount

    # ---- messages held from strangers ----------------------------------------------

    def hold_message(
        self,
        fingerprint: bytes,
        bundle: str,
        message_id: str,
        body: str,
        created: float,
        max_count: int,
        max_bytes: int,
        seq: int = 0,
    ) -> bool:
        """Keep a stranger's message (and its sequence number) for the user to decide on.

        Returns False, storing nothing, when this sender already has `max_count` messages
        held or the bodies (UTF-8 bytes; the bundle is not counted) would pass `max_bytes`.
        A message_id already held returns True without storing it twice.
        """
        fingerprint = _fingerprint(fingerprint)
        size = len(body.encode("utf-8"))
        with self._tx() as conn:
            held = conn.execute(
                "SELECT 1 FROM held_messages WHERE fingerprint = ? AND message_id = ?",
                (fingerprint, message_id),
            ).fetchone()
            if held is not None:
                return True
            count, total = conn.execute(
                "SELECT count(*), coalesce(sum(length(CAST(body AS BLOB))), 0) "
                "FROM held_messages WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
            if count >= max_count or total + size > max_bytes:
                return False
            conn.execute(
                "INSERT INTO held_messages (fingerprint, bundle, message_id, body, created, seq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (fingerprint, bundle, message_id, body, created, seq),
            )
            return True

    def held_senders(self) -> dict[bytes, int]:
        """fingerprint -> number of held messages, for listing strangers and global caps."""
        rows = self._query(
            "SELECT fingerprint, count(*) FROM held_messages GROUP BY fingerprint "
            "ORDER BY min(id)"
        )
        return {bytes(row[0]): row[1] for row in rows}

    def take_held(self, fingerprint: bytes) -> list[HeldMessage]:
        """Return this stranger's held messages in the sender's order and delete them."""
        fingerprint = _fingerprint(fingerprint)
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM held_messages WHERE fingerprint = ? ORDER BY seq, id",
                (fingerprint,),
            ).fetchall()
            conn.execute("DELETE FROM held_messages WHERE fingerprint = ?", (fingerprint,))
            return [HeldMessage.from_row(row) for row in rows]

    def drop_held(self, fingerprint: bytes) -> int:
        """Delete this stranger's held messages; return how many there were."""
        fingerprint = _fingerprint(fingerprint)
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM held_messages WHERE fingerprint = ?", (fingerprint,)
            )
            return cur.rowcount

    # ---- file transfers --------------------------------------------------------------
    # Rows are plain dicts: lib/transfer.py owns their meaning and the state machine.

    TRANSFER_COLUMNS = ("transfer_id", "contact_id", "direction", "file_name", "path", "part_path",
                        "size", "chunk_size", "tag", "state", "stopped_by", "have", "sha256", "error")

    def add_transfer(self, **fields: Any) -> dict[str, Any]:
        """Insert a transfer; DuplicateError if its transfer_id is taken."""
        unknown = set(fields) - set(self.TRANSFER_COLUMNS)
        if unknown:
            raise StoreError(f"Unknown transfer fields: {sorted(unknown)}")
        now = time.time()
        names = list(fields) + ["created", "updated"]
        values = list(fields.values()) + [now, now]
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM transfers WHERE transfer_id = ?",
                            (fields["transfer_id"],)).fetchone() is not None:
                raise DuplicateError(f"transfer_id {fields['transfer_id']!r} is already used")
            cur = conn.execute(
                f"INSERT INTO transfers ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values)
            return dict(conn.execute("SELECT * FROM transfers WHERE id = ?", (cur.lastrowid,)).fetchone())

    def update_transfer(self, transfer_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(self.TRANSFER_COLUMNS)
        if unknown:
            raise StoreError(f"Unknown transfer fields: {sorted(unknown)}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._tx() as conn:
            conn.execute(f"UPDATE transfers SET {sets}, updated = ? WHERE transfer_id = ?",
                         (*fields.values(), time.time(), transfer_id))

    def get_transfer(self, transfer_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM transfers WHERE transfer_id = ?", (transfer_id,))
        return dict(rows[0]) if rows else None

    def list_transfers(self, states: tuple[str, ...] | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Transfers (in these states), newest first."""
        if states:
            rows = self._query(
                f"SELECT * FROM transfers WHERE state IN ({', '.join('?' * len(states))}) "
                "ORDER BY id DESC LIMIT ?", (*states, limit))
        else:
            rows = self._query("SELECT * FROM transfers ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]
