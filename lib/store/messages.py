"""Chat messages with contacts, both directions, and each contact's receive position
(`store.messages`).

The messaging layer owns the delivery logic (sequence numbers, acknowledgements, resends);
this repository only keeps what must survive a restart, in as few transactions as the
messaging pass allows: a pass stores every outgoing message in one (`add_outgoing_many`) and
every received one in one (`deliver_incoming_many`).
"""
from __future__ import annotations

import dataclasses
import sqlite3
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ..util import iso_utc
from ..contract import MessageState
from .errors import DuplicateError, InvalidValueError, NotFoundError, StoreError
from .fields import iso_or_none

if TYPE_CHECKING:
    from .database import Store

Direction = Literal["in", "out"]


OUTGOING_STATES = (MessageState.QUEUED, MessageState.SENT, MessageState.DELIVERED,
                   MessageState.FAILED)

# Column text -> member by one dict lookup: MessageState(text) costs several times more, per row.
_STATE = MappingProxyType({state.value: state for state in MessageState})
_OUTGOING_STATE = MappingProxyType({state.value: state for state in OUTGOING_STATES})


@dataclasses.dataclass
class Message:
    """One row of `messages`, incoming or outgoing."""

    id: int
    contact_id: int
    message_id: str
    direction: Direction
    body: str
    created: float
    received: float | None
    state: MessageState
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
            state=_STATE[row["state"]],
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
            "received": iso_or_none(self.received),
            "state": self.state,
            "seq": self.seq,
            "read": self.read,
            "failure": self.failure,
        }


def _outgoing_state(state: str) -> MessageState:
    """The member for a state an outgoing message may take, else StoreError."""
    member = _OUTGOING_STATE.get(state)
    if member is None:
        raise StoreError(f"Invalid state for an outgoing message: {state}")
    return member


