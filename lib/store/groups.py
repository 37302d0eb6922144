"""Group chats (`store.groups`): the groups this node is in, their records, keys, the
messages shown, deliveries and floors (PROTOCOL §13).

The group service owns the meaning (membership replay, acceptance, keys, anti-entropy); this
repository keeps what a restart needs, in one transaction per call, so the service publishes
an event only after what it announces is committed (exactly once, like messages.py).

Records are stored as their encoded bytes with the few decoded fields the queries need
(author, seq, kind, depth): the store decodes nothing. `add_records` takes any object with
those fields and `hash()`/`encode()` (the codec's `Record`).
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import TYPE_CHECKING, Any, Iterable, Literal, Protocol, Sequence, TypeVar

from ..codec.grouprecord import OPERATIONS, Kind
from .errors import DuplicateError, InvalidValueError, NotFoundError
from .fields import check_fingerprint

if TYPE_CHECKING:
    from .database import Store

GROUP_ID_SIZE = 16
HASH_SIZE = 32
GroupState = Literal["active", "left", "removed"]
GROUP_STATES: tuple[GroupState, ...] = ("active", "left", "removed")
MessageKind = Literal["text", "file", "gap"]
MESSAGE_KINDS: tuple[MessageKind, ...] = ("text", "file", "gap")

# Record kinds the queries need: operations are never pruned, and each author's latest KEY
# is kept (a member back after the retention period still needs it).
OPERATION_KINDS = tuple(sorted(int(kind) for kind in OPERATIONS))
KEY_KIND = int(Kind.KEY)
MESSAGE_KIND = int(Kind.MESSAGE)


class StorableRecord(Protocol):
    """What the store reads of a record (the codec's `Record` has it)."""

    @property
    def author(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def depth(self) -> int: ...
    def hash(self) -> bytes: ...
    def encode(self) -> bytes: ...


R = TypeVar("R", bound=StorableRecord)


class NewRecords(list[R]):
    """The records `add_records` stored (a list, in the order given), and in `forks` those it
    refused because another record already holds their (author, seq) (PROTOCOL §13.5)."""

    def __init__(self, new: Iterable[R] = (), forks: Iterable[R] = ()) -> None:
        super().__init__(new)
        self.forks: list[R] = list(forks)


@dataclasses.dataclass(frozen=True)
class Group:
    """One row of `groups`: a group this node is (or was) a member of, and its own writer
    state in it (its seq, its sender key and to whom it was sent, hybrid-signature counters)."""

    id: int
    group_id: bytes
    name: str
    created: float
    state: GroupState
    my_seq: int
    key_epoch: int
    sender_key: bytes | None
    key_recipients: frozenset[bytes]
    records_since_hybrid: int
    last_hybrid_seq: int

    @property
    def hex(self) -> str:
        """The group id as the API shows it: 32 hex digits."""
        return self.group_id.hex()

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Group:
        return cls(
            id=row["id"], group_id=bytes(row["group_id"]), name=row["name"], created=row["created"],
            state=row["state"], my_seq=row["my_seq"], key_epoch=row["key_epoch"],
            sender_key=None if row["sender_key"] is None else bytes(row["sender_key"]),
            key_recipients=frozenset(bytes.fromhex(fp) for fp in json.loads(row["key_recipients"])),
            records_since_hybrid=row["records_since_hybrid"], last_hybrid_seq=row["last_hybrid_seq"],
        )


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One row of `group_records`: the encoded record and the fields the queries use."""

    hash: bytes
    author: bytes
    seq: int
    kind: int
    depth: int
    data: bytes
    received: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredRecord:
        return cls(bytes(row["hash"]), bytes(row["author"]), row["seq"], row["kind"], row["depth"],
                   bytes(row["data"]), row["received"])


@dataclasses.dataclass(frozen=True)
class GroupMessage:
    """One row of `group_messages`: a message shown in a group's history, or a gap marker
    (`kind` "gap", `body` the number of messages no longer available, as text)."""

    id: int
    group_ref: int
    hash: bytes                 # the record's hash; a gap's is derived by the service
    author: bytes
    message_id: str
    depth: int
    kind: MessageKind
    body: str
    file: dict[str, Any] | None
    created: float
    received: float | None
    outgoing: bool
    read: bool
    pq_verified: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> GroupMessage:
        return cls(
            id=row["id"], group_ref=row["group_ref"], hash=bytes(row["hash"]), author=bytes(row["author"]),
            message_id=row["message_id"], depth=row["depth"], kind=row["kind"], body=row["body"],
            file=None if row["file"] is None else json.loads(row["file"]), created=row["created"],
            received=row["received"], outgoing=bool(row["outgoing"]), read=bool(row["read"]),
            pq_verified=bool(row["pq_verified"]),
        )


# The columns `update_group` may set.
GROUP_COLUMNS = ("name", "state", "my_seq", "key_epoch", "sender_key", "key_recipients",
                 "records_since_hybrid", "last_hybrid_seq")

def _ref(group: Group | int) -> int:
    return group.id if isinstance(group, Group) else int(group)


def _check_size(value: bytes, size: int, what: str) -> bytes:
    value = bytes(value)
    if len(value) != size:
        raise InvalidValueError(f"A {what} is {size} bytes, not {len(value)}")
    return value


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class GroupRepository:
    """The tables of migration 9: groups, group_records, group_keys, group_messages,
    group_deliveries, group_floors."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # ---- groups --------------------------------------------------------------------

    def create_group(self, group_id: bytes, name: str, created: float) -> Group:
        """Insert a group (active, nothing written yet); DuplicateError if already held."""
        group_id = _check_size(group_id, GROUP_ID_SIZE, "group id")
        with self._store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO groups (group_id, name, created) VALUES (?, ?, ?) "
                "ON CONFLICT (group_id) DO NOTHING", (group_id, name, created))
            if cur.rowcount != 1:
                raise DuplicateError(f"Group {group_id.hex()} already exists")
            return Group.from_row(conn.execute("SELECT * FROM groups WHERE id = ?", (cur.lastrowid,)).fetchone())

    def find(self, group_id: bytes) -> Group | None:
        """The group with this 16-byte id, or None (a frame for a group we do not know)."""
        rows = self._store.query("SELECT * FROM groups WHERE group_id = ?", (bytes(group_id),))
        return Group.from_row(rows[0]) if rows else None

    def get_group(self, key: str) -> Group:
        """A group by its 32-hex-digit id or its name (ASCII case folded); NotFoundError if
        none, InvalidValueError if several groups have that name (the id tells them apart)."""
        text = key.strip()
        if len(text) == 2 * GROUP_ID_SIZE:
            try:
                found = self.find(bytes.fromhex(text))
            except ValueError:
                found = None
            if found is not None:
                return found
        rows = self._store.query("SELECT * FROM groups WHERE name = ? COLLATE NOCASE ORDER BY id", (text,))
        if not rows:
            raise NotFoundError(f"Group not found: {key}")
        if len(rows) > 1:
            ids = ", ".join(bytes(row["group_id"]).hex() for row in rows)
            raise InvalidValueError(f"Several groups are named {key}: give the group id ({ids})")
        return Group.from_row(rows[0])

    def get_by_ref(self, group: Group | int) -> Group:
        """The current row of a group (a `Group` handed out earlier may be stale)."""
        rows = self._store.query("SELECT * FROM groups WHERE id = ?", (_ref(group),))
        if not rows:
            raise NotFoundError(f"Group not found: #{_ref(group)}")
        return Group.from_row(rows[0])

    def list_groups(self, states: Sequence[GroupState] | None = None) -> list[Group]:
        """Groups (in these states), oldest first."""
        if states:
            rows = self._store.query(
                f"SELECT * FROM groups WHERE state IN ({_placeholders(len(states))}) ORDER BY id", tuple(states))
        else:
            rows = self._store.query("SELECT * FROM groups ORDER BY id")
        return [Group.from_row(row) for row in rows]

    def count(self, states: Sequence[GroupState] = ("active",)) -> int:
        """How many groups are in these states (the per-node cap counts the active ones)."""
        return self._store.query(
            f"SELECT count(*) FROM groups WHERE state IN ({_placeholders(len(states))})", tuple(states))[0][0]

    def update_group(self, group: Group | int, **fields: Any) -> Group:
        """Set these columns (names from GROUP_COLUMNS; `key_recipients` an iterable of
        fingerprints) and return the new row."""
        unknown = set(fields) - set(GROUP_COLUMNS)
        if unknown:
            raise InvalidValueError(f"Unknown group fields: {sorted(unknown)}")
        if "state" in fields and fields["state"] not in GROUP_STATES:
            raise InvalidValueError(f"Invalid group state: {fields['state']}")
        if "key_recipients" in fields:
            fields["key_recipients"] = json.dumps(sorted(check_fingerprint(fp).hex() for fp in fields["key_recipients"]))
        if fields.get("sender_key") is not None:
            fields["sender_key"] = _check_size(fields["sender_key"], 32, "sender key")
        with self._store.transaction() as conn:
            if fields:
                sets = ", ".join(f"{name} = ?" for name in fields)
                conn.execute(f"UPDATE groups SET {sets} WHERE id = ?", (*fields.values(), _ref(group)))
            row = conn.execute("SELECT * FROM groups WHERE id = ?", (_ref(group),)).fetchone()
        if row is None:
            raise NotFoundError(f"Group not found: #{_ref(group)}")
        return Group.from_row(row)

    def delete_group(self, group: Group | int) -> None:
        """Forget a group and everything of it (a refused invitation)."""
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM groups WHERE id = ?", (_ref(group),))

    # ---- records -------------------------------------------------------------------

    def add_records(self, group: Group | int, records: Iterable[tuple[R, float]]) -> NewRecords[R]:
        """Store (record, received) pairs in ONE transaction; returns the new ones in the order
        given. A record already held (same hash) is skipped; one whose (author, seq) another
        record holds is a fork: not stored, listed in `.forks`."""
        ref = _ref(group)
        new: list[R] = []
        forks: list[R] = []
        with self._store.transaction() as conn:
            for record, received in records:
                digest = record.hash()
                cur = conn.execute(
                    "INSERT INTO group_records (group_ref, hash, author, seq, kind, depth, data, received) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (ref, digest, check_fingerprint(record.author), record.seq, int(record.kind), record.depth,
                     record.encode(), received))
                if cur.rowcount == 1:
                    new.append(record)
                elif conn.execute("SELECT 1 FROM group_records WHERE hash = ?", (digest,)).fetchone() is None:
                    forks.append(record)
        return NewRecords(new, forks)

    def has_record(self, record_hash: bytes) -> bool:
        return bool(self._store.query("SELECT 1 FROM group_records WHERE hash = ?", (bytes(record_hash),)))

    def record(self, record_hash: bytes) -> StoredRecord | None:
        rows = self._store.query("SELECT * FROM group_records WHERE hash = ?", (bytes(record_hash),))
        return StoredRecord.from_row(rows[0]) if rows else None

    def records_for(self, group: Group | int, author: bytes, seqs: Iterable[int]) -> list[bytes]:
        """The encoded records of `author` with these seqs that are held, in seq order."""
        wanted = sorted(set(seqs))
        found: list[bytes] = []
        for start in range(0, len(wanted), 500):  # SQLite caps bound parameters
            chunk = wanted[start:start + 500]
            rows = self._store.query(
                f"SELECT data FROM group_records WHERE group_ref = ? AND author = ? "
                f"AND seq IN ({_placeholders(len(chunk))}) ORDER BY seq", (_ref(group), bytes(author), *chunk))
            found.extend(bytes(row[0]) for row in rows)
        return found

    def operations(self, group: Group | int) -> list[bytes]:
        """Every operation held (never pruned), in the replay order (depth, hash)."""
        rows = self._store.query(
            f"SELECT data FROM group_records WHERE group_ref = ? AND kind IN ({_placeholders(len(OPERATION_KINDS))}) "
            "ORDER BY depth, hash", (_ref(group), *OPERATION_KINDS))
        return [bytes(row[0]) for row in rows]

    def records(self, group: Group | int, kinds: Sequence[int] | None = None) -> list[StoredRecord]:
        """Held records (of these kinds), in the order (depth, hash): what the service
        re-evaluates when the operations change, or loads at start."""
        if kinds:
            rows = self._store.query(
                f"SELECT * FROM group_records WHERE group_ref = ? AND kind IN ({_placeholders(len(kinds))}) "
                "ORDER BY depth, hash", (_ref(group), *kinds))
        else:
            rows = self._store.query("SELECT * FROM group_records WHERE group_ref = ? ORDER BY depth, hash",
                                     (_ref(group),))
        return [StoredRecord.from_row(row) for row in rows]

    def latest_records(self, group: Group | int) -> list[StoredRecord]:
        """Each author's record of highest seq: the candidates for a new record's parents."""
        rows = self._store.query(
            "SELECT r.* FROM group_records AS r JOIN (SELECT author, max(seq) AS top FROM group_records "
            "WHERE group_ref = ? GROUP BY author) AS t ON r.author = t.author AND r.seq = t.top "
            "WHERE r.group_ref = ? ORDER BY r.depth, r.hash", (_ref(group), _ref(group)))
        return [StoredRecord.from_row(row) for row in rows]

    def undecrypted(self, group: Group | int) -> list[StoredRecord]:
        """MESSAGE records held without a row in the history (no key yet, or a crash between
        storing the record and the message), in order."""
        rows = self._store.query(
            "SELECT r.* FROM group_records AS r LEFT JOIN group_messages AS m ON m.hash = r.hash "
            "WHERE r.group_ref = ? AND r.kind = ? AND m.id IS NULL ORDER BY r.depth, r.hash",
            (_ref(group), MESSAGE_KIND))
        return [StoredRecord.from_row(row) for row in rows]

    def held_seqs(self, group: Group | int) -> dict[bytes, list[int]]:
        """author -> the seqs held of that author, ascending (for HAVE)."""
        held: dict[bytes, list[int]] = {}
        for author, seq in self._store.query(
                "SELECT author, seq FROM group_records WHERE group_ref = ? ORDER BY author, seq", (_ref(group),)):
            held.setdefault(bytes(author), []).append(seq)
        return held

    def record_count(self, group: Group | int) -> int:
        return self._store.query("SELECT count(*) FROM group_records WHERE group_ref = ?", (_ref(group),))[0][0]

    def floors(self, group: Group | int) -> dict[bytes, int]:
        """author -> the lowest seq of that author still kept apart from operations, for the
        authors whose records were pruned; an author absent here lost nothing to pruning."""
        rows = self._store.query("SELECT author, floor FROM group_floors WHERE group_ref = ?", (_ref(group),))
        return {bytes(author): floor for author, floor in rows}

    def delete_records(self, hashes: Iterable[bytes]) -> int:
        """Remove records (no longer acceptable, or failing a depth check) and what the history
        and deliveries hold of them; returns how many records were removed."""
        wanted = [bytes(h) for h in hashes]
        removed = 0
        with self._store.transaction() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = _placeholders(len(chunk))
                removed += conn.execute(f"DELETE FROM group_records WHERE hash IN ({marks})", chunk).rowcount
                conn.execute(f"DELETE FROM group_messages WHERE hash IN ({marks})", chunk)
                conn.execute(f"DELETE FROM group_deliveries WHERE record_hash IN ({marks})", chunk)
        return removed

    def prune(self, group: Group | int, older_than: float, max_records: int | None = None) -> int:
        """Remove the records received before `older_than`, and then the oldest ones while more
        than `max_records` are held, but never an operation nor an author's latest KEY
        (PROTOCOL §13.9). What goes of an author is always a prefix of its seqs (everything up
        to the highest removed seq), so its floor, one above, is exact. The history keeps its
        messages. Returns how many records were removed."""
        ref = _ref(group)
        kept_kinds = _placeholders(len(OPERATION_KINDS))
        prunable = (f"group_ref = ? AND kind NOT IN ({kept_kinds}) AND hash NOT IN ("
                    "SELECT k.hash FROM group_records AS k WHERE k.group_ref = ? AND k.kind = ? AND k.seq = "
                    "(SELECT max(seq) FROM group_records AS l WHERE l.group_ref = ? AND l.author = k.author "
                    "AND l.kind = ?))")
        args = (ref, *OPERATION_KINDS, ref, KEY_KIND, ref, KEY_KIND)
        with self._store.transaction() as conn:
            cuts: dict[bytes, int] = {}
            for author, top in conn.execute(
                    f"SELECT author, max(seq) FROM group_records WHERE {prunable} AND received < ? GROUP BY author",
                    (*args, older_than)):
                cuts[bytes(author)] = top
            if max_records is not None:
                excess = conn.execute("SELECT count(*) FROM group_records WHERE group_ref = ?",
                                      (ref,)).fetchone()[0] - max_records
                if excess > 0:
                    for author, seq in conn.execute(
                            f"SELECT author, seq FROM group_records WHERE {prunable} "
                            "ORDER BY received, id LIMIT ?", (*args, excess)):
                        cuts[bytes(author)] = max(cuts.get(bytes(author), 0), seq)
            removed = 0
            for author, top in cuts.items():
                removed += conn.execute(f"DELETE FROM group_records WHERE {prunable} AND author = ? AND seq <= ?",
                                        (*args, author, top)).rowcount
                conn.execute("INSERT INTO group_floors (group_ref, author, floor) VALUES (?, ?, ?) "
                             "ON CONFLICT (group_ref, author) DO UPDATE SET floor = max(floor, excluded.floor)",
                             (ref, author, top + 1))
        return removed

    # ---- sender keys ---------------------------------------------------------------

    def put_key(self, group: Group | int, author: bytes, epoch: int, key: bytes) -> bool:
        """Keep a member's sender key of an epoch; False if that one was already held (the
        first one stays: a KEY record is signed, two for one epoch is the author's fork)."""
        with self._store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO group_keys (group_ref, author, epoch, key) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (_ref(group), check_fingerprint(author), epoch, _check_size(key, 32, "sender key")))
            return cur.rowcount == 1

    def get_key(self, group: Group | int, author: bytes, epoch: int) -> bytes | None:
        rows = self._store.query("SELECT key FROM group_keys WHERE group_ref = ? AND author = ? AND epoch = ?",
                                 (_ref(group), bytes(author), epoch))
        return bytes(rows[0][0]) if rows else None

    # ---- the history ---------------------------------------------------------------

    def add_message(self, group: Group | int, *, hash: bytes, author: bytes, message_id: str, depth: int,
                    kind: MessageKind, body: str, created: float, received: float | None,
                    outgoing: bool = False, file: dict[str, Any] | None = None,
                    pq_verified: bool = False) -> GroupMessage | None:
        """Show a message (or a gap) in the history; None if its hash is already there (a copy:
        no event). Our own messages are born read; DuplicateError if our message_id is taken."""
        if kind not in MESSAGE_KINDS:
            raise InvalidValueError(f"Invalid group message kind: {kind}")
        with self._store.transaction() as conn:
            if outgoing and conn.execute(
                    "SELECT 1 FROM group_messages WHERE group_ref = ? AND message_id = ? AND outgoing = 1",
                    (_ref(group), message_id)).fetchone() is not None:
                raise DuplicateError(f"Message {message_id} already exists")
            cur = conn.execute(
                "INSERT INTO group_messages (group_ref, hash, author, message_id, depth, kind, body, file, "
                "created, received, outgoing, read, pq_verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (hash) DO NOTHING",
                (_ref(group), _check_size(hash, HASH_SIZE, "record hash"), check_fingerprint(author), message_id,
                 depth, kind, body, None if file is None else json.dumps(file), created, received,
                 int(outgoing), int(outgoing), int(pq_verified)))
            if cur.rowcount != 1:
                return None
            return GroupMessage.from_row(conn.execute("SELECT * FROM group_messages WHERE id = ?",
                                                      (cur.lastrowid,)).fetchone())

    def message(self, record_hash: bytes) -> GroupMessage | None:
        rows = self._store.query("SELECT * FROM group_messages WHERE hash = ?", (bytes(record_hash),))
        return GroupMessage.from_row(rows[0]) if rows else None

    def own_message(self, group: Group | int, message_id: str) -> GroupMessage | None:
        """Our own message with this message_id (the API caller's), or None."""
        rows = self._store.query(
            "SELECT * FROM group_messages WHERE group_ref = ? AND message_id = ? AND outgoing = 1",
            (_ref(group), message_id))
        return GroupMessage.from_row(rows[0]) if rows else None

    def outgoing_messages(self, group: Group | int) -> list[GroupMessage]:
        """Our own messages in the group (the service tracks their deliveries), in order."""
        rows = self._store.query("SELECT * FROM group_messages WHERE group_ref = ? AND outgoing = 1 "
                                 "ORDER BY depth, hash", (_ref(group),))
        return [GroupMessage.from_row(row) for row in rows]

    def history(self, group: Group | int, limit: int = 50, before: bytes | None = None) -> list[GroupMessage]:
        """The last `limit` messages in the group's order (depth, hash), oldest first; with
        `before` (a message's hash), those that come before it. NotFoundError if `before`
        is not a message of this group."""
        if limit < 1:
            raise InvalidValueError("The history limit must be at least 1")
        ref = _ref(group)
        if before is None:
            rows = self._store.query(
                "SELECT * FROM group_messages WHERE group_ref = ? ORDER BY depth DESC, hash DESC LIMIT ?",
                (ref, limit))
        else:
            anchor = self._store.query("SELECT depth FROM group_messages WHERE group_ref = ? AND hash = ?",
                                       (ref, bytes(before)))
            if not anchor:
                raise NotFoundError(f"Message not found: {bytes(before).hex()}")
            rows = self._store.query(
                "SELECT * FROM group_messages WHERE group_ref = ? AND (depth, hash) < (?, ?) "
                "ORDER BY depth DESC, hash DESC LIMIT ?", (ref, anchor[0][0], bytes(before), limit))
        return [GroupMessage.from_row(row) for row in reversed(rows)]

    def mark_read(self, group: Group | int) -> int:
        """Mark the group's messages read; returns how many were unread."""
        with self._store.transaction() as conn:
            return conn.execute("UPDATE group_messages SET read = 1 WHERE group_ref = ? AND read = 0",
                                (_ref(group),)).rowcount

    def unread_counts(self) -> dict[int, int]:
        """group row id -> unread messages; groups with none are left out."""
        rows = self._store.query("SELECT group_ref, count(*) FROM group_messages WHERE read = 0 GROUP BY group_ref")
        return {ref: count for ref, count in rows}

    def mark_pq_verified(self, hashes: Iterable[bytes]) -> int:
        """These messages' authorship now holds under a hybrid signature (PROTOCOL §13.5)."""
        wanted = [bytes(h) for h in hashes]
        changed = 0
        with self._store.transaction() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                changed += conn.execute(
                    f"UPDATE group_messages SET pq_verified = 1 WHERE pq_verified = 0 "
                    f"AND hash IN ({_placeholders(len(chunk))})", chunk).rowcount
        return changed

    # ---- deliveries ----------------------------------------------------------------

    def set_delivered(self, group: Group | int, record_hash: bytes, member: bytes) -> bool:
        """A member reported holding one of our records; True the first time (one event)."""
        with self._store.transaction() as conn:
            return conn.execute(
                "INSERT INTO group_deliveries (group_ref, record_hash, member) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (_ref(group), _check_size(record_hash, HASH_SIZE, "record hash"), check_fingerprint(member)),
            ).rowcount == 1

    def deliveries(self, group: Group | int, record_hash: bytes) -> set[bytes]:
        """The members known to hold this record."""
        rows = self._store.query("SELECT member FROM group_deliveries WHERE group_ref = ? AND record_hash = ?",
                                 (_ref(group), bytes(record_hash)))
        return {bytes(row[0]) for row in rows}
