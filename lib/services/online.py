"""Online mode: publish our candidates in the Mainline DHT and find contacts there by ID.

Two jobs, one greenlet ticking once a second:

- *publishing*: our record (server-reflexive, mapped, relayed and global host addresses; LAN
  addresses only in pairwise slots) goes into a pairwise slot for every contact we share a pair
  secret with, and into our ID slot while someone may look for us by ID alone (a contact
  without a pair secret, or no contact yet). Again every REPUBLISH_INTERVAL (DHT nodes keep an
  item about 2 h), at once when the candidates or the slots change, and at each new epoch.
- *finding*: every contact without a session is looked up on a jittered schedule, often
  after a start, a link loss or a request to reach it, then backing off (further for
  contacts long gone). Looking up is also how a node learns that someone knocks: both sides
  of a pair poll, so both punch (PROTOCOL §12.4).

A record is a hint, never trusted: its candidates are punched like an introduction's, and the
handshake proves who answers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from typing import Callable, Optional

import gevent

from ..crypto import dht_record as dr
from ..crypto import identity as ident
from ..net.dht import Dht, DhtUnavailable
from ..net.nat import NatTraversal
from ..net.portmap import PortMapper
from ..net.peers import Link, Network, _fmt
from ..net.rendezvous import CandidateType
from ..store import Contact, Store

log = logging.getLogger("chatp2p.online")

TICK = 1.0
REPUBLISH_INTERVAL = 1800.0      # seconds (±10 %): well inside the ~2 h DHT nodes keep an item
PUBLISH_RETRY = 10.0             # after a publication no DHT node stored
LOOKUP_FAST = 5.0                # seconds between lookups during a fast phase (±25 %; dht_lookup_interval)
MIN_LOOKUP_FAST = 0.5
FAST_PHASE = 180.0               # how long a fast phase lasts
BACKOFF = 1.5
LOOKUP_SLOW = 300.0              # the longest interval for a contact seen in the last week
LOOKUP_GONE = 1800.0             # ... and for a contact not seen for longer
GONE_AFTER = 7 * 86400.0
LOOKUP_TIMEOUT = 30.0
PUBLISH_TIMEOUT = 60.0
LAN_PROBE_TARGET = ("192.0.2.1", 9)   # any address: the route's source address is our LAN address

_KIND_OF = {CandidateType.HOST: dr.CandidateKind.HOST, CandidateType.SRFLX: dr.CandidateKind.SRFLX,
            CandidateType.RELAY: dr.CandidateKind.RELAY}

Publish = Callable[[str, object], None]


@dataclasses.dataclass
class _Schedule:
    """When a contact is looked up next, and how fast the lookups come now."""

    next_at: float
    interval: float = LOOKUP_FAST
    fast_until: float = 0.0
    in_flight: bool = False


class OnlineDiscovery:
    """A LinkObserver of chat links; see the module docstring."""

    wants_service_links = False

    def __init__(self, identity: ident.Identity, store: Store, network: Network, nat: NatTraversal, dht: Dht,
                 publish: Publish, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None, lookup_fast: float = LOOKUP_FAST) -> None:
        self.identity = identity
        self.store = store
        self.network = network
        self.nat = nat
        self.dht = dht
        self.publish = publish
        self.mapper: Optional[PortMapper] = None     # the router's forwarding of our P2P port
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.lookup_fast = max(lookup_fast, MIN_LOOKUP_FAST)
        self.counters = network.counters
        self.last_publish: Optional[dict] = None
        self._published: Optional[tuple] = None       # (candidates, slot keys) last stored
        self._next_publish = 0.0
        self._publishing = False
        self._schedules: dict[bytes, _Schedule] = {}
        self._seen: dict[bytes, int] = {}             # contact -> highest record seq accepted
        self._loop: Optional[gevent.Greenlet] = None
        self._workers: list[gevent.Greenlet] = []
        network.observers.append(self)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.dht.start()
        except DhtUnavailable as exc:
            log.warning("online mode without the DHT: %s", exc)
            return
        port = self.nat.transport.port
        if self.dht.settings.port_mapping and port:
            self.mapper = PortMapper(self.dht.session, port)
            self.dht.listeners.append(self.mapper.on_alert)
            self.mapper.start()
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        for greenlet in [self._loop, *self._workers]:
            if greenlet is not None:
                greenlet.kill(block=False)
        self._loop, self._workers = None, []
        if self.mapper is not None:   # the router forgets the mapping now, not when its lease ends
            self.mapper.stop()
        self.dht.stop()

    def _run(self) -> None:
        while True:
            try:
                self._tick(self.clock())
            except Exception:   # a bug here must not end online mode for the session
                log.exception("online tick")
            gevent.sleep(TICK)

    def _tick(self, now: float) -> None:
        self._workers = [g for g in self._workers if not g.dead]
        if self.mapper is not None:
            self.mapper.tick()
        if not self._publishing and self.dht.nodes > 0:   # with an empty routing table a put stores nothing
            wanted = self._wanted_publication()
            if wanted[0] and (wanted != self._published or now >= self._next_publish):
                self._publishing = True
                self._workers.append(gevent.spawn(self._publish, wanted))
        for contact in self.store.contacts.all():
            if contact.blocked or contact.fingerprint == self.identity.fingerprint:
                continue
            link = self.network.links.get(contact.fingerprint)
            if link is not None and link.connected:
                continue
            schedule = self._schedules.get(contact.fingerprint)
            if schedule is None:
                schedule = self._schedules[contact.fingerprint] = _Schedule(now, self.lookup_fast,
                                                                             now + FAST_PHASE)
            if not schedule.in_flight and now >= schedule.next_at:
                schedule.in_flight = True
                self._workers.append(gevent.spawn(self._lookup, contact, schedule))

    # -- reaching ---------------------------------------------------------------------------
    def reach(self, contact: Contact) -> int:
        """Look `contact` up now and often for a while (a message waits for it, or the user
        asked); 1 when a lookup will run, 0 when the DHT is not running."""
        if not self.dht.running or self._loop is None:
            return 0
        self._hurry(contact.fingerprint)
        return 1

    def _hurry(self, fingerprint: bytes) -> None:
        now = self.clock()
        schedule = self._schedules.setdefault(fingerprint, _Schedule(now, self.lookup_fast))
        schedule.next_at = min(schedule.next_at, now)
        schedule.interval = self.lookup_fast
        schedule.fast_until = now + FAST_PHASE

    def link_up(self, link: Link) -> None:
        pass

    def link_down(self, link: Link) -> None:
        if link.contact_id is not None:
            self._hurry(link.fingerprint)   # it may have moved: look for it where it went

    def path_changed(self, link: Link) -> None:
        pass

    def records(self, link: Link, records: list) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    # -- publishing -------------------------------------------------------------------------
    def own_candidates(self) -> list[dr.Candidate]:
        """What we publish: every address a contact might reach us at, best first."""
        found: list[dr.Candidate] = []
        mapped = self.mapper.mapped if self.mapper is not None else None
        if mapped is not None:
            found.append(dr.Candidate(dr.CandidateKind.MAPPED, mapped))
        for candidate in self.nat.candidates(LAN_PROBE_TARGET):
            kind = _KIND_OF.get(candidate.kind)
            if kind is not None:
                found.append(dr.Candidate(kind, tuple(candidate.address)))
        return found

    def _wanted_publication(self) -> tuple:
        """(candidates, slot descriptions): what should be in the DHT now."""
        candidates = tuple(self.own_candidates())
        usable = dr.keep_usable(list(candidates), lan_ok=True)
        if not usable:
            return ((), ())
        epoch = dr.epoch_of(self.wall())
        contacts = [c for c in self.store.contacts.all() if not c.blocked]
        slots: list[tuple] = []
        if not contacts or any(not c.pair_secrets for c in contacts):
            slots.append(("id", epoch, self.identity.fingerprint))
        for contact in contacts:
            for secret in contact.pair_secrets:
                slots.append(("pair", epoch, contact.fingerprint, secret))
        return (usable, tuple(slots))

    def _slot(self, description: tuple) -> dr.Slot:
        if description[0] == "id":
            return dr.id_slot(description[2], description[1])
        return dr.pair_slot(description[3], self.identity.fingerprint, description[2], description[1])

    def _publish(self, wanted: tuple) -> None:
        candidates, slots = wanted
        wall = self.wall()
        try:
            results = []
            for description in slots:
                slot = self._slot(description)
                record = dr.new_record(list(candidates), wall, lan_ok=slot.kind == dr.SlotKind.PAIR)
                value = dr.seal(slot, record, os.urandom(dr.NONCE_LEN))
                results.append(self.dht.put(slot.public_key, slot.secret, slot.salt, value))
            stored = [r.get(timeout=PUBLISH_TIMEOUT) if not r.ready() else r.get() for r in results]
        except gevent.Timeout:
            stored = [None]
        finally:
            self._publishing = False
        ok = bool(stored) and all(n for n in stored)
        now = self.clock()
        if ok:
            self._published = wanted
            self._next_publish = now + REPUBLISH_INTERVAL * self.rng.uniform(0.9, 1.1)
            self.counters["dht_publishes"] += 1
        else:
            self._next_publish = now + PUBLISH_RETRY
            self.counters["dht_publish_failures"] += 1
        self.last_publish = {"at": wall, "result": "stored" if ok else "not stored",
                             "slots": len(slots), "candidates": len(candidates),
                             "stored_on": min((n or 0) for n in stored) if stored else 0}
        log.info("DHT publication of %d candidate(s) in %d slot(s): %s", len(candidates), len(slots),
                 self.last_publish["result"])

    # -- finding ----------------------------------------------------------------------------
    def _slots_of(self, contact: Contact) -> list[dr.Slot]:
        """Where `contact` may have written for us: its pairwise slots (under every pair
        secret we may share), then its ID slot, for each epoch still readable."""
        slots = []
        for epoch in dr.epochs_to_read(self.wall()):
            for secret in contact.pair_secrets:
                slots.append(dr.pair_slot(secret, contact.fingerprint, self.identity.fingerprint, epoch))
            slots.append(dr.id_slot(contact.fingerprint, epoch))
        return slots

    def _lookup(self, contact: Contact, schedule: _Schedule) -> None:
        try:
            record = self._find(contact)
        finally:
            schedule.in_flight = False
            self._reschedule(contact, schedule)
        if record is None:
            return
        link = self.network.links.get(contact.fingerprint)
        if link is not None and link.connected:
            return
        current = self.store.contacts.find_by_fingerprint(contact.fingerprint)
        if current is None or current.blocked:
            return
        targets = [(c.address, "relayed" if c.kind == dr.CandidateKind.RELAY else "direct")
                   for c in record.candidates]
        self.counters["dht_found"] += 1
        log.info("found %s in the DHT: %s", current.name, ", ".join(_fmt(a) or "" for a, _ in targets))
        self.publish("contact_found", {"peer": current.name, "fingerprint": ident.format_id(current.fingerprint),
                                       "via": "dht", "candidates": len(targets)})
        self.nat.punch(current, targets)

    def _find(self, contact: Contact) -> Optional[dr.Record]:
        """The freshest valid record `contact` left for us, or None (bad ones are counted)."""
        self.counters["dht_lookups"] += 1
        slots = self._slots_of(contact)
        pending = [(slot, self.dht.get(slot.public_key, slot.salt)) for slot in slots]
        best: Optional[dr.Record] = None
        wall = self.wall()
        with gevent.Timeout(LOOKUP_TIMEOUT, False):
            for slot, result in pending:
                value = result.get()
                if not value:
                    continue
                try:
                    record = dr.open_record(slot, value, wall)
                except dr.RecordError as exc:
                    self.counters[f"dht_record_{exc.reason}"] += 1
                    continue
                if record.seq < self._seen.get(contact.fingerprint, 0):
                    self.counters["dht_record_replayed"] += 1
                    continue
                if record.candidates and (best is None or record.seq > best.seq):
                    best = record
        if best is None:
            self.counters["dht_not_found"] += 1
            return None
        self._seen[contact.fingerprint] = best.seq
        return best

    def _reschedule(self, contact: Contact, schedule: _Schedule) -> None:
        now = self.clock()
        if now < schedule.fast_until:
            schedule.interval = self.lookup_fast
        else:
            gone = contact.last_seen is None or self.wall() - contact.last_seen > GONE_AFTER
            schedule.interval = min(schedule.interval * BACKOFF, LOOKUP_GONE if gone else LOOKUP_SLOW)
        schedule.next_at = now + schedule.interval * self.rng.uniform(0.75, 1.25)

    # -- views ------------------------------------------------------------------------------
    def status(self) -> dict:
        view = self.dht.status()
        view["mode"] = "online"
        view["last_publish"] = dict(self.last_publish) if self.last_publish else None
        view["lookups_in_flight"] = sum(1 for s in self._schedules.values() if s.in_flight)
        view["counters"] = {k: v for k, v in self.counters.items() if k.startswith("dht_")}
        view["port_mapping"] = dict(self.mapper.status()) if self.mapper is not None else None
        return view