def _require_contact(conn: sqlite3.Connection, contact_id: int) -> None:
    if conn.execute("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)).fetchone() is None:
        raise NotFoundError(f"Peer not found: #{contact_id}")


def _message(conn: sqlite3.Connection, row_id: int) -> Message:
    return Message.from_row(
        conn.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
    )


class MessageRepository:
    """The `messages` table, and `contacts.in_seq` (how far a contact's messages arrived).

    in_seq is the only `contacts` column written here: it is not a `Contact` field, so the
    contact index need not be dropped (see contacts.py)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # ---- outgoing ------------------------------------------------------------------

    def add_outgoing(
        self,
        contact_id: int,
        message_id: str,
        body: str,
        created: float,
        state: str = MessageState.QUEUED,
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
        with self._store.transaction() as conn:
            for contact_id, message_id, body, created, state in items:
                member = _OUTGOING_STATE.get(state)  # _outgoing_state(), without a raise per item
                if member is None:
                    results.append(StoreError(f"Invalid state for an outgoing message: {state}"))
                    continue
                seq = next_seq.get(contact_id)
                if seq is None:
                    try:
                        _require_contact(conn, contact_id)
                    except NotFoundError as exc:
                        results.append(exc)
                        continue
                    seq = conn.execute(
                        "SELECT max(coalesce(max(seq), 0), "
                        "(SELECT out_seq_floor FROM contacts WHERE id = ?)) + 1 FROM messages "
                        "WHERE contact_id = ? AND direction = 'out'",
                        (contact_id, contact_id),
                    ).fetchone()[0]
                cur = conn.execute(
                    "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                    "state, seq, read) VALUES (?, ?, 'out', ?, ?, ?, ?, 1) "
                    "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                    (contact_id, message_id, body, created, member, seq),
                )
                next_seq[contact_id] = seq + cur.rowcount
                if cur.rowcount != 1:
                    results.append(DuplicateError(f"Message {message_id} already exists"))
                    continue
                results.append(Message(cur.lastrowid, contact_id, message_id, "out", body, created,
                                       None, member, seq, True, None))
        return results

    def mark_sent_ranges(self, contact_id: int, ranges: list[tuple[int, int]]) -> None:
        """Outgoing messages still queued with a seq in these ranges become sent (one transaction)."""
        if not ranges:
            return
        with self._store.transaction() as conn:
            conn.executemany(
                "UPDATE messages SET state = 'sent' WHERE contact_id = ? AND direction = 'out' "
                "AND seq BETWEEN ? AND ? AND state = 'queued'",
                [(contact_id, first, last) for first, last in ranges],
            )

    def mark_delivered_ranges(
        self, contact_id: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, str]]:
        """Outgoing messages with a seq in these inclusive ranges, still queued or sent, become
        delivered, in one transaction; returns their (seq, message_id) in seq order."""
        done: list[tuple[int, str]] = []
        if not ranges:
            return done
        with self._store.transaction() as conn:
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

    def set_state(
        self, contact_id: int, message_id: str, state: str, failure: str | None = None
    ) -> None:
        """Set an outgoing message's state (and failure reason, cleared when None).

        The store does not police transitions: the messaging layer owns that logic.
        """
        member = _outgoing_state(state)
        with self._store.transaction() as conn:
            cur = conn.execute(
                "UPDATE messages SET state = ?, failure = ? "
                "WHERE contact_id = ? AND direction = 'out' AND message_id = ?",
                (member, failure, contact_id, message_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"Message not found: {message_id}")

    def pending_outgoing(self, contact_id: int) -> list[Message]:
        """Messages still to deliver (queued or sent), in sequence order."""
        rows = self._store.query(  # the state index: the seq one would walk the whole history
            "SELECT * FROM messages INDEXED BY messages_out_state "
            "WHERE contact_id = ? AND direction = 'out' "
            "AND state IN ('queued', 'sent') ORDER BY seq",
            (contact_id,),
        )
        return [Message.from_row(row) for row in rows]

    def expire_queued(self, older_than: float) -> list[Message]:
        """Fail queued messages created before `older_than` (all contacts); return them."""
        with self._store.transaction() as conn:
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
            return [_message(conn, row_id) for row_id in ids]

    # ---- incoming ------------------------------------------------------------------

    def add_incoming(
        self, contact_id: int, message_id: str, body: str, created: float, received: float
    ) -> tuple[Message, bool]:
        """Store a received message; a repeated message_id returns the stored one and False.

        For messages released from the held table (no sequence number of their own)."""
        with self._store.transaction() as conn:
            _require_contact(conn, contact_id)
            cur = conn.execute(
                "INSERT INTO messages (contact_id, message_id, direction, body, created, "
                "received, state, read) VALUES (?, ?, 'in', ?, ?, ?, 'received', 0) "
                "ON CONFLICT (contact_id, direction, message_id) DO NOTHING",
                (contact_id, message_id, body, created, received),
            )
            if cur.rowcount == 1:
                return _message(conn, cur.lastrowid), True
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
        """Store a run of received messages (seq, message_id, body, created) in sequence order
        AND advance the contact's in_seq to the last seq, in ONE transaction. Returns, per
        message, True if it is new (False: a copy, recognised by its message_id).

        The acknowledgement is sent only after this commits, so a crash in between makes the
        sender resend, and the resent copy is recognised by its message_id."""
        if not items:
            return []
        new: list[bool] = []
        with self._store.transaction() as conn:
            _require_contact(conn, contact_id)
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

    def has_incoming(self, contact_id: int, message_id: str) -> bool:
        rows = self._store.query(
            "SELECT 1 FROM messages WHERE contact_id = ? AND direction = 'in' AND message_id = ?",
            (contact_id, message_id),
        )
        return bool(rows)

    def in_seq(self, contact_id: int) -> int:
        """The highest sequence number delivered in order from this contact."""
        rows = self._store.query("SELECT in_seq FROM contacts WHERE id = ?", (contact_id,))
        if not rows:
            raise NotFoundError(f"Peer not found: #{contact_id}")
        return int(rows[0][0])

    def set_in_seq(self, contact_id: int, seq: int) -> None:
        """Set the receive position (a stranger's held messages became a contact's)."""
        with self._store.transaction() as conn:
            conn.execute("UPDATE contacts SET in_seq = ? WHERE id = ?", (seq, contact_id))

    # ---- reading -------------------------------------------------------------------

    def history(
        self, contact_id: int, limit: int = 50, before: int | None = None
    ) -> list[Message]:
        """The newest `limit` messages (older than row id `before` if given), oldest first."""
        if limit < 1:
            raise InvalidValueError("The history limit must be at least 1")
        if before is None:
            rows = self._store.query(
                "SELECT * FROM messages WHERE contact_id = ? ORDER BY id DESC LIMIT ?",
                (contact_id, limit),
            )
        else:
            rows = self._store.query(
                "SELECT * FROM messages WHERE contact_id = ? AND id < ? "
                "ORDER BY id DESC LIMIT ?",
                (contact_id, before, limit),
            )
        return [Message.from_row(row) for row in reversed(rows)]

    def unread_counts(self) -> dict[int, int]:
        """contact_id -> unread incoming messages; contacts with none are left out."""
        rows = self._store.query(
            "SELECT contact_id, count(*) FROM messages "
            "WHERE direction = 'in' AND read = 0 GROUP BY contact_id"
        )
        return {row[0]: row[1] for row in rows}

    def mark_read(self, contact_id: int) -> int:
        """Mark the contact's incoming messages read; return how many were unread."""
        with self._store.transaction() as conn:
            cur = conn.execute(
                "UPDATE messages SET read = 1 "
                "WHERE contact_id = ? AND direction = 'in' AND read = 0",
                (contact_id,),
            )
            return cur.rowcount

    def search(self, text: str, contact_id: int | None = None, limit: int = 50) -> list[Message]:
        """Messages whose body holds every word of `text` (as a word prefix, case and accents
        folded), newest first; one contact's only when `contact_id` is given."""
        query = fts_query(text)
        where = " AND m.contact_id = ?" if contact_id is not None else ""
        args: tuple[Any, ...] = (query, contact_id, limit) if contact_id is not None else (query, limit)
        rows = self._store.query(
            "SELECT m.* FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid "
            f"WHERE messages_fts MATCH ?{where} ORDER BY messages_fts.rowid DESC LIMIT ?",
            args,
        )
        return [Message.from_row(row) for row in rows]

    # ---- deleting ------------------------------------------------------------------

    def delete(self, contact_id: int, message_id: str | None = None) -> tuple[int, int]:
        """Delete one message (both directions may use the id) or, with no id, the whole
        conversation, from the history and the search index. Returns (deleted, kept).

        Outgoing messages still queued or sent are kept: the messaging layer may still send
        them, and the receiver waits for every sequence number in turn. The highest deleted
        outgoing seq is remembered so that the next message does not reuse it."""
        pending = "direction = 'out' AND state IN ('queued', 'sent')"
        match = "contact_id = ?" + (" AND message_id = ?" if message_id is not None else "")
        args: tuple[Any, ...] = (contact_id, message_id) if message_id is not None else (contact_id,)
        with self._store.transaction() as conn:
            _require_contact(conn, contact_id)
            kept = conn.execute(f"SELECT count(*) FROM messages WHERE {match} AND {pending}", args).fetchone()[0]
            top = conn.execute(
                f"SELECT max(seq) FROM messages WHERE {match} AND direction = 'out' AND NOT ({pending})",
                args).fetchone()[0]
            if top is not None:
                conn.execute("UPDATE contacts SET out_seq_floor = max(out_seq_floor, ?) WHERE id = ?",
                             (top, contact_id))
            deleted = conn.execute(f"DELETE FROM messages WHERE {match} AND NOT ({pending})", args).rowcount
        if message_id is not None and deleted == 0 and kept == 0:
            raise NotFoundError(f"Message not found: {message_id}")
        return deleted, kept


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query: each one a quoted prefix, so that no character of
    theirs is read as query syntax (a stray `"`, `*`, `NEAR`, `-`)."""
    words = text.split()
    if not words:
        raise InvalidValueError("Search for at least one word")
    return " ".join('"' + word.replace('"', '""') + '"*' for word in words)
