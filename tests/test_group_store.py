"""Tests of lib/store/groups.py: the group tables of migration 9, each test in its own tmp dir.

The store keeps records as opaque bytes plus the fields its queries need, so a small record
type with those fields stands in for the codec's Record here."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pathlib
import sqlite3
import tempfile
from contextlib import contextmanager
from typing import Iterator

import pytest

from chatp2p_core.store import (MIGRATIONS, DuplicateError, Group, InvalidValueError, NotFoundError, Store,
                                StoreError)

GID = bytes(range(16))
GID2 = bytes(range(1, 17))
A = b"\xaa" * 32
B = b"\xbb" * 32
C = b"\xcc" * 32
OPERATION, KEY, MESSAGE, CHECKPOINT = 2, 7, 8, 9   # ADD, KEY, MESSAGE, CHECKPOINT (PROTOCOL §13.2)


@dataclasses.dataclass(frozen=True)
class Rec:
    """What the store reads of a record: author, seq, kind, depth, hash(), encode()."""

    author: bytes
    seq: int
    kind: int = MESSAGE
    depth: int = 2
    salt: bytes = b""

    def encode(self) -> bytes:
        return b"rec|" + self.author + self.seq.to_bytes(8, "big") + bytes([self.kind]) + self.salt

    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@contextmanager
def fresh_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory(prefix="chatp2p-groups-") as name:
        store = Store(pathlib.Path(name) / "chatp2p.db")
        try:
            yield store
        finally:
            store.close()


@contextmanager
def one_group() -> Iterator[tuple[Store, Group]]:
    with fresh_store() as store:
        yield store, store.groups.create_group(GID, "Family", 1.0)


# ---- groups ------------------------------------------------------------------------------


def test_create_get_list_update_delete_group():
    with fresh_store() as store:
        groups = store.groups
        family = groups.create_group(GID, "Family", 1.0)
        assert (family.name, family.state, family.my_seq, family.key_epoch, family.sender_key,
                family.key_recipients, family.hex) == ("Family", "active", 0, 0, None, frozenset(), GID.hex())
        with pytest.raises(DuplicateError):
            groups.create_group(GID, "Other", 2.0)
        with pytest.raises(InvalidValueError, match="16 bytes"):
            groups.create_group(b"short", "x", 1.0)
        assert groups.get_group(GID.hex()) == family == groups.get_group(" family ") == groups.get_group(GID.hex().upper())
        assert groups.find(GID) == family and groups.find(GID2) is None
        with pytest.raises(NotFoundError, match="Group not found: nope"):
            groups.get_group("nope")
        # Two groups of one name (both invited by others): the id is needed.
        twin = groups.create_group(GID2, "family", 2.0)
        with pytest.raises(InvalidValueError, match="Several groups are named Family") as info:
            groups.get_group("Family")
        assert GID.hex() in str(info.value) and GID2.hex() in str(info.value)
        assert groups.get_group(GID2.hex()) == twin
        # A name that looks like an id but is none is still looked up as a name.
        lookalike = groups.update_group(twin, name="f" * 32)
        assert groups.get_group("f" * 32) == lookalike

        updated = groups.update_group(family, my_seq=3, key_epoch=2, sender_key=b"k" * 32,
                                      key_recipients=[B, A], records_since_hybrid=5, last_hybrid_seq=2,
                                      state="left")
        assert (updated.my_seq, updated.key_epoch, updated.sender_key, updated.key_recipients, updated.state,
                updated.records_since_hybrid, updated.last_hybrid_seq) == (3, 2, b"k" * 32, frozenset({A, B}),
                                                                           "left", 5, 2)
        assert groups.get_by_ref(family.id) == updated == groups.get_by_ref(family)
        assert [g.group_id for g in groups.list_groups()] == [GID, GID2]
        assert groups.list_groups(["active"]) == [lookalike]
        assert groups.count() == 1 and groups.count(("active", "left")) == 2
        for bad in ({"state": "gone"}, {"id": 5}, {"sender_key": b"short"}, {"key_recipients": [b"x"]}):
            with pytest.raises(InvalidValueError):
                groups.update_group(family, **bad)
        assert groups.get_by_ref(family) == updated   # a refused update changed nothing
        groups.delete_group(family)
        with pytest.raises(NotFoundError):
            groups.get_by_ref(family)
        with pytest.raises(NotFoundError):
            groups.update_group(family, name="x")


def test_deleting_a_group_deletes_everything_of_it():
    with one_group() as (store, group):
        store.groups.add_records(group, [(Rec(A, 1), 1.0)])
        store.groups.put_key(group, A, 1, b"k" * 32)
        store.groups.add_message(group, hash=Rec(A, 1).hash(), author=A, message_id="m", depth=2, kind="text",
                                 body="hi", created=1.0, received=1.0)
        store.groups.set_delivered(group, Rec(A, 1).hash(), B)
        store.groups.prune(group, older_than=5.0)
        store.groups.delete_group(group)
        for table in ("group_records", "group_keys", "group_messages", "group_deliveries", "group_floors"):
            assert store.query(f"SELECT count(*) FROM {table}")[0][0] == 0, table


def test_migration_9_opens_a_file_of_schema_8_and_keeps_its_data():
    class EightStore(Store):
        migrations = MIGRATIONS[:8]

    with tempfile.TemporaryDirectory(prefix="chatp2p-groups-") as name:
        db = pathlib.Path(name) / "chatp2p.db"
        with EightStore(db) as old:
            old.contacts.add("Bob", A, None)
        with Store(db) as store:
            assert store.contacts.get("Bob").fingerprint == A
            assert store._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 9
            store.groups.create_group(GID, "Family", 1.0)
            assert store.groups.list_groups()[0].name == "Family"


def test_columns_refuse_bad_values_below_the_repository():
    with one_group() as (store, group):
        conn = store._conn
        for sql, args in (
                ("INSERT INTO groups (group_id, name, created) VALUES (?, 'x', 1)", (b"x" * 15,)),
                ("UPDATE groups SET state = 'gone' WHERE id = ?", (group.id,)),
                ("INSERT INTO group_records (group_ref, hash, author, seq, kind, depth, data, received) "
                 "VALUES (?, ?, ?, 0, 8, 1, x'', 1)", (group.id, b"h" * 32, A)),
                ("INSERT INTO group_records (group_ref, hash, author, seq, kind, depth, data, received) "
                 "VALUES (?, ?, ?, 1, 8, 1, x'', 1)", (group.id + 99, b"h" * 32, A))):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql, args)


# ---- records -----------------------------------------------------------------------------


def test_add_records_is_idempotent_and_reports_forks():
    with one_group() as (store, group):
        first = [Rec(A, 1), Rec(A, 2), Rec(B, 1)]
        new = store.groups.add_records(group, [(r, 10.0) for r in first])
        assert new == first and new.forks == []
        again = store.groups.add_records(group, [(Rec(A, 2), 11.0), (Rec(A, 3), 11.0), (Rec(A, 3), 11.0)])
        assert again == [Rec(A, 3)] and again.forks == []   # a copy, even within one batch, is no fork
        fork = Rec(A, 2, salt=b"other")
        result = store.groups.add_records(group, [(fork, 12.0), (Rec(B, 2), 12.0)])
        assert result == [Rec(B, 2)] and result.forks == [fork]
        assert store.groups.record(Rec(A, 2).hash()).data == Rec(A, 2).encode()   # the first held stays
        assert not store.groups.has_record(fork.hash()) and store.groups.has_record(Rec(A, 1).hash())
        assert store.groups.record(fork.hash()) is None
        assert store.groups.held_seqs(group) == {A: [1, 2, 3], B: [1, 2]}
        assert store.groups.record_count(group) == 5


def test_add_records_is_one_transaction():
    with one_group() as (store, group):
        bad = Rec(b"short", 1)   # refused by the fingerprint check after a good one was written
        with pytest.raises(InvalidValueError):
            store.groups.add_records(group, [(Rec(A, 1), 1.0), (bad, 1.0)])
        assert store.groups.held_seqs(group) == {}


def test_records_for_operations_latest_and_order():
    with one_group() as (store, group):
        records = [Rec(A, 1, OPERATION, depth=3), Rec(A, 2, KEY, depth=4), Rec(B, 1, OPERATION, depth=2),
                   Rec(B, 2, MESSAGE, depth=5), Rec(A, 3, MESSAGE, depth=5), Rec(C, 1, 1, depth=1)]
        store.groups.add_records(group, [(r, 1.0) for r in records])
        by_order = sorted(records, key=lambda r: (r.depth, r.hash()))
        assert [s.hash for s in store.groups.records(group)] == [r.hash() for r in by_order]
        assert store.groups.operations(group) == [r.encode() for r in by_order if r.kind <= 6]
        assert [s.seq for s in store.groups.records(group, kinds=[KEY])] == [2]
        assert store.groups.records_for(group, A, [3, 1, 9, 1]) == [Rec(A, 1, OPERATION, 3).encode(),
                                                                  Rec(A, 3, MESSAGE, 5).encode()]
        assert store.groups.records_for(group, A, range(1, 2000)) != []   # more seqs than SQLite binds at once
        latest = {(s.author, s.seq) for s in store.groups.latest_records(group)}
        assert latest == {(A, 3), (B, 2), (C, 1)}
        stored = store.groups.record(Rec(B, 2, MESSAGE, 5).hash())
        assert (stored.author, stored.seq, stored.kind, stored.depth, stored.received) == (B, 2, MESSAGE, 5, 1.0)


def test_undecrypted_lists_message_records_without_a_history_row():
    with one_group() as (store, group):
        shown, waiting, key = Rec(A, 1), Rec(A, 2, depth=3), Rec(B, 1, KEY)
        store.groups.add_records(group, [(shown, 1.0), (waiting, 1.0), (key, 1.0)])
        store.groups.add_message(group, hash=shown.hash(), author=A, message_id="m1", depth=2, kind="text",
                                 body="hi", created=1.0, received=1.0)
        assert [s.hash for s in store.groups.undecrypted(group)] == [waiting.hash()]


def test_delete_records_removes_their_messages_and_deliveries():
    with one_group() as (store, group):
        keep, drop = Rec(A, 1), Rec(A, 2)
        store.groups.add_records(group, [(keep, 1.0), (drop, 1.0)])
        for r in (keep, drop):
            store.groups.add_message(group, hash=r.hash(), author=A, message_id=f"m{r.seq}", depth=2, kind="text",
                                     body="x", created=1.0, received=1.0)
            store.groups.set_delivered(group, r.hash(), B)
        assert store.groups.delete_records([drop.hash(), b"\x00" * 32]) == 1
        assert store.groups.held_seqs(group) == {A: [1]}
        assert [m.hash for m in store.groups.history(group)] == [keep.hash()]
        assert store.groups.deliveries(group, drop.hash()) == set()
        assert store.groups.deliveries(group, keep.hash()) == {B}


def test_prune_keeps_operations_and_each_authors_latest_key_and_sets_floors():
    with one_group() as (store, group):
        old = [Rec(A, 1, OPERATION), Rec(A, 2, KEY), Rec(A, 3, MESSAGE), Rec(A, 4, KEY), Rec(A, 5, MESSAGE),
               Rec(B, 1, KEY), Rec(B, 2, MESSAGE)]
        store.groups.add_records(group, [(r, 100.0) for r in old])
        store.groups.add_records(group, [(Rec(A, 6, CHECKPOINT), 300.0), (Rec(B, 3, MESSAGE), 300.0)])
        # A record received late but older in A's chain than one pruned goes too: the floor is exact.
        store.groups.add_records(group, [(Rec(A, 7, MESSAGE), 100.0)])
        store.groups.add_message(group, hash=Rec(A, 3).hash(), author=A, message_id="m", depth=2, kind="text",
                                 body="kept in history", created=1.0, received=1.0)
        assert store.groups.prune(group, older_than=200.0) == 6
        # A: 1 (operation) and 4 (latest KEY) stay; B: 1 (its only KEY) stays.
        assert store.groups.held_seqs(group) == {A: [1, 4], B: [1, 3]}
        assert store.groups.floors(group) == {A: 8, B: 3}
        assert [m.body for m in store.groups.history(group)] == ["kept in history"]
        assert store.groups.prune(group, older_than=200.0) == 0
        assert store.groups.floors(group) == {A: 8, B: 3}   # a floor never goes down


def test_prune_to_a_record_cap_removes_the_oldest_received_first():
    with one_group() as (store, group):
        # the oldest of all are an operation and C's only (so latest) KEY: over the cap they stay too
        store.groups.add_records(group, [(Rec(A, 1, OPERATION), 0.5), (Rec(C, 1, KEY), 0.5)])
        store.groups.add_records(group, [(Rec(B, seq), float(seq)) for seq in range(1, 11)])
        store.groups.add_records(group, [(Rec(C, 2), 5.5)])
        assert store.groups.prune(group, older_than=0.0, max_records=8) == 5
        assert store.groups.held_seqs(group) == {A: [1], B: [6, 7, 8, 9, 10], C: [1, 2]}
        assert store.groups.floors(group) == {B: 6}


# ---- keys --------------------------------------------------------------------------------


def test_sender_keys_first_one_stays():
    with one_group() as (store, group):
        assert store.groups.put_key(group, A, 1, b"1" * 32)
        assert not store.groups.put_key(group, A, 1, b"2" * 32)
        assert store.groups.put_key(group, A, 2, b"3" * 32)
        assert store.groups.get_key(group, A, 1) == b"1" * 32
        assert store.groups.get_key(group, A, 3) is None and store.groups.get_key(group, B, 1) is None
        with pytest.raises(InvalidValueError):
            store.groups.put_key(group, A, 4, b"short")
        with pytest.raises(StoreError):
            store.groups.put_key(group, A, 0, b"1" * 32)   # epochs start at 1


# ---- history -----------------------------------------------------------------------------


def _add(store, group, author, depth, salt, **extra):
    digest = hashlib.sha256(author + bytes([depth]) + salt).digest()
    values = dict(hash=digest, author=author, message_id=salt.decode(), depth=depth, kind="text",
                  body=salt.decode(), created=1.0, received=2.0)
    values.update(extra)
    return store.groups.add_message(group, **values)


def test_history_is_in_depth_hash_order_whatever_the_arrival_order():
    with one_group() as (store, group):
        items = [(A, 3, b"a3"), (B, 2, b"b2"), (A, 2, b"a2"), (C, 5, b"c5"), (B, 4, b"b4"), (C, 2, b"c2")]
        expected = sorted(items, key=lambda i: (i[1], hashlib.sha256(i[0] + bytes([i[1]]) + i[2]).digest()))
        for order in itertools.islice(itertools.permutations(items), 0, 720, 97):
            with one_group() as (other, g):
                for author, depth, salt in order:
                    _add(other, g, author, depth, salt)
                assert [m.body for m in other.groups.history(g)] == [salt.decode() for _, _, salt in expected]
        for author, depth, salt in items:
            _add(store, group, author, depth, salt)
        page = store.groups.history(group, limit=2)
        assert [m.body for m in page] == [s.decode() for _, _, s in expected[-2:]]
        older = store.groups.history(group, limit=3, before=page[0].hash)
        assert [m.body for m in older] == [s.decode() for _, _, s in expected[-5:-2]]
        rest = store.groups.history(group, limit=50, before=older[0].hash)
        assert [m.body for m in rest] == [expected[0][2].decode()]
        with pytest.raises(NotFoundError):
            store.groups.history(group, before=b"\x01" * 32)
        with pytest.raises(InvalidValueError):
            store.groups.history(group, limit=0)


def test_add_message_once_by_hash_and_own_message_ids_unique():
    with one_group() as (store, group):
        first = _add(store, group, A, 2, b"m1", file={"file_id": "00" * 16, "size": 3, "name": "a.txt"},
                     kind="file")
        assert first is not None and first.file == {"file_id": "00" * 16, "size": 3, "name": "a.txt"}
        assert not first.outgoing and not first.read and not first.pq_verified
        assert _add(store, group, A, 2, b"m1") is None   # the same record again: nothing new
        assert store.groups.message(first.hash) == first
        own = _add(store, group, B, 3, b"mine", outgoing=True)
        assert own.outgoing and own.read
        assert store.groups.own_message(group, "mine") == own and store.groups.own_message(group, "m1") is None
        with pytest.raises(DuplicateError):
            _add(store, group, B, 4, b"mine", outgoing=True, message_id="mine")
        # Another member may use any message_id, ours included.
        assert _add(store, group, C, 4, b"other", message_id="mine") is not None
        with pytest.raises(InvalidValueError):
            _add(store, group, A, 2, b"x", kind="sticker")
        gap = _add(store, group, A, 1, b"gap", kind="gap", body="12")
        assert gap.kind == "gap" and store.groups.history(group)[0] == gap


def test_unread_mark_read_and_pq_verified():
    with fresh_store() as store:
        g1 = store.groups.create_group(GID, "One", 1.0)
        g2 = store.groups.create_group(GID2, "Two", 1.0)
        m1 = _add(store, g1, A, 2, b"a")
        _add(store, g1, A, 3, b"b")
        _add(store, g1, B, 3, b"mine", outgoing=True)
        _add(store, g2, A, 2, b"c")
        assert store.groups.unread_counts() == {g1.id: 2, g2.id: 1}
        assert store.groups.mark_read(g1) == 2 and store.groups.mark_read(g1) == 0
        assert store.groups.unread_counts() == {g2.id: 1}
        assert store.groups.mark_pq_verified([m1.hash, b"\x00" * 32]) == 1
        assert store.groups.mark_pq_verified([m1.hash]) == 0
        assert store.groups.message(m1.hash).pq_verified


# ---- deliveries --------------------------------------------------------------------------


def test_deliveries_are_new_once_per_member():
    with one_group() as (store, group):
        record = Rec(A, 1).hash()
        assert store.groups.set_delivered(group, record, B)
        assert not store.groups.set_delivered(group, record, B)
        assert store.groups.set_delivered(group, record, C)
        assert store.groups.deliveries(group, record) == {B, C}
        assert store.groups.deliveries(group, Rec(A, 2).hash()) == set()
        with pytest.raises(InvalidValueError):
            store.groups.set_delivered(group, record, b"short")


def test_committed_before_return_survives_a_reopen():
    with tempfile.TemporaryDirectory(prefix="chatp2p-groups-") as name:
        db = pathlib.Path(name) / "chatp2p.db"
        store = Store(db)
        group = store.groups.create_group(GID, "Family", 1.0)
        store.groups.add_records(group, [(Rec(A, 1), 1.0)])
        _add(store, group, A, 2, b"m")
        store._conn.close()   # no checkpoint, as after a kill: the WAL holds the commits
        store._conn = None
        with Store(db) as again:
            assert again.groups.held_seqs(group.id) == {A: [1]}
            assert [m.body for m in again.groups.history(group.id)] == ["m"]


def test_the_codec_records_are_stored_as_they_are_encoded():
    from chatp2p_core.codec.grouprecord import SIGNATURE_LEN, Kind, Record, SigKind, decode_record

    def record(kind, seq, depth, prev=bytes(32), sig=SigKind.HYBRID, epoch=0):
        draft = Record(kind, GID, A, seq, prev, depth, 1000, epoch, sig, (b"\x01" * 32,), b"b" * 40)
        return draft.with_signature(b"\x00" * SIGNATURE_LEN[sig])   # the store checks no signature

    add = record(Kind.ADD, 1, 2)
    message = record(Kind.MESSAGE, 2, 3, prev=add.hash(), sig=SigKind.ED25519, epoch=1)
    with one_group() as (store, group):
        assert store.groups.add_records(group, [(add, 1.0), (message, 1.0)]) == [add, message]
        assert store.groups.operations(group) == [add.encode()]
        assert decode_record(store.groups.records_for(group, A, [2])[0]) == message
        stored = store.groups.record(message.hash())
        assert (stored.kind, stored.depth, stored.seq) == (Kind.MESSAGE, 3, 2)
        assert [s.hash for s in store.groups.undecrypted(group)] == [message.hash()]
