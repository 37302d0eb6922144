"""Messages from strangers, held until the user accepts or refuses the sender (`store.held`).

Keyed by the sender's key, not by a contact (there is none yet), and capped per sender so a
stranger cannot fill the disk."""
from __future__ import annotations

import dataclasses
import sqlite3
from typing import TYPE_CHECKING, Any, Callable

from ..util import iso_utc
from .fields import check_fingerprint

if TYPE_CHECKING:
    from .database import Store


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


class HeldMessageRepository:
    """The `held_messages` table."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def hold(
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
        fingerprint = check_fingerprint(fingerprint)
        size = len(body.encode("utf-8"))
        with self._store.transaction() as conn:
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

    def take(self, fingerprint: bytes) -> list[HeldMessage]:
        """Return this stranger's held messages in the sender's order and delete them."""
        fingerprint = check_fingerprint(fingerprint)
        with self._store.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM held_messages WHERE fingerprint = ? ORDER BY seq, id",
                (fingerprint,),
            ).fetchall()
            conn.execute("DELETE FROM held_messages WHERE fingerprint = ?", (fingerprint,))
            return [HeldMessage.from_row(row) for row in rows]

    def drop(self, fingerprint: bytes) -> int:
        """Delete this stranger's held messages; return how many there were."""
        fingerprint = check_fingerprint(fingerprint)
        with self._store.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM held_messages WHERE fingerprint = ?", (fingerprint,)
            )
            return cur.rowcount
