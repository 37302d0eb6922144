"""Sender keys (PROTOCOL §13.4) of one node's groups: when ours must rotate, the envelopes of
a new KEY, taking the keys other members seal to us, and opening the MESSAGEs held until their
key came (shown exactly once: by record hash). Also §13.5's marking of what a hybrid record
covers. The service writes and commits the records; this module keeps the keys and history."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

from ...codec.grouprecord import FileAnnounce, GroupWireError, Record, SigKind, decode_key, decode_plain, encode_key
from ...crypto import groupcrypto, identity as ident
from ...store import Store
from .events import GroupEvents
from .live import Live
from .membership import order_key

# Signs a KEY record's draft for the group being rotated: (body, key epoch) -> signed record.
SignKey = Callable[[bytes, int], Record]
# A file announced to us: (group_id, author, announce).
Announced = Callable[[bytes, bytes, FileAnnounce], None]


def needs_rotation(live: Live, me: bytes) -> bool:
    """Our sender key was not given to exactly the current members (or never sent)."""
    row = live.row
    if not row.sender_key or not row.key_epoch:
        return True
    if live.key_epochs.get(me) != row.key_epoch:
        return True   # a crash between saving the key and storing its KEY: nobody has it
    return set(row.key_recipients) != {fp for fp in live.membership.members if fp != me}


def stored_file(announce: Optional[FileAnnounce]) -> Optional[dict]:
    """A file announcement as the history row keeps it."""
    if announce is None:
        return None
    return {"file_id": announce.file_id.hex(), "size": announce.size, "name": announce.name}


@dataclasses.dataclass
class SenderKeys:
    """The key state the service's records need; see the module docstring."""

    identity: ident.Identity
    store: Store
    counters: Any
    events: GroupEvents
    announced: Announced

    @property
    def me(self) -> bytes:
        return self.identity.fingerprint

    def rotate(self, live: Live, sign_key: SignKey) -> Record:
        """A new sender key for exactly the current members (§13.4 Rotation): saved, then its
        KEY record made; the caller commits the record."""
        epoch = max(live.row.key_epoch, live.key_epochs.get(self.me, 0)) + 1
        key = groupcrypto.new_sender_key()
        while not self.store.groups.put_key(live.row, self.me, epoch, key):
            epoch += 1   # a key saved just before a crash, never sent: its epoch is skipped
        envelopes = []
        recipients = []
        for fp, member in sorted(live.membership.members.items()):
            if fp == self.me:
                continue
            bundle = ident.Bundle.decode(member.bundle)
            envelopes.append(groupcrypto.seal_sender_key(bundle, key, live.group_id, self.me, epoch))
            recipients.append(fp)
        record = sign_key(encode_key(envelopes), epoch)
        live.row = self.store.groups.update_group(live.row, key_epoch=epoch, sender_key=key,
                                                  key_recipients=recipients)
        return record

    def take_key(self, live: Live, record: Record) -> None:
        """Store the sender key another member's KEY seals to us, if any."""
        try:
            envelopes = decode_key(record.body)
        except GroupWireError:
            self.counters["group_records_bad"] += 1
            return
        for envelope in envelopes:
            if envelope.recipient != self.me:
                continue
            try:
                key = groupcrypto.open_sender_key(self.identity.kem_seed, envelope, live.group_id,
                                                  record.author, record.key_epoch, self.me)
            except Exception:
                self.counters["group_keys_bad"] += 1
                return
            self.store.groups.put_key(live.row, record.author, record.key_epoch, key)
            return

    def open_sealed(self, live: Live) -> None:
        """Show the MESSAGEs whose key we now hold (exactly once: by record hash)."""
        keys: dict[tuple[bytes, int], Optional[bytes]] = {}
        opened = []
        for digest, record in list(live.sealed.items()):
            slot = (record.author, record.key_epoch)
            if slot not in keys:
                keys[slot] = self.store.groups.get_key(live.row, record.author, record.key_epoch)
            key = keys[slot]
            if key is None:
                continue
            del live.sealed[digest]
            try:
                plain = decode_plain(groupcrypto.decrypt_message(key, record))
            except Exception:
                self.counters["group_records_undecryptable"] += 1
                continue
            opened.append((record, plain))
        if not opened:
            return
        opened.sort(key=lambda item: order_key(item[0]))
        now = time.time()
        for record, plain in opened:
            outgoing = record.author == self.me
            message = self.store.groups.add_message(
                live.row, hash=record.hash(), author=record.author, message_id=plain.message_id,
                depth=record.depth, kind="file" if plain.file is not None else "text",
                body=plain.text or "", file=stored_file(plain.file), created=record.created_ms / 1000,
                received=now, outgoing=outgoing, pq_verified=record.sig_kind == SigKind.HYBRID)
            if plain.file is not None and not outgoing:
                self.announced(live.group_id, record.author, plain.file)
            if message is None:
                continue  # already shown (a copy after a restart)
            if outgoing:
                live.own[record.seq] = (record.hash(), plain.message_id)
                continue
            self.events.message_received(live.group_id, message)

    def mark_pq(self, live: Live, fresh: list[Record]) -> None:
        """A hybrid record covers its author's chain back to the previous hybrid one (§13.5)."""
        for record in fresh:
            if record.sig_kind != SigKind.HYBRID or record.author == self.me:
                continue
            hashes = []
            seq = record.seq - 1
            while seq >= 1:
                digest = live.by_seq.get((record.author, seq))
                if digest is None or digest in live.hybrid:
                    break
                hashes.append(digest)
                seq -= 1
            if hashes:
                self.store.groups.mark_pq_verified(hashes)
