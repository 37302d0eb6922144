"""Tests of lib/store/: the SQLite state of one node, each test in its own tmp dir."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import sqlite3
import stat
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from chatp2p_core.store.migrations import migrate
from chatp2p_core.store import (
    MIGRATIONS,
    Contact,
    ContactRepository,
    DuplicateError,
    GroupRepository,
    InvalidValueError,
    HeldMessageRepository,
    Message,
    MessageRepository,
    MessageState,
    NotFoundError,
    Store,
    StoreError,
    TransferRepository,
    TransferState,
)
from chatp2p_core.util import iso_utc

FP_A = bytes(range(32))
FP_B = bytes(range(1, 33))
FP_C = bytes(range(2, 34))


@contextmanager
def tmp_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="chatp2p-store-") as name:
        yield pathlib.Path(name)


@contextmanager
def fresh_store(durable: bool = False) -> Iterator[Store]:
    with tmp_dir() as d:
        store = Store(d / "chatp2p.db", durable=durable)
        try:
            yield store
        finally:
            store.close()


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def set_notes(store: Store, name: str, notes: str | None) -> Contact:
    """Write a contact's notes. The core has no writer of this column (kept for the file
    format, read into Contact.notes), so the tests write it as a repository method would:
    through the contacts repository's cache-dropping transaction."""
    with store.contacts._write() as conn:
        conn.execute("UPDATE contacts SET notes = ? WHERE name = ?", (notes, name))
    return store.contacts.get(name)


def held_senders(store: Store) -> dict[bytes, int]:
    """fingerprint -> number of held messages, read past the repository."""
    rows = store._conn.execute(
        "SELECT fingerprint, count(*) FROM held_messages GROUP BY fingerprint ORDER BY min(id)")
    return {bytes(row[0]): row[1] for row in rows}


# ---- opening, pragmas, files, migrations ----------------------------------------------


def test_file_modes_are_0600_and_umask_restored():
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        before = os.umask(0o022)
        try:
            store = Store(db)
            assert os.umask(0o022) == 0o022  # restored after opening
            store.contacts.add("Bob", FP_A, None)  # a write makes sure -wal exists
            assert mode(db) == 0o600
            assert mode(d / "chatp2p.db-wal") == 0o600
            assert mode(d / "chatp2p.db-shm") == 0o600
            store.close()
        finally:
            os.umask(before)


def test_existing_loose_file_is_tightened():
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        db.touch()
        os.chmod(db, 0o644)
        Store(db).close()
        assert mode(db) == 0o600


def test_pragmas_default_and_durable():
    with fresh_store() as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with fresh_store(durable=True) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reopen_keeps_data_and_close_truncates_wal():
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        store = Store(db)
        bob = store.contacts.add("Bob", FP_A, "bundle-b")
        store.messages.add_outgoing(bob.id, "m1", "hello", 1.0)
        store.close()
        store.close()  # a second close is harmless
        assert not (d / "chatp2p.db-wal").exists() or (d / "chatp2p.db-wal").stat().st_size == 0
        with Store(db) as again:
            assert again.contacts.get("bob") == bob
            assert [m.body for m in again.messages.history(bob.id)] == ["hello"]


def test_closed_store_refuses_calls():
    with tmp_dir() as d:
        store = Store(d / "chatp2p.db")
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.contacts.all()
        with pytest.raises(StoreError, match="closed"):
            store.contacts.add("Bob", FP_A, None)


def test_newer_schema_version_is_refused():
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        Store(db).close()
        raw = sqlite3.connect(db)
        raw.execute("PRAGMA user_version = 99")
        raw.commit()
        raw.close()
        with pytest.raises(StoreError) as info:
            Store(db)
        message = str(info.value)
        assert "99" in message and "upgrade ChatP2P" in message


def test_appended_migration_runs_once_on_old_file():
    class NextStore(Store):
        migrations = MIGRATIONS + (("CREATE TABLE extra (id INTEGER PRIMARY KEY)",),)

    with tmp_dir() as d:
        db = d / "chatp2p.db"
        with Store(db) as store:
            store.contacts.add("Bob", FP_A, None)
        with NextStore(db) as store:
            version = store._conn.execute("PRAGMA user_version").fetchone()[0]
            assert version == len(MIGRATIONS) + 1
            store._conn.execute("INSERT INTO extra DEFAULT VALUES")
            assert store.contacts.get("Bob").name == "Bob"
        with NextStore(db) as store:  # nothing left to apply: no "table exists" error
            assert store._conn.execute("SELECT count(*) FROM extra").fetchone()[0] == 1
        with pytest.raises(StoreError, match="schema version"):
            Store(db)  # the old code refuses the migrated file


