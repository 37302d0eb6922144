"""The node's persistent state: one SQLite database (`DATA_DIR/chatp2p.db`), one connection.

`Store` owns that connection: it opens the file, runs the migrations, hands out write
transactions and closes. The data is reached through its five repositories, one per
aggregate: `store.contacts`, `store.messages`, `store.held` (messages from strangers),
`store.transfers` and `store.groups`. They share the connection, so a transaction never spans two files.

Durability: every write method commits before it returns. With the default
`synchronous=NORMAL` in WAL mode a committed write survives a crash or kill of the
process (SIGKILL included) but the last commits may be lost on power failure;
`durable=True` sets `synchronous=FULL`, which syncs the WAL on every commit so a
commit also survives power loss, at the cost of one fsync per write.

Concurrency: one connection, used by the greenlets of one gevent process. Every call
is short and never yields to the hub in the middle of a transaction, so greenlets
cannot interleave inside one. No threads.

Caching: the contacts table is also held in memory by `store.contacts`, so any write to
`contacts` goes through that repository, which drops its copy (see contacts.py).

Privacy: the database and its -wal/-shm side files are created mode 0600.
"""
from __future__ import annotations

import os
import pathlib
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator

from .contacts import ContactRepository
from .errors import StoreError
from .groups import GroupRepository
from .held import HeldMessageRepository
from .messages import MessageRepository
from .migrations import MIGRATIONS, Migration, migrate
from .transfers import TransferRepository

BUSY_TIMEOUT_MS = 5000


class Store:
    """The SQLite database of one node. See the module docstring for durability."""

    migrations: tuple[Migration, ...] = MIGRATIONS

    def __init__(self, path: pathlib.Path, durable: bool = False) -> None:
        self.path = pathlib.Path(path)
        self.durable = durable
        self._conn: sqlite3.Connection | None = self._open()
        self.contacts = ContactRepository(self)
        self.messages = MessageRepository(self)
        self.held = HeldMessageRepository(self)
        self.transfers = TransferRepository(self)
        self.groups = GroupRepository(self)

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
            migrate(conn, self.migrations, self.path)
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

    def close(self) -> None:
        """Fold the WAL back into the main file and close, so the file stands alone."""
        self.contacts.invalidate()
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

    # ---- for the repositories ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed before the caller returns.

        SQLite's own errors (disk full, busy past the timeout) become StoreError so the
        callers handle one family of exceptions. Writes to `contacts` use
        `store.contacts`' own wrapper of this, which keeps its cache right.
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

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run one read outside a transaction and return every row."""
        return self._checked().execute(sql, params).fetchall()

    def _checked(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("The store is closed")
        return self._conn
