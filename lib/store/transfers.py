"""File transfers, both directions (`store.transfers`).

The transfer layer (services/transfer/) owns their meaning and state machine; this
repository keeps what a restart needs to resume them: the offer, where the bytes go, the
state, and `have` (chunk ranges durable in the .part file). Rows are plain dicts (typed as
`TransferRow`): the transfer layer reads them by column name.
"""
from __future__ import annotations

import sqlite3
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypedDict

from ..contract import TransferState
from .errors import DuplicateError, StoreError

if TYPE_CHECKING:
    from .database import Store


_STATE = MappingProxyType({state.value: state for state in TransferState})


class TransferRow(TypedDict):
    """One row of `transfers`."""

    id: int
    transfer_id: str
    contact_id: int | None       # the peer: a contact, or (None) ...
    peer_fingerprint: bytes | None  # ... a group peer (PROTOCOL §13.7), by its fingerprint
    group_id: bytes | None       # a group file's transfer (PROTOCOL §13.4)
    direction: Literal["in", "out"]
    file_name: str
    path: str | None
    part_path: str | None
    size: int
    chunk_size: int
    tag: bytes
    state: TransferState
    stopped_by: str | None       # "local" or "peer", for paused and failed transfers
    have: str                    # chunk ranges durable on disk, "0-12,20-31" (half-open)
    sha256: str | None
    error: str | None
    created: float
    updated: float


# The columns `update` may set (id, created and updated are the store's).
COLUMNS = ("transfer_id", "contact_id", "peer_fingerprint", "group_id", "direction", "file_name", "path", "part_path",
           "size", "chunk_size", "tag", "state", "stopped_by", "have", "sha256", "error")


def _state(state: str) -> TransferState:
    member = _STATE.get(state)
    if member is None:
        raise StoreError(f"Invalid transfer state: {state}")
    return member


def _row(row: sqlite3.Row) -> TransferRow:
    fields = dict(row)
    fields["state"] = _state(fields["state"])
    return fields  # type: ignore[return-value]  # the table's columns are TransferRow's keys


class TransferRepository:
    """The `transfers` table."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, *, transfer_id: str, contact_id: int | None, direction: Literal["in", "out"],
            file_name: str, size: int, chunk_size: int, tag: bytes, state: str,
            path: str | None = None, part_path: str | None = None,
            peer_fingerprint: bytes | None = None, group_id: bytes | None = None) -> TransferRow:
        """Insert a transfer with a contact, or (contact_id None) with the group peer
        `peer_fingerprint`; DuplicateError if its transfer_id is taken."""
        if (contact_id is None) == (peer_fingerprint is None):
            raise StoreError("a transfer's peer is a contact or a group peer's fingerprint, not both")
        now = time.time()
        with self._store.transaction() as conn:
            if conn.execute("SELECT 1 FROM transfers WHERE transfer_id = ?",
                            (transfer_id,)).fetchone() is not None:
                raise DuplicateError(f"transfer_id {transfer_id!r} is already used")
            cur = conn.execute(
                "INSERT INTO transfers (transfer_id, contact_id, peer_fingerprint, group_id, direction, "
                "file_name, path, part_path, size, chunk_size, tag, state, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (transfer_id, contact_id, peer_fingerprint, group_id, direction, file_name, path,
                 part_path, size, chunk_size, tag, _state(state), now, now))
            return _row(conn.execute("SELECT * FROM transfers WHERE id = ?",
                                     (cur.lastrowid,)).fetchone())

    def update(self, transfer_id: str, **fields: object) -> None:
        """Set these columns (names from COLUMNS) and the `updated` time."""
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise StoreError(f"Unknown transfer fields: {sorted(unknown)}")
        if "state" in fields:
            fields["state"] = _state(str(fields["state"]))
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._store.transaction() as conn:
            conn.execute(f"UPDATE transfers SET {sets}, updated = ? WHERE transfer_id = ?",
                         (*fields.values(), time.time(), transfer_id))

    def get(self, transfer_id: str) -> TransferRow | None:
        rows = self._store.query("SELECT * FROM transfers WHERE transfer_id = ?", (transfer_id,))
        return _row(rows[0]) if rows else None

    def recent(self, states: tuple[str, ...] | None = None, limit: int = 1000) -> list[TransferRow]:
        """Transfers (in these states), newest first."""
        if states:
            rows = self._store.query(
                f"SELECT * FROM transfers WHERE state IN ({', '.join('?' * len(states))}) "
                "ORDER BY id DESC LIMIT ?", (*states, limit))
        else:
            rows = self._store.query("SELECT * FROM transfers ORDER BY id DESC LIMIT ?", (limit,))
        return [_row(row) for row in rows]