def test_failed_migration_rolls_back():
    class BrokenStore(Store):
        migrations = MIGRATIONS + (("CREATE TABLE ok (id INTEGER)", "NOT SQL"),)

    with tmp_dir() as d:
        db = d / "chatp2p.db"
        Store(db).close()
        with pytest.raises(StoreError):
            BrokenStore(db)
        with Store(db) as store:
            tables = {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master")}
            assert "ok" not in tables
            version = store._conn.execute("PRAGMA user_version").fetchone()[0]
            assert version == len(MIGRATIONS)


def test_a_file_from_the_first_schema_opens_and_keeps_its_data():
    class FirstStore(Store):
        migrations = MIGRATIONS[:1]

    with tmp_dir() as d:
        db = d / "chatp2p.db"
        with FirstStore(db) as old:
            bob = old.contacts.add("Bob", FP_A, "bundle-b")
            # raw SQL: today's repository code may use columns the first schema lacks
            old._conn.execute("INSERT INTO messages (contact_id, message_id, direction, body, created, state, "
                              "seq, read) VALUES (?, 'm1', 'out', 'héllo', 1.0, 'queued', 1, 1)", (bob.id,))
            old._conn.execute("INSERT INTO held_messages (fingerprint, bundle, message_id, body, created) "
                              "VALUES (?, 'S', 'h1', 'psst', 2.0)", (FP_B,))
        with Store(db) as store:
            assert store._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            assert store.contacts.get("bob") == bob
            assert [(m.message_id, m.seq, m.state) for m in store.messages.history(bob.id)] == [
                ("m1", 1, "queued")]
            assert store.messages.in_seq(bob.id) == 0
            assert [(h.message_id, h.seq) for h in store.held.take(FP_B)] == [("h1", 0)]
            assert store.transfers.recent() == []
            assert [m.message_id for m in store.messages.search("hello")] == ["m1"]  # indexed by the migration
            assert store.messages.add_outgoing(bob.id, "m2", "again", 3.0).seq == 2


def test_not_a_database_is_a_store_error():
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        db.write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(StoreError, match="Cannot open database"):
            Store(db)


def test_missing_directory_is_a_store_error():
    with tmp_dir() as d:
        with pytest.raises(StoreError, match="Cannot open database"):
            Store(d / "nope" / "chatp2p.db")


# ---- contacts -------------------------------------------------------------------------


def test_add_and_get_contact():
    with fresh_store() as store:
        bob = store.contacts.add("  Bob ", FP_A, None)
        assert isinstance(bob, Contact)
        assert (bob.name, bob.fingerprint, bob.bundle) == ("Bob", FP_A, None)
        assert (bob.verified, bob.blocked, bob.last_seen, bob.addresses) == (
            False, False, None, (),
        )
        assert bob.created > 0
        assert store.contacts.get("BOB") == bob
        assert store.contacts.get(" bob ") == bob
        assert store.contacts.get_by_id(bob.id) == bob
        assert store.contacts.find_by_fingerprint(FP_A) == bob
        assert store.contacts.find_by_fingerprint(FP_B) is None


def test_duplicate_name_case_insensitive():
    with fresh_store() as store:
        store.contacts.add("Bob", FP_A, None)
        with pytest.raises(DuplicateError) as info:
            store.contacts.add("bob", FP_B, None)
        assert str(info.value) == "A contact named Bob already exists"
        assert store.contacts.count() == 1


def test_duplicate_key():
    with fresh_store() as store:
        store.contacts.add("Bob", FP_A, None)
        with pytest.raises(DuplicateError) as info:
            store.contacts.add("Robert", FP_A, None)
        assert str(info.value) == "This key is already a contact: Bob"


def test_not_found_message():
    with fresh_store() as store:
        for call in (
            lambda: store.contacts.get("Carol"),
            lambda: store.contacts.remove("Carol"),
            lambda: store.contacts.rename("Carol", "Caroline"),
            lambda: store.contacts.set_blocked("Carol", True),
            lambda: store.contacts.set_verified("Carol", True),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            assert str(info.value) == "Peer not found: Carol"
        with pytest.raises(NotFoundError):
            store.contacts.set_bundle(42, "x")
        with pytest.raises(NotFoundError):
            store.contacts.touch(42, 1.0)


def test_name_validation():
    with fresh_store() as store:
        for bad, why in (
            ("", "empty"),
            ("   ", "empty"),
            ("x" * 65, "at most 64"),
            ("Bo\nb", "control"),
            ("Bo\x00b", "control"),
            ("Bo\u202eb", "control"),
        ):
            with pytest.raises(StoreError, match=why):
                store.contacts.add(bad, FP_A, None)
        assert store.contacts.add("x" * 64, FP_A, None).name == "x" * 64
        assert store.contacts.add("Zoë 🙂", FP_B, None).name == "Zoë 🙂"
        bob = store.contacts.add("Bob", FP_C, None)
        with pytest.raises(StoreError, match="empty"):
            store.contacts.rename(bob.name, " ")


def test_fingerprint_size_checked():
    with fresh_store() as store:
        with pytest.raises(StoreError, match="32 bytes"):
            store.contacts.add("Bob", b"short", None)


def test_list_and_count_contacts_ordered_by_name():
    with fresh_store() as store:
        store.contacts.add("carol", FP_A, None)
        store.contacts.add("Alice", FP_B, None)
        store.contacts.add("bob", FP_C, None)
        assert [c.name for c in store.contacts.all()] == ["Alice", "bob", "carol"]
        assert store.contacts.count() == 3


def test_remove_contact_cascades_messages():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        store.messages.add_outgoing(bob.id, "m1", "hi", 1.0)
        store.messages.add_incoming(bob.id, "m2", "yo", 2.0, 3.0)
        store.messages.add_outgoing(carol.id, "m3", "hey", 1.0)
        removed = store.contacts.remove("bob")
        assert removed == bob
        assert store.contacts.count() == 1
        assert store.messages.history(bob.id) == []
        assert store.messages.unread_counts() == {}
        assert len(store.messages.history(carol.id)) == 1
        # The key can be added again, and starts from an empty history.
        again = store.contacts.add("Bob", FP_A, None)
        assert store.messages.history(again.id) == []


def test_rename_contact():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        store.contacts.add("Carol", FP_B, None)
        assert store.contacts.rename("bob", "BOB").name == "BOB"  # own name, other case
        renamed = store.contacts.rename("BOB", "Robert")
        assert (renamed.id, renamed.name) == (bob.id, "Robert")
        with pytest.raises(NotFoundError):
            store.contacts.get("Bob")
        with pytest.raises(DuplicateError) as info:
            store.contacts.rename("Robert", "carol")
        assert str(info.value) == "A contact named Carol already exists"


def test_blocked_verified_notes_bundle():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        assert store.contacts.set_blocked("bob", True).blocked is True
        assert store.contacts.set_verified("bob", True).verified is True
        assert store.contacts.set_blocked("bob", False).blocked is False
        assert set_notes(store, "Bob", "met at FOSDEM").notes == "met at FOSDEM"
        store.contacts.set_bundle(bob.id, "BUNDLE64")
        bob = store.contacts.get("Bob")
        assert (bob.bundle, bob.verified, bob.blocked) == ("BUNDLE64", True, False)


def test_touch_contact_keeps_five_distinct_addresses():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        store.contacts.touch(bob.id, 10.0)
        assert store.contacts.get("Bob").last_seen == 10.0
        for i in range(7):
            store.contacts.touch(bob.id, 20.0 + i, f"192.0.2.{i}:4000")
        store.contacts.touch(bob.id, 30.0, "192.0.2.4:4000")  # already known: moves first
        bob = store.contacts.get("Bob")
        assert bob.addresses == (
            "192.0.2.4:4000", "192.0.2.6:4000", "192.0.2.5:4000",
            "192.0.2.3:4000", "192.0.2.2:4000",
        )
        assert bob.last_seen == 30.0
        store.contacts.touch(bob.id, 5.0)  # an older report does not move last_seen back
        assert store.contacts.get("Bob").last_seen == 30.0


def test_contact_to_dict():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, "B")
        store.contacts.touch(bob.id, 1735732800.0, "198.51.100.7:5000")
        d = store.contacts.get("Bob").to_dict(lambda fp: fp.hex())
        assert d["fingerprint"] == FP_A.hex()
        assert d["last_seen"] == "2025-01-01T12:00:00.000Z"
        assert d["created"].endswith("Z")
        assert d["addresses"] == ["198.51.100.7:5000"]
        assert d["has_bundle"] is True and d["verified"] is False
        assert "bundle" not in d


# ---- the contact cache ----------------------------------------------------------------
# Store keeps the contacts table in memory; every contact write must drop it.


def db_contacts(store: Store) -> list[Contact]:
    """The contacts as the database holds them, read past the cache."""
    rows = store._conn.execute("SELECT * FROM contacts ORDER BY name, id").fetchall()
    return [Contact.from_row(row) for row in rows]


def assert_reads_match_db(store: Store) -> None:
    expected = db_contacts(store)
    assert store.contacts.all() == expected
    assert store.contacts.count() == len(expected)
    for c in expected:
        assert store.contacts.get(c.name) == c
        assert store.contacts.get(f" {c.name.swapcase()} ") == c
        assert store.contacts.get_by_id(c.id) == c
        assert store.contacts.find_by_fingerprint(c.fingerprint) == c


def two_contacts(store: Store) -> tuple[Contact, Contact]:
    bob = store.contacts.add("Bob", FP_A, None)
    carol = store.contacts.add("Carol", FP_B, "bundle-c")
    store.contacts.touch(carol.id, 5.0, "192.0.2.9:4000")
    return bob, carol


# Every writer of ContactRepository, keyed "method" or "method (case)".
CONTACT_WRITES: dict[str, Callable[[Store, Contact], object]] = {
    "add": lambda store, bob: store.contacts.add("Dave", FP_C, None),
    "rename": lambda store, bob: store.contacts.rename("bob", "Robert"),
    "rename (case only)": lambda store, bob: store.contacts.rename("bob", "BOB"),
    "set_blocked": lambda store, bob: store.contacts.set_blocked("Bob", True),
    "set_verified": lambda store, bob: store.contacts.set_verified("Bob", True),
    "set_bundle": lambda store, bob: store.contacts.set_bundle(bob.id, "BUNDLE64"),
    "set_lan_secret": lambda store, bob: store.contacts.set_lan_secret(bob.id, bytes(32)),
    "replace_key": lambda store, bob: store.contacts.replace_key(bob.id, FP_C, "NEW64"),
    "touch": lambda store, bob: store.contacts.touch(bob.id, 7.0),
    "touch (with address)": lambda store, bob: store.contacts.touch(bob.id, 7.0, "192.0.2.1:4000"),
    "remove": lambda store, bob: store.contacts.remove("Bob"),
    "test helper set_notes": lambda store, bob: set_notes(store, "Bob", "met at FOSDEM"),
}
CONTACT_READS = {"get", "get_by_id", "find_by_fingerprint", "all", "count", "invalidate"}

GID = bytes(16)
HASH = bytes(32)
# Every public method of GroupRepository, called once in this order (then the group is gone).
GROUP_CALLS: dict[str, Callable[[Store, Contact], object]] = {
    "create_group": lambda store, bob: store.groups.create_group(GID, "G", 1.0),
    "find": lambda store, bob: store.groups.find(GID),
    "get_group": lambda store, bob: store.groups.get_group("G"),
    "get_by_ref": lambda store, bob: store.groups.get_by_ref(1),
    "list_groups": lambda store, bob: store.groups.list_groups(),
    "count": lambda store, bob: store.groups.count(),
    "update_group": lambda store, bob: store.groups.update_group(1, my_seq=1, key_recipients=[FP_A]),
    "add_records": lambda store, bob: store.groups.add_records(1, []),
    "has_record": lambda store, bob: store.groups.has_record(HASH),
    "record": lambda store, bob: store.groups.record(HASH),
    "records_for": lambda store, bob: store.groups.records_for(1, FP_A, [1]),
    "operations": lambda store, bob: store.groups.operations(1),
    "records": lambda store, bob: store.groups.records(1),
    "latest_records": lambda store, bob: store.groups.latest_records(1),
    "undecrypted": lambda store, bob: store.groups.undecrypted(1),
    "held_seqs": lambda store, bob: store.groups.held_seqs(1),
    "record_count": lambda store, bob: store.groups.record_count(1),
    "floors": lambda store, bob: store.groups.floors(1),
    "delete_records": lambda store, bob: store.groups.delete_records([HASH]),
    "prune": lambda store, bob: store.groups.prune(1, 99.0, 10),
    "put_key": lambda store, bob: store.groups.put_key(1, FP_A, 1, HASH),
    "get_key": lambda store, bob: store.groups.get_key(1, FP_A, 1),
    "add_message": lambda store, bob: store.groups.add_message(
        1, hash=HASH, author=FP_A, message_id="g1", depth=2, kind="text", body="x", created=1.0, received=1.0),
    "message": lambda store, bob: store.groups.message(HASH),
    "own_message": lambda store, bob: store.groups.own_message(1, "g1"),
    "outgoing_messages": lambda store, bob: store.groups.outgoing_messages(1),
    "history": lambda store, bob: store.groups.history(1),
    "mark_read": lambda store, bob: store.groups.mark_read(1),
    "unread_counts": lambda store, bob: store.groups.unread_counts(),
    "mark_pq_verified": lambda store, bob: store.groups.mark_pq_verified([HASH]),
    "set_delivered": lambda store, bob: store.groups.set_delivered(1, HASH, FP_B),
    "deliveries": lambda store, bob: store.groups.deliveries(1, HASH),
    "delete_group": lambda store, bob: store.groups.delete_group(1),
}

# Every public method of the other repositories, called once on `two_contacts`. None may
# change a Contact field (they do not drop the contact index); in_seq is not one.
OTHER_CALLS: dict[str, Callable[[Store, Contact], object]] = {
    "messages.add_outgoing": lambda store, bob: store.messages.add_outgoing(bob.id, "m1", "x", 1.0),
    "messages.add_outgoing_many": lambda store, bob: store.messages.add_outgoing_many(
        [(bob.id, "m2", "x", 1.0, "sent")]),
    "messages.mark_sent_ranges": lambda store, bob: store.messages.mark_sent_ranges(bob.id, [(1, 9)]),
    "messages.mark_delivered_ranges": lambda store, bob: store.messages.mark_delivered_ranges(
        bob.id, [(1, 9)]),
    "messages.set_state": lambda store, bob: store.messages.set_state(bob.id, "m1", "failed", "x"),
    "messages.pending_outgoing": lambda store, bob: store.messages.pending_outgoing(bob.id),
    "messages.expire_queued": lambda store, bob: store.messages.expire_queued(99.0),
    "messages.add_incoming": lambda store, bob: store.messages.add_incoming(bob.id, "i1", "x", 1.0, 2.0),
    "messages.deliver_incoming_many": lambda store, bob: store.messages.deliver_incoming_many(
        bob.id, [(1, "i2", "x", 1.0)], 2.0),
    "messages.has_incoming": lambda store, bob: store.messages.has_incoming(bob.id, "i1"),
    "messages.in_seq": lambda store, bob: store.messages.in_seq(bob.id),
    "messages.set_in_seq": lambda store, bob: store.messages.set_in_seq(bob.id, 3),
    "messages.history": lambda store, bob: store.messages.history(bob.id),
    "messages.unread_counts": lambda store, bob: store.messages.unread_counts(),
    "messages.mark_read": lambda store, bob: store.messages.mark_read(bob.id),
    "messages.search": lambda store, bob: store.messages.search("x"),
    "messages.delete": lambda store, bob: store.messages.delete(bob.id),
    "held.hold": lambda store, bob: store.held.hold(FP_C, "B", "h1", "x", 1.0, 5, 100),
    "held.take": lambda store, bob: store.held.take(FP_C),
    "held.drop": lambda store, bob: store.held.drop(FP_C),
    "transfers.add": lambda store, bob: store.transfers.add(
        transfer_id="t1", contact_id=bob.id, direction="out", file_name="f", size=1,
        chunk_size=1, tag=b"t", state="queued"),
    "transfers.update": lambda store, bob: store.transfers.update("t1", state="active"),
    "transfers.get": lambda store, bob: store.transfers.get("t1"),
    "transfers.recent": lambda store, bob: store.transfers.recent(),
    **{f"groups.{name}": call for name, call in GROUP_CALLS.items()},
}


def public_methods(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_every_repository_method_is_covered_by_the_cache_tests():
    # A new method must be added to CONTACT_WRITES (checked to drop the index), CONTACT_READS,
    # or OTHER_CALLS (checked to leave every Contact field alone): else this fails.
    writers = {key.split(" (")[0] for key in CONTACT_WRITES if not key.startswith("test helper")}
    assert public_methods(ContactRepository) == writers | CONTACT_READS
    assert not writers & CONTACT_READS
    others = {f"{attr}.{name}" for attr, cls in (("messages", MessageRepository),
                                                 ("held", HeldMessageRepository),
                                                 ("transfers", TransferRepository),
                                                 ("groups", GroupRepository))
              for name in public_methods(cls)}
    assert others == set(OTHER_CALLS)
    with fresh_store() as store:
        assert {name for name in vars(store) if not name.startswith("_")} == {
            "path", "durable", "contacts", "messages", "held", "transfers", "groups"}


def test_other_repositories_leave_contacts_and_the_index_alone():
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        for what, call in OTHER_CALLS.items():
            before = db_contacts(store)
            assert_reads_match_db(store)  # the index is loaded now
            statements: list[str] = []
            store._conn.set_trace_callback(statements.append)
            try:
                call(store, bob)
            finally:
                store._conn.set_trace_callback(None)
            writes = [sql for sql in statements
                      if re.match(r"\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM|REPLACE\s+INTO)\s+contacts\b",
                                  sql, re.IGNORECASE)]
            assert all(sql.startswith(("UPDATE contacts SET in_seq = ", "UPDATE contacts SET out_seq_floor = "))
                       for sql in writes), (what, writes)
            assert db_contacts(store) == before, what
            assert_reads_match_db(store)


def test_every_contact_write_is_seen_by_the_next_read():
    for what, write in CONTACT_WRITES.items():
        with fresh_store() as store:
            bob, _ = two_contacts(store)
            before = db_contacts(store)
            assert_reads_match_db(store)  # the cache is loaded now
            write(store, bob)
            # The write changed the database (else this case would test nothing) and
            # every read shows the change: a writer that kept the cache fails here.
            assert db_contacts(store) != before, what
            assert_reads_match_db(store)


def test_reads_after_each_write_show_the_new_values():
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        carol = store.contacts.get("Carol")
        store.contacts.rename("bob", "BOB")
        assert store.contacts.get("bob").name == "BOB"
        assert [c.name for c in store.contacts.all()] == ["BOB", "Carol"]
        store.contacts.rename("BOB", "Zed")
        assert [c.name for c in store.contacts.all()] == ["Carol", "Zed"]
        with pytest.raises(NotFoundError, match="Peer not found: Bob"):
            store.contacts.get("Bob")
        assert store.contacts.set_blocked("zed", True).blocked and store.contacts.get("Zed").blocked
        assert store.contacts.get_by_id(bob.id).blocked
        store.contacts.set_verified("Zed", True)
        assert store.contacts.find_by_fingerprint(FP_A).verified
        set_notes(store, "Zed", "n")
        assert store.contacts.get("Zed").notes == "n"
        store.contacts.set_bundle(bob.id, "B64")
        assert store.contacts.get_by_id(bob.id).bundle == "B64"
        store.contacts.replace_key(bob.id, FP_C, "C64")
        assert store.contacts.find_by_fingerprint(FP_A) is None
        assert store.contacts.find_by_fingerprint(FP_C).name == "Zed"
        store.contacts.touch(bob.id, 9.0, "198.51.100.1:1")
        zed = store.contacts.get("Zed")
        assert (zed.last_seen, zed.addresses) == (9.0, ("198.51.100.1:1",))
        store.contacts.remove("Zed")
        with pytest.raises(NotFoundError, match=f"Peer not found: #{bob.id}"):
            store.contacts.get_by_id(bob.id)
        assert store.contacts.find_by_fingerprint(FP_C) is None
        assert [c.name for c in store.contacts.all()] == ["Carol"]
        assert store.contacts.get("carol") == carol  # untouched by the others' writes


def test_count_follows_adds_and_removes():
    with fresh_store() as store:
        assert store.contacts.count() == 0
        store.contacts.add("Bob", FP_A, None)
        assert store.contacts.count() == 1
        store.contacts.add("Carol", FP_B, None)
        assert store.contacts.count() == 2
        store.contacts.remove("bob")
        assert store.contacts.count() == 1
        store.contacts.remove("carol")
        assert store.contacts.count() == 0
        assert store.contacts.all() == []


def test_failed_contact_writes_leave_reads_correct():
    with fresh_store() as store:
        bob, carol = two_contacts(store)
        before = db_contacts(store)
        for what, write, error in (
            ("rename onto a name", lambda: store.contacts.rename("Bob", "CAROL"), DuplicateError),
            ("add a taken name", lambda: store.contacts.add("bob", FP_C, None), DuplicateError),
            ("add a taken key", lambda: store.contacts.add("Dave", FP_B, None), DuplicateError),
            ("replace_key onto a key", lambda: store.contacts.replace_key(bob.id, FP_B, "x"), DuplicateError),
            ("rename a stranger", lambda: store.contacts.rename("Dave", "Eve"), NotFoundError),
            ("touch a stranger", lambda: store.contacts.touch(999, 1.0), NotFoundError),
        ):
            assert_reads_match_db(store)
            with pytest.raises(error):
                write()
            assert db_contacts(store) == before, what
            assert_reads_match_db(store)


def test_rolled_back_write_that_read_the_cache_is_not_seen():
    # A read inside a contact write's transaction fills the cache with uncommitted rows:
    # the rollback must drop it again.
    with fresh_store() as store:
        store.contacts.add("Bob", FP_A, None)
        with pytest.raises(RuntimeError):
            with store.contacts._write() as conn:
                conn.execute("INSERT INTO contacts (name, fingerprint, created) "
                             "VALUES ('Ghost', ?, 1.0)", (FP_B,))
                assert store.contacts.get("ghost").name == "Ghost"
                raise RuntimeError("abandon")
        with pytest.raises(NotFoundError):
            store.contacts.get("Ghost")
        assert store.contacts.count() == 1
        assert_reads_match_db(store)


def test_in_seq_writes_keep_contacts_equal():
    # in_seq is not a Contact field, so its writers need not drop the cache.
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        before = store.contacts.all()
        store.messages.deliver_incoming_many(bob.id, [(1, "m1", "hi", 1.0)], 2.0)
        store.messages.deliver_incoming_many(bob.id, [(2, "m2", "yo", 1.0)], 2.0)
        store.messages.set_in_seq(bob.id, 5)
        assert store.messages.in_seq(bob.id) == 5
        assert db_contacts(store) == before
        assert_reads_match_db(store)


def test_name_lookup_folds_ascii_case_only_like_sqlite_nocase():
    names = ["Émile", "\u212aelvin", "Straße", "İz", "Zoë"]  # \u212a: KELVIN SIGN
    probes = ["émile", "ÉMILE", "Kelvin", "kelvin", "\u212aELVIN", "strasse", "STRAßE",
              "iz", "i\u0307z", "İZ", "zoë", "ZOË", "ZOë", "zoË"]
    with fresh_store() as store:
        for i, name in enumerate(names):
            store.contacts.add(name, bytes([i]) * 32, None)
        for probe in names + probes:
            row = store._conn.execute(
                "SELECT id FROM contacts WHERE name = ?", (probe,)).fetchone()
            if row is None:
                with pytest.raises(NotFoundError):
                    store.contacts.get(probe)
            else:
                assert store.contacts.get(probe).id == row[0], probe
        assert store.contacts.get("ZOë").name == "Zoë"  # ASCII folded
        with pytest.raises(NotFoundError):
            store.contacts.get("zoË")  # but not ë/Ë
        with pytest.raises(NotFoundError):
            store.contacts.get("kelvin")  # str.lower() would have matched the Kelvin sign


def test_name_sqlite_cannot_bind_fails_as_the_query_did():
    with fresh_store() as store:
        store.contacts.add("Bob", FP_A, None)
        with pytest.raises(UnicodeEncodeError):
            store._conn.execute("SELECT * FROM contacts WHERE name = ?", ("\ud800",))
        with pytest.raises(UnicodeEncodeError):
            store.contacts.get("\ud800")


def test_contacts_handed_out_are_immutable():
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        cached = store.contacts.get("Bob")
        for field, value in (("name", "Eve"), ("blocked", True), ("addresses", ())):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(cached, field, value)
        assert isinstance(store.contacts.get("Carol").addresses, tuple)
        listed = store.contacts.all()
        listed.clear()  # the caller's own list
        assert store.contacts.count() == 2 and len(store.contacts.all()) == 2


def test_reads_are_served_from_memory():
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        store.contacts.all()
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        try:
            store.contacts.get("bob")
            store.contacts.get_by_id(bob.id)
            store.contacts.find_by_fingerprint(FP_B)
            store.contacts.all()
            store.contacts.count()
            with pytest.raises(NotFoundError):
                store.contacts.get("nobody")
            assert statements == []
            store.contacts.set_verified("Bob", True)  # drops the cache: the next read loads it, once
            statements.clear()
            store.contacts.get("bob")
            store.contacts.count()
            assert statements == ["SELECT * FROM contacts ORDER BY name, id"]
        finally:
            store._conn.set_trace_callback(None)


def test_close_drops_the_cache():
    with tmp_dir() as d:
        store = Store(d / "chatp2p.db")
        store.contacts.add("Bob", FP_A, None)
        assert store.contacts.count() == 1
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.contacts.get("Bob")
        with pytest.raises(StoreError, match="closed"):
            store.contacts.count()


# ---- messages -------------------------------------------------------------------------


def test_outgoing_seq_per_contact_and_duplicate():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        m1 = store.messages.add_outgoing(bob.id, "m1", "one", 1.0)
        m2 = store.messages.add_outgoing(bob.id, "m2", "two", 2.0, state="sent")
        c1 = store.messages.add_outgoing(carol.id, "m1", "other", 1.0)  # same id, other contact: fine
        assert isinstance(m1, Message)
        assert (m1.seq, m2.seq, c1.seq) == (1, 2, 1)
        assert (m1.state, m2.state, m1.direction, m1.read) == ("queued", "sent", "out", True)
        with pytest.raises(DuplicateError):
            store.messages.add_outgoing(bob.id, "m1", "again", 3.0)
        assert store.messages.add_outgoing(bob.id, "m3", "three", 3.0).seq == 3
        with pytest.raises(StoreError, match="Invalid state"):
            store.messages.add_outgoing(bob.id, "m4", "x", 4.0, state="received")
        with pytest.raises(NotFoundError):
            store.messages.add_outgoing(999, "m5", "x", 4.0)


def test_outgoing_many_one_transaction_per_item_results():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        store.messages.add_outgoing(bob.id, "m1", "one", 1.0)
        results = store.messages.add_outgoing_many([
            (bob.id, "m2", "two", 2.0, "sent"),
            (bob.id, "m1", "dup", 2.0, "sent"),          # taken: its error, the rest stored
            (carol.id, "c1", "hi", 2.0, "queued"),
            (999, "x", "x", 2.0, "sent"),
            (bob.id, "m3", "three", 3.0, "received"),
            (bob.id, "m3", "three", 3.0, "sent"),
            (bob.id, "m3", "again", 3.0, "sent"),        # a duplicate inside the batch too
        ])
        assert [type(r).__name__ for r in results] == [
            "Message", "DuplicateError", "Message", "NotFoundError", "StoreError", "Message", "DuplicateError"]
        assert [(r.message_id, r.seq, r.state) for r in results if isinstance(r, Message)] == [
            ("m2", 2, "sent"), ("c1", 1, "queued"), ("m3", 3, "sent")]
        stored = {m.message_id: m for m in store.messages.history(bob.id)}
        assert results[0] == stored["m2"] and results[5] == stored["m3"]
        assert store.messages.add_outgoing(bob.id, "m4", "four", 4.0).seq == 4


def test_outgoing_seq_uses_an_index():
    with fresh_store() as store:
        plan = store._conn.execute(
            "EXPLAIN QUERY PLAN SELECT coalesce(max(seq), 0) + 1 FROM messages "
            "WHERE contact_id = 1 AND direction = 'out'").fetchall()
        assert "messages_seq" in " ".join(row[3] for row in plan)
        plan = store._conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM messages INDEXED BY messages_out_state "
            "WHERE contact_id = 1 AND direction = 'out' AND state IN ('queued', 'sent') ORDER BY seq").fetchall()
        assert "SEARCH" in " ".join(row[3] for row in plan)


def test_delivered_and_sent_ranges():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        for i in range(1, 8):
            store.messages.add_outgoing(bob.id, f"m{i}", str(i), float(i), state="sent" if i < 6 else "queued")
        store.messages.add_outgoing(carol.id, "c1", "x", 1.0, state="sent")
        store.messages.set_state(bob.id, "m2", "failed", "gave up")
        assert store.messages.mark_delivered_ranges(bob.id, [(1, 3), (5, 5)]) == [(1, "m1"), (3, "m3"), (5, "m5")]
        assert store.messages.mark_delivered_ranges(bob.id, [(1, 3), (5, 5)]) == []  # already done
        store.messages.mark_sent_ranges(bob.id, [(5, 6)])
        states = {m.message_id: m.state for m in store.messages.history(bob.id)}
        assert states == {"m1": "delivered", "m2": "failed", "m3": "delivered", "m4": "sent",
                          "m5": "delivered", "m6": "sent", "m7": "queued"}
        assert store.messages.mark_delivered_ranges(bob.id, [(1, 7)]) == [(4, "m4"), (6, "m6"), (7, "m7")]
        assert [m.state for m in store.messages.history(carol.id)] == ["sent"]
        assert store.messages.mark_delivered_ranges(bob.id, []) == []


def test_deliver_incoming_many():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        assert store.messages.deliver_incoming_many(bob.id, [(1, "a", "first", 1.0)], 2.0) == [True]
        new = store.messages.deliver_incoming_many(bob.id, [(2, "b", "second", 1.5), (3, "a", "copy", 1.0),
                                                   (4, "c", "third", 2.0)], 3.0)
        assert new == [True, False, True]
        assert store.messages.in_seq(bob.id) == 4
        assert [(m.message_id, m.seq, m.body) for m in store.messages.history(bob.id)] == [
            ("a", 1, "first"), ("b", 2, "second"), ("c", 4, "third")]
        assert store.messages.deliver_incoming_many(bob.id, [], 4.0) == []
        with pytest.raises(NotFoundError):
            store.messages.deliver_incoming_many(999, [(1, "x", "x", 1.0)], 1.0)


def test_incoming_dedupe():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        first, new = store.messages.add_incoming(bob.id, "m1", "hello", 1.0, 2.0)
        assert new is True
        assert (first.direction, first.state, first.read, first.seq) == (
            "in", "received", False, None,
        )
        again, new = store.messages.add_incoming(bob.id, "m1", "tampered?", 5.0, 6.0)
        assert new is False
        assert again == first
        # The same message_id outgoing does not clash with an incoming one.
        store.messages.add_outgoing(bob.id, "m1", "mine", 3.0)
        assert len(store.messages.history(bob.id)) == 2
        with pytest.raises(NotFoundError):
            store.messages.add_incoming(999, "m9", "x", 1.0, 1.0)


def test_set_message_state_and_pending():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        for i in range(1, 5):
            store.messages.add_outgoing(bob.id, f"m{i}", str(i), float(i))
        store.messages.add_incoming(bob.id, "in1", "yo", 1.0, 1.0)
        store.messages.set_state(bob.id, "m2", "sent")
        store.messages.set_state(bob.id, "m1", "delivered")
        store.messages.set_state(bob.id, "m4", "failed", "too large")
        pending = store.messages.pending_outgoing(bob.id)
        assert [(m.message_id, m.state) for m in pending] == [("m2", "sent"), ("m3", "queued")]
        failed = [m for m in store.messages.history(bob.id) if m.message_id == "m4"][0]
        assert (failed.state, failed.failure) == ("failed", "too large")
        store.messages.set_state(bob.id, "m4", "queued")  # retry clears the failure
        assert [m.seq for m in store.messages.pending_outgoing(bob.id)] == [2, 3, 4]
        with pytest.raises(NotFoundError, match="Message not found: nope"):
            store.messages.set_state(bob.id, "nope", "sent")
        with pytest.raises(StoreError, match="Invalid state"):
            store.messages.set_state(bob.id, "m2", "bogus")


def test_expire_queued():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        store.messages.add_outgoing(bob.id, "old", "a", 10.0)
        store.messages.add_outgoing(bob.id, "oldsent", "b", 10.0, state="sent")
        store.messages.add_outgoing(bob.id, "new", "c", 100.0)
        store.messages.add_outgoing(carol.id, "old", "d", 20.0)
        expired = store.messages.expire_queued(50.0)
        assert sorted((m.contact_id, m.message_id) for m in expired) == [
            (bob.id, "old"), (carol.id, "old"),
        ]
        assert all((m.state, m.failure) == ("failed", "expired") for m in expired)
        assert [m.message_id for m in store.messages.pending_outgoing(bob.id)] == ["oldsent", "new"]
        assert store.messages.expire_queued(50.0) == []


def test_history_paging():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        for i in range(10):
            store.messages.add_outgoing(bob.id, f"m{i}", f"b{i}", float(i))
            store.messages.add_incoming(carol.id, f"c{i}", "other", float(i), float(i))
        page = store.messages.history(bob.id, limit=4)
        assert [m.body for m in page] == ["b6", "b7", "b8", "b9"]
        page = store.messages.history(bob.id, limit=4, before=page[0].id)
        assert [m.body for m in page] == ["b2", "b3", "b4", "b5"]
        page = store.messages.history(bob.id, limit=4, before=page[0].id)
        assert [m.body for m in page] == ["b0", "b1"]
        assert store.messages.history(bob.id, limit=4, before=page[0].id) == []
        assert len(store.messages.history(bob.id)) == 10
        with pytest.raises(StoreError):
            store.messages.history(bob.id, limit=0)


def test_unread_and_mark_read():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        carol = store.contacts.add("Carol", FP_B, None)
        store.contacts.add("Dave", FP_C, None)
        store.messages.add_incoming(bob.id, "i1", "one", 1.0, 1.0)
        store.messages.add_incoming(bob.id, "i2", "two", 2.0, 2.0)
        store.messages.add_outgoing(bob.id, "o1", "reply", 3.0)
        store.messages.add_incoming(carol.id, "i1", "hey", 1.0, 1.0)
        assert store.messages.unread_counts() == {bob.id: 2, carol.id: 1}
        assert store.messages.mark_read(bob.id) == 2
        assert store.messages.mark_read(bob.id) == 0
        assert store.messages.unread_counts() == {carol.id: 1}


def test_message_to_dict():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        msg, _ = store.messages.add_incoming(bob.id, "m1", "hi", 1735732800.0, 1735732800.5)
        assert msg.to_dict() == {
            "id": msg.id,
            "contact_id": bob.id,
            "message_id": "m1",
            "direction": "in",
            "body": "hi",
            "created": "2025-01-01T12:00:00.000Z",
            "received": "2025-01-01T12:00:00.500Z",
            "state": "received",
            "seq": None,
            "read": False,
            "failure": None,
        }
        out = store.messages.add_outgoing(bob.id, "m2", "yo", 1735732800.0)
        assert out.to_dict()["received"] is None


# ---- held messages --------------------------------------------------------------------


def test_hold_caps_take_and_drop():
    with fresh_store() as store:
        hold = store.held.hold
        assert hold(FP_A, "BA", "m1", "abc", 1.0, max_count=3, max_bytes=10)
        assert hold(FP_A, "BA", "m1", "abc", 1.0, max_count=3, max_bytes=10)  # dedupe
        assert hold(FP_A, "BA", "m2", "é" * 3, 2.0, max_count=3, max_bytes=10)  # 6 bytes
        assert not hold(FP_A, "BA", "m3", "xx", 3.0, max_count=3, max_bytes=10)  # 11 > 10
        assert hold(FP_A, "BA", "m3", "x", 3.0, max_count=3, max_bytes=10)  # exactly 10
        assert not hold(FP_A, "BA", "m4", "", 4.0, max_count=3, max_bytes=100)  # count
        assert hold(FP_B, "BB", "m1", "other", 1.0, max_count=3, max_bytes=10)  # per sender
        assert held_senders(store) == {FP_A: 3, FP_B: 1}

        taken = store.held.take(FP_A)
        assert [(h.message_id, h.body, h.bundle) for h in taken] == [
            ("m1", "abc", "BA"), ("m2", "ééé", "BA"), ("m3", "x", "BA"),
        ]
        assert taken[0].fingerprint == FP_A
        assert taken[0].to_dict(lambda fp: fp.hex())["created"] == iso_utc(1.0)
        assert store.held.take(FP_A) == []
        assert store.held.drop(FP_B) == 1
        assert store.held.drop(FP_B) == 0
        assert held_senders(store) == {}


# ---- transfers ------------------------------------------------------------------------


def test_transfers_add_update_get_recent():
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        row = store.transfers.add(transfer_id="t1", contact_id=bob.id, direction="out", file_name="a.txt",
                                  path="/tmp/a.txt", size=10, chunk_size=4, tag=b"tag", state="queued")
        assert (row["transfer_id"], row["path"], row["part_path"], row["have"], row["tag"]) == (
            "t1", "/tmp/a.txt", None, "", b"tag")
        assert row["state"] == "queued" and row["state"] is TransferState.QUEUED
        assert row["created"] == row["updated"] > 0
        with pytest.raises(DuplicateError, match="'t1' is already used"):
            store.transfers.add(transfer_id="t1", contact_id=bob.id, direction="in", file_name="b",
                                size=1, chunk_size=1, tag=b"x", state="offered")
        store.transfers.add(transfer_id="t2", contact_id=bob.id, direction="in", file_name="b",
                            size=1, chunk_size=1, tag=b"x", state=TransferState.OFFERED)
        store.transfers.update("t1", state="paused", stopped_by="local", have="0-2")
        t1 = store.transfers.get("t1")
        assert (t1["state"], t1["stopped_by"], t1["have"]) == ("paused", "local", "0-2")
        assert store.transfers.get("nope") is None
        assert [r["transfer_id"] for r in store.transfers.recent()] == ["t2", "t1"]  # newest first
        assert [r["transfer_id"] for r in store.transfers.recent(("paused", "active"))] == ["t1"]
        assert [r["transfer_id"] for r in store.transfers.recent(limit=1)] == ["t2"]
        with pytest.raises(StoreError, match="Unknown transfer fields"):
            store.transfers.update("t1", bogus=1)
        with pytest.raises(StoreError, match="Invalid transfer state"):
            store.transfers.update("t1", state="lost")
        store.contacts.remove("Bob")  # its transfers go with it
        assert store.transfers.recent() == []


def test_states_are_strings():
    # Callers and the JSON compare and encode states as the strings they always were.
    assert MessageState.DELIVERED == "delivered" and "delivered" in {MessageState.DELIVERED}
    assert json.dumps([MessageState.SENT, TransferState.PAUSED]) == '["sent", "paused"]'
    assert f"{TransferState.CANCELLED}" == "cancelled"
    with fresh_store() as store:
        bob = store.contacts.add("Bob", FP_A, None)
        sent = store.messages.add_outgoing(bob.id, "m1", "x", 1.0, state="sent")
        assert sent.state is MessageState.SENT
        assert store.messages.history(bob.id)[0].state is MessageState.SENT
        assert json.dumps(sent.to_dict()["state"]) == '"sent"'


def test_sqlite_error_in_a_write_rolls_back_as_store_error():
    with fresh_store() as store:
        with pytest.raises(StoreError, match="Database error"):
            with store.transaction() as conn:
                conn.execute("INSERT INTO contacts (name, fingerprint, created) "
                             "VALUES ('Bob', ?, 1.0)", (FP_A,))
                conn.execute("INSERT INTO contacts (name, fingerprint, created) "
                             "VALUES ('Eve', x'00', 1.0)")  # CHECK: 32-byte key
        assert store.contacts.count() == 0  # Bob rolled back too
        assert store.contacts.add("Bob", FP_A, None).name == "Bob"  # not stuck in a transaction


def test_a_version_5_database_opens_and_keeps_a_lan_pair_secret():
    """Migration 6 adds contacts.lan_secret (PROTOCOL §8) to databases made before it."""
    with tmp_dir() as d:
        db = d / "chatp2p.db"
        raw = sqlite3.connect(db)
        migrate(raw, MIGRATIONS[:5], db)
        raw.execute("INSERT INTO contacts (name, fingerprint, created) VALUES ('Bob', ?, 1.0)", (FP_A,))
        raw.commit()
        raw.close()
        with Store(db) as store:
            bob = store.contacts.get("Bob")
            assert bob.lan_secret is None
            secret = bytes(range(32))
            store.contacts.set_lan_secret(bob.id, secret)
            assert store.contacts.get("Bob").lan_secret == secret
            assert secret.hex() not in repr(store.contacts.get("Bob"))
            assert "lan_secret" not in store.contacts.get("Bob").to_dict(lambda fp: fp.hex())
            with pytest.raises(StoreError):
                store.contacts.set_lan_secret(bob.id, b"short")
        with Store(db) as again:
            assert again.contacts.get("Bob").lan_secret == secret


# ---- search and delete ------------------------------------------------------------------


def test_search_finds_words_by_prefix_with_case_and_accents_folded():
    with fresh_store() as store:
        bob, carol = two_contacts(store)
        store.messages.add_outgoing(bob.id, "m1", "Un café à Paris", 1.0, "delivered")
        store.messages.add_incoming(carol.id, "i1", "naïve RÉSUMÉ", 2.0, 2.0)
        store.messages.add_outgoing(carol.id, "m2", 'a " quote, a * star and NEAR(', 3.0, "sent")
        assert [m.message_id for m in store.messages.search("CAFE paris")] == ["m1"]
        assert [m.message_id for m in store.messages.search("resume naiv")] == ["i1"]
        assert [m.message_id for m in store.messages.search("a")] == ["m2", "m1"]   # newest first
        assert [m.message_id for m in store.messages.search("a", bob.id)] == ["m1"]
        assert [m.message_id for m in store.messages.search("a", limit=1)] == ["m2"]
        for hostile in ('"', "*", "NEAR(", "-", "a OR", ")"):
            store.messages.search(hostile)   # never an FTS5 syntax error
        with pytest.raises(InvalidValueError):
            store.messages.search("  ")


def test_delete_removes_from_history_and_search_and_never_reuses_a_seq():
    with fresh_store() as store:
        bob, _ = two_contacts(store)
        store.messages.add_outgoing(bob.id, "m1", "first words", 1.0, "delivered")
        store.messages.add_outgoing(bob.id, "m2", "second words", 2.0, "delivered")
        store.messages.add_outgoing(bob.id, "m3", "in flight words", 3.0, "sent")
        store.messages.add_incoming(bob.id, "m2", "same id, other way", 4.0, 4.0)
        assert store.messages.delete(bob.id, "m2") == (2, 0)        # both directions' m2
        assert [m.message_id for m in store.messages.search("words")] == ["m3", "m1"]
        assert store.messages.delete(bob.id, "m3") == (0, 1)        # in flight: kept
        assert store.messages.delete(bob.id) == (1, 1)
        assert [m.message_id for m in store.messages.history(bob.id)] == ["m3"]
        assert store.messages.search("first") == []
        store.messages.set_state(bob.id, "m3", "delivered")
        assert store.messages.delete(bob.id) == (1, 0)
        # m3 had seq 3: the next message must not take it again
        assert store.messages.add_outgoing(bob.id, "m4", "x", 5.0).seq == 4
        with pytest.raises(NotFoundError):
            store.messages.delete(bob.id, "m3")
