"""The group chat service (PROTOCOL §13): the API's operations, writing records, and the
flows that tie the group modules together.

One `GroupService` runs inside a `P2P`. It is a LinkObserver of the Network (GROUP records
come through its `GroupChannel`) and the network's GroupPeerDirectory (members who are not
contacts may open sessions). Its parts are elsewhere: record and frame codecs
(codec/grouprecord.py), signatures and sender keys (crypto/groupcrypto.py), membership replay
(membership.py), sync planning (sync.py), anti-entropy's frames (antientropy.py), requests'
arguments and the errors (checks.py), checking received records (intake.py), what a
membership change causes (changes.py), sender-key state and opening messages (keys.py), group
files (files.py). This module is the orchestration:

- writing: every record names the DAG's heads as parents, is signed, stored (`_commit`), then
  sent to every connected member; a MESSAGE is preceded by a KEY when the sender key was not
  given to exactly the current members (rotation), and by hybrid signatures as §13.5 says;
- receiving: frames are dispatched here, records checked by `Intake`; new operations replay
  the membership; RECORDS of a group we do not hold may make us join (§13.3);
- anti-entropy: HAVE on link up, every 10 s ±20 % and as a receipt; RECORDS answer what a
  peer lacks and is entitled to; HINTs introduce members who are not connected to each other.

Events are published after the commit of what they report (exactly once, like messages).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from typing import Any, Callable, Optional

from ...codec.grouprecord import (MAX_MEMBERS, OPERATIONS, FileAnnounce, GroupWireError, Have, Hint, Kind,
                                  MessagePlain, Record, RecordsFrame, SigKind, decode_frame, decode_remove,
                                  encode_add, encode_create, encode_frame, encode_plain, encode_promote,
                                  encode_remove, encode_rename)
from ...codec.wire import Record as WireRecord
from ...crypto import groupcrypto, identity as ident, pqc
from ...net.peers import Link, Network
from ...contract import GroupView
from ...passes import PassRunner
from ...store import Contact, Group, Store
from .antientropy import IN_FLIGHT, AntiEntropy, decode as _decode, jitter
from .channel import GroupChannel
from .changes import MembershipChanges
from .checks import (GroupError, GroupRefused, check_message, check_name, contact_bundle, find, member_fp,
                     writable)
from .events import GroupEvents
from .files import GroupFiles
from .intake import Intake, signed_ok
from .keys import SenderKeys, needs_rotation
from .live import Live
from .membership import entitled, order_key, replay
from .views import contact_name, group_view, ids, member_view, message_view

log = logging.getLogger("chatp2p.groups")

MAX_GROUPS = 64
MAX_RECORDS = 100_000          # stored per group (§13.9): the oldest non-operations go first
MAX_PENDING_INVITES = 128      # per node: members we added who have sent nothing yet (§13.9)
PENDING_TTL = 600.0
CHECKPOINT_AFTER = 10.0        # s: our MESSAGEs not covered by a hybrid signature get a CHECKPOINT
TIMER_STEP = 0.25              # s between timer passes (the network ticks every 20 ms)
PRUNE_INTERVAL = 3600.0
MAX_CANDIDATES = 8             # groups we may be joining (operations received, not decided yet)
MAX_CANDIDATE_RECORDS = 1024

Publish = Callable[[str, Any], Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


class GroupService:
    """Every group of this node; see the module docstring."""

    def __init__(self, identity: ident.Identity, backend: pqc.Backend, store: Store, network: Network,
                 transfers: Any, publish: Publish, retention: float = 30 * 86400,
                 clock: Callable[[], float] = time.monotonic, max_records: int = MAX_RECORDS) -> None:
        self.identity = identity
        self.me = identity.fingerprint
        self.backend = backend
        self.store = store
        self.network = network
        self.transfers = transfers
        self.publish = publish
        self.name_of = contact_name(store.contacts)
        self.events = GroupEvents(publish, self.name_of)
        self.retention = retention
        self.max_records = max_records
        self.clock = clock
        self.counters = network.counters
        self.groups: dict[bytes, Live] = {}
        self.candidates: dict[bytes, dict[bytes, Record]] = {}
        self.connect_contact: Callable[[Contact], None] = lambda contact: None
        self._next_timer = 0.0
        self._next_prune = 0.0
        self._pass = PassRunner(self._flush, "groups")
        self._dirty: dict[bytes, Link] = {}
        self.channel = GroupChannel(network, self._on_frame)
        self.sync = AntiEntropy(self.me, store, network, self.channel, self.events, clock)
        self.files = GroupFiles(self.me, network, transfers, self._common)
        self.keys = SenderKeys(identity, store, self.counters, self.events, self.files.note)
        self.changes = MembershipChanges(self.me, store, network, self.counters, self.events, self._common)
        self.intake = Intake(self.me, backend, self.counters, clock, self._commit, self.sync.send_have)
        self._load()
        network.observers.append(self)
        network.set_group_peers(self)
        if hasattr(transfers, "set_group_offer_check"):
            transfers.set_group_offer_check(self.files.group_offer)

    def stop(self) -> None:
        self._pass.stop()

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        for row in self.store.groups.list_groups():
            live = self._build(row)
            self.groups[live.group_id] = live
            self.keys.open_sealed(live)

    def _build(self, row: Group) -> Live:
        group_id = bytes(row.group_id)
        live = Live(row, group_id, replay(group_id, ()))
        for stored in self.store.groups.records(row):
            record = _decode(stored.data)
            if record is not None:
                live.index(record)
        live.floors = dict(self.store.groups.floors(row))
        live.replay()
        # Pending invites: the store keeps no HAVE, so a member we added counts until it has a
        # record here (or, in this process, until its first HAVE or frame: at its link up).
        live.invited = {fp for fp, member in live.membership.members.items()
                        if member.added_by == self.me and fp != self.me and live.highest(fp) == 0}
        for stored in self.store.groups.undecrypted(row):
            record = _decode(stored.data)
            if record is not None:
                live.sealed[record.hash()] = record
        seq_of = {digest: seq for (author, seq), digest in live.by_seq.items() if author == self.me}
        for message in self.store.groups.outgoing_messages(row):
            seq = seq_of.get(message.hash)
            if seq is not None:
                live.own[seq] = (message.hash, message.message_id)
        return live

    # -- the directory the network asks (GroupPeerDirectory) -------------------------------------
    def group_peer_bundle(self, fingerprint: bytes) -> Optional[bytes]:
        """The bundle of `fingerprint` when it is a member of a group we are a member of."""
        for live in self.groups.values():
            if live.state != "active" or not live.membership.is_member(self.me):
                continue
            member = live.membership.members.get(fingerprint)
            if member is not None and fingerprint != self.me:
                return member.bundle
        return None

    def _common(self, fingerprint: bytes) -> list[Live]:
        return [live for live in self.groups.values() if live.state == "active"
                and live.membership.is_member(self.me) and live.membership.is_member(fingerprint)]

    # -- the API's interface -------------------------------------------------------------------
    def create(self, name: str, members: list[Contact]) -> dict:
        name = check_name(name)
        if self._active_count() >= MAX_GROUPS:
            raise GroupRefused(f"Too many groups (at most {MAX_GROUPS})")
        if len(members) > MAX_MEMBERS - 1:
            raise GroupError(f"Too many members (at most {MAX_MEMBERS - 1} besides you)")
        bundles = []
        for contact in members:
            bundles.append((contact, contact_bundle(contact)))
        self._check_invites(len({contact.fingerprint for contact in members} - {self.me}))
        draft = Record(Kind.CREATE, bytes(16), self.me, 1, bytes(32), 1, _now_ms(), 0, SigKind.HYBRID, (),
                       encode_create(name, self.identity.bundle.encode()))
        create = groupcrypto.sign_record(draft, self.identity.sig_private, self.backend)
        group_id = create.hash()[:16]
        row = self.store.groups.create_group(group_id, name, time.time())
        live = Live(row, group_id, replay(group_id, ()))
        self.groups[group_id] = live
        self._commit(live, [create], None)
        for contact, bundle in bundles:
            if contact.fingerprint in live.membership.members:
                continue
            self._write_op(live, Kind.ADD, encode_add(0, bundle))
            live.invited.add(contact.fingerprint)
        self.events.joined(group_id, live.membership.name, live.membership.members)
        for contact, _ in bundles:
            self._welcome(live, contact)
        return self.info(live.hex)

    def list(self) -> list[dict]:
        unread = self.store.groups.unread_counts()
        return [dict(self._view(live, unread)) for live in self.groups.values()]

    def info(self, group: str) -> dict:
        live = self._find(group)
        view: dict[str, Any] = dict(self._view(live, self.store.groups.unread_counts()))
        view.update(records=self.store.groups.record_count(live.row), pending=len(live.pending),
                    key_epoch=live.row.key_epoch, former=ids(live.membership.former))
        return view

    def invite(self, group: str, contact: Contact) -> dict:
        live = self._writable(group, admin=True)
        if contact.fingerprint in live.membership.members:
            raise GroupError(f"{contact.name} is already a member of {live.membership.name}")
        if len(live.membership.members) >= MAX_MEMBERS:
            raise GroupRefused(f"The group is full (at most {MAX_MEMBERS} members)")
        bundle = contact_bundle(contact)
        self._check_invites(1)
        self._write_op(live, Kind.ADD, encode_add(0, bundle))
        live.invited.add(contact.fingerprint)
        self._welcome(live, contact)
        return self.info(live.hex)

    def pending_invites(self) -> int:
        """Members we added, over all our groups, who have sent nothing for that group yet."""
        return sum(len(live.invited & live.membership.members.keys()) for live in self.groups.values()
                   if live.state == "active")

    def _check_invites(self, count: int) -> None:
        """§13.9: at most MAX_PENDING_INVITES; checked before anything is written."""
        if count and self.pending_invites() + count > MAX_PENDING_INVITES:
            raise GroupRefused(f"Too many pending invites ({MAX_PENDING_INVITES}): wait until invited "
                               f"members come online or remove some")

    def _welcome(self, live: Live, contact: Contact) -> None:
        """§13.3 Joining: the adder sends the new member a HAVE as soon as they are connected
        (now, or on link up); its empty answer brings it every operation."""
        link = self.network.link_for_fingerprint(contact.fingerprint)
        if link is not None and link.connected:
            self.sync.send_have(live, link)
        else:
            self.connect_contact(contact)

    def remove(self, group: str, peer: str) -> dict:
        live = self._writable(group, admin=True)
        target = member_fp(live, peer, self.store.contacts)
        if target == self.me:
            raise GroupError("Use leave to leave a group")
        self._write_op(live, Kind.REMOVE, encode_remove(target, live.highest(target)))
        return self.info(live.hex)

    def promote(self, group: str, peer: str) -> dict:
        live = self._writable(group, admin=True)
        target = member_fp(live, peer, self.store.contacts)
        if live.membership.is_admin(target):
            raise GroupError("That member is already an admin")
        self._write_op(live, Kind.PROMOTE, encode_promote(target))
        return self.info(live.hex)

    def rename(self, group: str, name: str) -> dict:
        live = self._writable(group, admin=True)
        self._write_op(live, Kind.RENAME, encode_rename(check_name(name)))
        return self.info(live.hex)

    def leave(self, group: str) -> dict:
        live = self._writable(group)
        self._write_op(live, Kind.LEAVE, b"")
        return self.info(live.hex)

    def submit_message(self, group: str, body: str, message_id: Optional[str]) -> dict:
        live = self._writable(group)
        message_id = check_message(body, message_id)
        if self.store.groups.own_message(live.row, message_id) is not None:
            raise GroupError(f"message_id {message_id!r} was already used in this group")
        record = self._write_message(live, MessagePlain(message_id, text=body))
        sent = self._pushed_to(live, record)
        return {"group": live.hex, "message_id": message_id, "state": "sent" if sent else "queued"}

    def history(self, group: str, limit: int, before: Optional[str]) -> dict:
        live = self._find(group)
        anchor = None
        if before is not None:
            try:
                anchor = bytes.fromhex(before)
            except ValueError:
                raise GroupError("Field 'before' must be a message's hash (hex) from history") from None
        messages = self.store.groups.history(live.row, limit, anchor)
        others = {fp for fp in live.membership.members if fp != self.me}
        views = []
        for message in messages:
            holders = self.store.groups.deliveries(live.row, message.hash) if message.outgoing else set()
            views.append(message_view(message, self.name_of, holders, bool(others) and others <= holders))
        return {"group": live.hex, "name": live.membership.name, "messages": views}

    def mark_read(self, group: str) -> dict:
        live = self._find(group)
        count = self.store.groups.mark_read(live.row)
        return {"group": live.hex, "marked": count}

    def send_file(self, group: str, file_path: str) -> dict:
        live = self._writable(group)
        path = os.path.expanduser(file_path)
        if not os.path.isabs(path):
            raise GroupError(f"file_path must be an absolute path, got {file_path!r}")
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise GroupError(f"Cannot read {file_path}: {exc.strerror or exc}") from None
        file_id = uuid.uuid4().bytes
        message_id = uuid.uuid4().hex
        announce = FileAnnounce(file_id, size, os.path.basename(path)[:255])
        announcement = self._write_message(live, MessagePlain(message_id, file=announce))
        live.files[file_id] = (path, set(), announcement.seq)
        # each member is offered the file once its receipt shows it holds the announcement
        members = sorted(fp for fp in live.membership.members if fp != self.me)
        return {"group": live.hex, "message_id": message_id, "file_id": file_id.hex(), "name": announce.name,
                "size": size, "offered": ids(members)}

    # -- finding -------------------------------------------------------------------------------
    def _find(self, group: str) -> Live:
        return find(self.groups, group)

    def _writable(self, group: str, admin: bool = False) -> Live:
        return writable(find(self.groups, group), self.me, admin)

    def _active_count(self) -> int:
        return sum(1 for live in self.groups.values() if live.state == "active")

    # -- writing -------------------------------------------------------------------------------
    def _draft(self, live: Live, kind: Kind, body: bytes, sig_kind: SigKind, key_epoch: int = 0) -> Record:
        seq = live.highest(self.me) + 1
        prev = live.by_seq.get((self.me, seq - 1), bytes(32))
        parents = live.parents()
        return Record(kind, live.group_id, self.me, seq, prev, live.next_depth(parents, prev), _now_ms(),
                      key_epoch, sig_kind, parents, body)

    def _sign(self, draft: Record) -> Record:
        return groupcrypto.sign_record(draft, self.identity.sig_private, self.backend)

    def _write_op(self, live: Live, kind: Kind, body: bytes) -> Record:
        record = self._sign(self._draft(live, kind, body, SigKind.HYBRID))
        self._commit(live, [record], None)
        return record

    def _write_message(self, live: Live, plain: MessagePlain) -> Record:
        if needs_rotation(live, self.me):
            self._commit(live, [self.keys.rotate(live, lambda body, epoch: self._sign(
                self._draft(live, Kind.KEY, body, SigKind.HYBRID, epoch)))], None)
        row = live.row
        epoch = row.key_epoch
        assert row.sender_key is not None
        key = bytes(row.sender_key)
        first_after_key = live.key_seqs.get(self.me) == live.highest(self.me)
        hybrid = groupcrypto.needs_hybrid(row.records_since_hybrid, first_after_key)
        draft = self._draft(live, Kind.MESSAGE, b"", SigKind.HYBRID if hybrid else SigKind.ED25519, epoch)
        body = groupcrypto.encrypt_message(key, draft, encode_plain(plain))
        record = self._sign(_with_body(draft, body))
        self._commit(live, [record], None)
        return record

    # -- receiving and storing -----------------------------------------------------------------
    def _commit(self, live: Live, records: list[Record], link: Optional[Link]) -> None:
        """Store records (one transaction), index them, then do what they cause."""
        if not records:
            return
        now = time.time()
        new = self.store.groups.add_records(live.row, [(r, now) for r in records])
        new_hashes = {r.hash() for r in new}
        fresh = [r for r in records if r.hash() in new_hashes]
        mono = self.clock()
        for record in fresh:
            live.index(record)
            live.recent[record.hash()] = mono
            live.invited.discard(record.author)
        own = [r for r in fresh if r.author == self.me]
        if own:   # before the replay: a LEAVE or REMOVE still reaches those it ends
            self._push(live, own)
        before = live.membership
        if any(r.kind in OPERATIONS for r in fresh):
            after = live.replay()
            self.changes.apply(live, before, after)
        for record in fresh:
            if record.author == self.me:
                self._after_own(live, record)
        for record in fresh:
            if record.kind == Kind.KEY and record.author != self.me:
                self.keys.take_key(live, record)
        for record in fresh:
            if record.kind == Kind.MESSAGE:
                live.sealed[record.hash()] = record
        if live.sealed:
            self.keys.open_sealed(live)
        self.keys.mark_pq(live, fresh)
        if link is not None:
            state = self.sync.peer(live, link.fingerprint)
            state.changed.update(r.author for r in fresh)
            state.have_due = True
            self._dirty[link.fingerprint] = link
            self._pass.poke()

    def _after_own(self, live: Live, record: Record) -> None:
        row = live.row
        if record.sig_kind == SigKind.HYBRID:
            fields = {"records_since_hybrid": 0, "last_hybrid_seq": record.seq, "my_seq": record.seq}
            live.uncovered_since = None
        else:
            fields = {"records_since_hybrid": row.records_since_hybrid + 1, "my_seq": record.seq}
            if live.uncovered_since is None:
                live.uncovered_since = self.clock()
        live.row = self.store.groups.update_group(row, **fields)

    def _push(self, live: Live, records: list[Record]) -> None:
        """§13.6 step 3: our new records go at once to every connected member."""
        if live.state != "active" and not any(r.kind == Kind.LEAVE for r in records):
            return
        for fp in set(live.membership.members) | _former_now(live, records):
            if fp == self.me:
                continue
            link = self.network.link_for_fingerprint(fp)
            if link is None or not link.connected:
                continue
            sendable = [r for r in records if r.kind in OPERATIONS or entitled(live.membership, fp, r)]
            self.sync.send_records(live, link, [r.encode() for r in sendable])

    # -- joining ------------------------------------------------------------------------------
    def _candidate(self, group_id: bytes, link: Link, records: list[Record]) -> None:
        """RECORDS for a group we do not hold: we join if they add us by a contact (§13.3 Joining)."""
        if group_id not in self.candidates and len(self.candidates) >= MAX_CANDIDATES:
            self.counters["groups_refused"] += 1
            return
        pool = self.candidates.setdefault(group_id, {})
        for record in records:
            if record.kind in OPERATIONS and len(pool) < MAX_CANDIDATE_RECORDS:
                pool[record.hash()] = record
        ops = [r for r in pool.values() if signed_ok(r, pool, group_id, self.backend)]
        state = replay(group_id, ops)
        if self.me not in state.members:
            if not any(r.kind == Kind.CREATE for r in ops):   # ask for every operation
                self.sync.send_frame(link, encode_frame(Have(group_id, (), (link.fingerprint[:8],))))
            return
        adder = state.members[self.me].added_by
        contact = self.store.contacts.find_by_fingerprint(adder)
        del self.candidates[group_id]
        if contact is None or contact.blocked or self._active_count() >= MAX_GROUPS:
            self.counters["groups_refused"] += 1
            return
        row = self.store.groups.create_group(group_id, state.name, time.time())
        live = Live(row, group_id, replay(group_id, ()))
        self.groups[group_id] = live
        self.events.invited(group_id, state.name, adder)
        ops.sort(key=order_key)
        self.intake.receive(live, link, ops)
        rest = [r for r in records if r.kind not in OPERATIONS]
        if rest:
            self.intake.receive(live, link, rest)
        self.events.joined(group_id, live.membership.name, live.membership.members)
        self.sync.send_have(live, link)

    # -- frames --------------------------------------------------------------------------------
    def _on_frame(self, link: Link, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except GroupWireError:
            self.counters["group_frames_bad"] += 1
            return
        try:
            if isinstance(frame, Have):
                self._on_have(link, frame)
            elif isinstance(frame, RecordsFrame):
                self._on_records(link, frame)
            elif isinstance(frame, Hint):
                self._on_hint(link, frame)
        except Exception:
            log.exception("group frame from %s failed", link.name)
            self.counters["group_frames_failed"] += 1

    def _on_records(self, link: Link, frame: RecordsFrame) -> None:
        records = []
        for data in frame.records:
            record = _decode(data)
            if record is None:
                self.counters["group_records_bad"] += 1
                continue
            records.append(record)
        live = self.groups.get(frame.group_id)
        if live is None:
            if link.contact_id is not None:
                self._candidate(frame.group_id, link, records)
            else:
                self.counters["group_frames_unknown"] += 1
            return
        if link.fingerprint not in live.membership.members and link.fingerprint not in live.membership.former:
            self.counters["group_frames_nonmember"] += 1
            return
        live.invited.discard(link.fingerprint)
        self.intake.receive(live, link, records)

    def _on_have(self, link: Link, have: Have) -> None:
        live = self.groups.get(have.group_id)
        peer = link.fingerprint
        if live is None:
            if link.contact_id is not None and not have.authors:
                return  # an empty HAVE for a group we do not hold: nothing to give
            if link.contact_id is not None and have.connected and len(self.candidates) < MAX_CANDIDATES:
                # A full HAVE that holds nothing (it names the receiver among its connected members).
                self.sync.send_frame(link, encode_frame(Have(have.group_id, (), (link.fingerprint[:8],))))
            return
        if live.state != "active" or not live.membership.is_member(peer) or not live.membership.is_member(self.me):
            if live.state == "active":
                self.counters["group_have_nonmember"] += 1
            return
        live.invited.discard(peer)
        self.sync.answer_have(live, link, have)
        self.files.offer_all(live, link.fingerprint)

    def _on_hint(self, link: Link, hint: Hint) -> None:
        live = self.groups.get(hint.group_id)
        if live is None or live.state != "active" or not live.membership.is_member(link.fingerprint):
            self.counters["group_hints_ignored"] += 1
            return
        member = live.membership.members.get(hint.member)
        if member is None or hint.member == self.me or not hint.addresses:
            self.counters["group_hints_ignored"] += 1
            return
        current = self.network.link_for_fingerprint(hint.member)
        if current is not None and current.connected:
            return
        candidates = [(tuple(address), "direct") for address in hint.addresses]
        contact = self.store.contacts.find_by_fingerprint(hint.member)
        if contact is not None:
            if not contact.blocked:
                self.network.punch(contact, candidates)
            return
        self.network.connect_group_peer(hint.member, member.bundle, candidates)

    def _flush(self) -> None:
        """Receipt HAVEs (only the authors that changed), one per peer and group per pass."""
        dirty, self._dirty = self._dirty, {}
        for fp, link in dirty.items():
            if not link.connected:
                continue
            for live in self._common(fp):
                state = live.peers.get(fp)
                if state is None or not state.have_due:
                    continue
                authors, state.changed, state.have_due = set(state.changed), set(), False
                self.sync.send_have(live, link, authors)

    # -- LinkObserver -------------------------------------------------------------------------
    def link_up(self, link: Link) -> None:
        for live in self._common(link.fingerprint):
            state = self.sync.peer(live, link.fingerprint)
            state.acked, state.acked_upto = set(), 0
            state.next_have = self.clock() + jitter()
            self.sync.send_have(live, link)

    def link_down(self, link: Link) -> None:
        self.channel.link_down(link)
        for live in self.groups.values():
            live.peers.pop(link.fingerprint, None)

    def records(self, link: Link, records: list[WireRecord]) -> None:
        self.channel.records(link, records)

    def path_changed(self, link: Link) -> None:
        pass

    def tick(self, now: float) -> None:
        self.channel.tick(now)
        now = self.clock()   # the service's own clock (a fake one in tests) for its timers
        if now < self._next_timer:
            return
        self._next_timer = now + TIMER_STEP
        for live in list(self.groups.values()):
            try:
                self._timers(live, now)
            except Exception:
                log.exception("group timers failed for %s", live.hex)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            self.prune()

    def _timers(self, live: Live, now: float) -> None:
        if live.recent:
            live.recent = {h: t for h, t in live.recent.items() if now - t < IN_FLIGHT}
        if live.state != "active" or not live.membership.is_member(self.me):
            return
        for fp in live.membership.members:
            if fp == self.me:
                continue
            link = self.network.link_for_fingerprint(fp)
            if link is None or not link.connected:
                continue
            state = self.sync.peer(live, fp)
            if now >= state.next_have:
                state.next_have = now + jitter()
                self.sync.send_have(live, link)
        if live.uncovered_since is not None and now - live.uncovered_since >= CHECKPOINT_AFTER:
            self._write_op(live, Kind.CHECKPOINT, b"")
        for digest, (_, since) in list(live.pending.items()):
            if now - since > PENDING_TTL:
                del live.pending[digest]
                self.counters["group_pending_expired"] += 1

    def prune(self) -> None:
        """The retention pass (§13.9, hourly from `tick`): records older than the retention
        period, and the oldest beyond `max_records`, leave; operations and latest KEYs stay."""
        cutoff = time.time() - self.retention
        for live in list(self.groups.values()):
            removed = self.store.groups.prune(live.row, cutoff, self.max_records)
            if removed:
                self._reindex(live)

    def _reindex(self, live: Live) -> None:
        fresh = self._build(self.store.groups.get_by_ref(live.row))
        fresh.peers, fresh.hints, fresh.uncovered_since = live.peers, live.hints, live.uncovered_since
        fresh.invited = live.invited   # what this process heard (HAVEs) the store does not keep
        self.groups[live.group_id] = fresh

    # -- views ---------------------------------------------------------------------------------
    def _view(self, live: Live, unread: dict[int, int]) -> GroupView:
        """The group as the API shows it; a former member sees the last membership it knew."""
        members = [member_view(fp, live.membership.members[fp].role, self.me,  # type: ignore[arg-type]
                               self.store.contacts.find_by_fingerprint(fp), self.sync.online(fp))
                   for fp in sorted(live.membership.members)]
        return group_view(live.row, members, unread.get(live.row.id, 0))

    def _pushed_to(self, live: Live, record: Record) -> bool:
        """Whether `record` went to at least one member (else anti-entropy sends it later)."""
        return any(self.sync.online(fp) for fp in live.membership.members)


# -- helpers ------------------------------------------------------------------------------------
def _with_body(draft: Record, body: bytes) -> Record:
    return dataclasses.replace(draft, body=body)


def _former_now(live: Live, records: list[Record]) -> set[bytes]:
    """Members a LEAVE or REMOVE among `records` just ended: they still get that record."""
    out = set()
    for record in records:
        if record.kind == Kind.REMOVE:
            try:
                out.add(decode_remove(record.body)[0])
            except GroupWireError:
                pass
    if any(r.kind == Kind.LEAVE for r in records):
        out |= set(live.membership.members)
    return out
