"""The schema: migrations applied in order, counted by `PRAGMA user_version`.

Why a list and not a schema to compare: an existing chatp2p.db must open and keep its data, so
every change is a step from the previous version. Add a table or column by appending a
migration; never edit one that has shipped.
"""
from __future__ import annotations

import pathlib
import sqlite3

from .errors import StoreError

Migration = tuple[str, ...]

# Each migration is a tuple of SQL statements run in one transaction, after which
# user_version is set to its 1-based position. foreign_keys is ON while they run: a
# migration that rebuilds a table must take care of that itself.
MIGRATIONS: tuple[Migration, ...] = (
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
    # 6: the LAN pair secret shared with a contact since a session (PROTOCOL §8); NULL until then.
    ("ALTER TABLE contacts ADD COLUMN lan_secret BLOB CHECK (lan_secret IS NULL OR length(lan_secret) = 32)",),
    # 7: the pair secret before the current one: a session can end before both ends stored its
    # new secret, and online mode's pairwise DHT slots (PROTOCOL §12) must still meet.
    ("ALTER TABLE contacts ADD COLUMN previous_lan_secret BLOB "
     "CHECK (previous_lan_secret IS NULL OR length(previous_lan_secret) = 32)",),
    # 8: full-text search over message bodies (FTS5, accents folded: "cafe" finds "café"), kept
    # in step with `messages` by triggers; and the highest outgoing seq of deleted messages, so
    # deleting the newest messages never hands their sequence numbers out again.
    (
        """
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            body, content='messages', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        )
        """,
        """
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
        END
        """,
        """
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
        END
        """,
        """
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
            INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
        END
        """,
        "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
        "ALTER TABLE contacts ADD COLUMN out_seq_floor INTEGER NOT NULL DEFAULT 0",
    ),
    # 9: group chats (PROTOCOL §13): the groups, their signed records (the DAG every member
    # holds a copy of), the sender keys received, the messages shown, who has which of ours,
    # and each author's floor (the lowest seq kept after pruning).
    (
        """
        CREATE TABLE groups (
            id INTEGER PRIMARY KEY,
            group_id BLOB NOT NULL UNIQUE CHECK (length(group_id) = 16),
            name TEXT NOT NULL,
            created REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'left', 'removed')),
            my_seq INTEGER NOT NULL DEFAULT 0 CHECK (my_seq >= 0),
            key_epoch INTEGER NOT NULL DEFAULT 0 CHECK (key_epoch >= 0),
            sender_key BLOB CHECK (sender_key IS NULL OR length(sender_key) = 32),
            key_recipients TEXT NOT NULL DEFAULT '[]',
            records_since_hybrid INTEGER NOT NULL DEFAULT 0,
            last_hybrid_seq INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE group_records (
            id INTEGER PRIMARY KEY,
            group_ref INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
            author BLOB NOT NULL CHECK (length(author) = 32),
            seq INTEGER NOT NULL CHECK (seq >= 1),
            kind INTEGER NOT NULL,
            depth INTEGER NOT NULL CHECK (depth >= 1),
            data BLOB NOT NULL,
            received REAL NOT NULL,
            UNIQUE (group_ref, author, seq)
        )
        """,
        "CREATE INDEX group_records_order ON group_records (group_ref, kind, depth, hash)",
        "CREATE INDEX group_records_received ON group_records (group_ref, received)",
        """
        CREATE TABLE group_keys (
            group_ref INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            author BLOB NOT NULL CHECK (length(author) = 32),
            epoch INTEGER NOT NULL CHECK (epoch >= 1),
            key BLOB NOT NULL CHECK (length(key) = 32),
            PRIMARY KEY (group_ref, author, epoch)
        )
        """,
        """
        CREATE TABLE group_messages (
            id INTEGER PRIMARY KEY,
            group_ref INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
            author BLOB NOT NULL CHECK (length(author) = 32),
            message_id TEXT NOT NULL,
            depth INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('text', 'file', 'gap')),
            body TEXT NOT NULL,
            file TEXT,
            created REAL NOT NULL,
            received REAL,
            outgoing INTEGER NOT NULL DEFAULT 0 CHECK (outgoing IN (0, 1)),
            read INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
            pq_verified INTEGER NOT NULL DEFAULT 0 CHECK (pq_verified IN (0, 1))
        )
        """,
        "CREATE INDEX group_messages_order ON group_messages (group_ref, depth, hash)",
        "CREATE INDEX group_messages_unread ON group_messages (group_ref, read)",
        "CREATE UNIQUE INDEX group_messages_own_id ON group_messages (group_ref, message_id) WHERE outgoing = 1",
        """
        CREATE TABLE group_deliveries (
            group_ref INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            record_hash BLOB NOT NULL CHECK (length(record_hash) = 32),
            member BLOB NOT NULL CHECK (length(member) = 32),
            PRIMARY KEY (record_hash, member)
        )
        """,
        """
        CREATE TABLE group_floors (
            group_ref INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            author BLOB NOT NULL CHECK (length(author) = 32),
            floor INTEGER NOT NULL CHECK (floor >= 1),
            PRIMARY KEY (group_ref, author)
        )
        """,
    ),
    # 10: transfers with group peers (PROTOCOL §13.4, §13.7): a transfer's peer is a contact
    # (contact_id) or, for a member of a group who is not a contact, its fingerprint
    # (peer_fingerprint); group_id marks a group file's transfers. SQLite cannot drop a NOT
    # NULL, so the table is rebuilt (nothing references it).
    (
        """
        CREATE TABLE transfers_new (
            id INTEGER PRIMARY KEY,
            transfer_id TEXT NOT NULL UNIQUE,
            contact_id INTEGER REFERENCES contacts(id) ON DELETE CASCADE,
            peer_fingerprint BLOB CHECK (peer_fingerprint IS NULL OR length(peer_fingerprint) = 32),
            group_id BLOB CHECK (group_id IS NULL OR length(group_id) = 16),
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
            updated REAL NOT NULL,
            CHECK ((contact_id IS NULL) != (peer_fingerprint IS NULL))
        )
        """,
        "INSERT INTO transfers_new (id, transfer_id, contact_id, direction, file_name, path, part_path, size, "
        "chunk_size, tag, state, stopped_by, have, sha256, error, created, updated) "
        "SELECT id, transfer_id, contact_id, direction, file_name, path, part_path, size, chunk_size, tag, "
        "state, stopped_by, have, sha256, error, created, updated FROM transfers",
        "DROP TABLE transfers",
        "ALTER TABLE transfers_new RENAME TO transfers",
        "CREATE INDEX transfers_state ON transfers (state)",
    ),
)


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...], path: pathlib.Path) -> None:
    """Apply the migrations the file lacks, each in its own transaction; refuse a file from a
    newer version (its data would be misread)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    known = len(migrations)
    if version > known:
        raise StoreError(
            f"Database {path} has schema version {version}, but this version of "
            f"ChatP2P only knows up to {known}: upgrade ChatP2P to open it"
        )
    for number in range(version + 1, known + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
