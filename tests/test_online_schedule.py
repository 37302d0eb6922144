"""Online mode's lookup schedule (services/online.py) on a fake clock: fast after a start or a
request, then backing off, further for contacts long gone; and which slots are published."""

import collections
import hashlib
import random
import tempfile
import types

from chatp2p_core.services import online
from chatp2p_core.store import Store
from clock import FakeClock

WALL = 1_796_300_000.0


def discovery(clock, store, **kwargs):
    network = types.SimpleNamespace(observers=[], links={}, counters=collections.Counter())
    dht = types.SimpleNamespace(running=True, nodes=1)
    me = types.SimpleNamespace(fingerprint=hashlib.sha256(b"me").digest())
    found = online.OnlineDiscovery(me, store, network, nat=None, dht=dht, publish=lambda *a: None,
                                   clock=clock, wall=lambda: WALL, rng=random.Random(7), **kwargs)
    found._loop = object()   # as if started: reach() only schedules
    return found


def intervals(found, contact, schedule, clock, count):
    seen = []
    for _ in range(count):
        before = clock()
        found._reschedule(contact, schedule)
        seen.append(schedule.next_at - before)
        clock.advance(schedule.next_at - before)
    return seen


def test_lookups_are_fast_for_a_while_then_back_off_to_a_cap_that_depends_on_last_seen():
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/db")
        clock = FakeClock()
        found = discovery(clock, store)
        recent = store.contacts.add("Recent", hashlib.sha256(b"r").digest(), None)
        store.contacts.touch(recent.id, WALL - 3600, "198.51.100.7:4000")
        recent = store.contacts.get("Recent")
        gone = store.contacts.add("Gone", hashlib.sha256(b"g").digest(), None)
        for contact, cap in ((recent, online.LOOKUP_SLOW), (gone, online.LOOKUP_GONE)):
            found.reach(contact)
            schedule = found._schedules[contact.fingerprint]
            assert schedule.next_at <= clock()                     # a request: look it up now
            fast = intervals(found, contact, schedule, clock, 10)
            assert all(0.75 * online.LOOKUP_FAST <= i <= 1.25 * online.LOOKUP_FAST for i in fast), fast
            clock.advance(online.FAST_PHASE)
            slow = intervals(found, contact, schedule, clock, 30)
            assert slow[1] > slow[0] * 1.1 and max(slow) <= 1.25 * cap and min(slow[-5:]) >= 0.75 * cap, slow
            found.reach(contact)                                   # asked again: fast again
            assert schedule.next_at <= clock() and intervals(found, contact, schedule, clock, 1)[0] <= \
                1.25 * online.LOOKUP_FAST
        store.close()


def test_the_fast_lookup_interval_is_a_setting_with_a_floor():
    from chatp2p_core import config as cfg
    assert cfg.SETTINGS_BY_NAME["dht_lookup_interval"].default == online.LOOKUP_FAST == 5.0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/db")
        clock = FakeClock()
        for chosen, used in ((1.0, 1.0), (0.0, online.MIN_LOOKUP_FAST)):
            found = discovery(clock, store, lookup_fast=chosen)
            contact = store.contacts.add(f"C{chosen}", hashlib.sha256(b"c%r" % chosen).digest(), None)
            found.reach(contact)
            schedule = found._schedules[contact.fingerprint]
            fast = intervals(found, contact, schedule, clock, 10)
            assert all(0.75 * used <= i <= 1.25 * used for i in fast), fast
            clock.advance(online.FAST_PHASE)
            intervals(found, contact, schedule, clock, 1)
            assert schedule.interval == online.BACKOFF * used   # backing off from there
        store.close()


def test_the_id_slot_is_published_only_while_someone_may_look_for_us_by_id():
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/db")
        found = discovery(FakeClock(), store)
        found.own_candidates = lambda: [online.dr.Candidate(online.dr.CandidateKind.SRFLX, ("198.51.100.7", 4000))]
        kinds = lambda: [slot[0] for slot in found._wanted_publication()[1]]
        assert kinds() == ["id"]                                   # no contact yet: someone may add us
        bob = store.contacts.add("Bob", hashlib.sha256(b"b").digest(), None)
        assert kinds() == ["id"]                                   # Bob was added by ID: no pair secret
        store.contacts.set_lan_secret(bob.id, b"\x01" * 32)
        assert kinds() == ["pair"]                                 # every contact has a pairwise slot
        store.contacts.set_lan_secret(bob.id, b"\x02" * 32)
        assert kinds() == ["pair", "pair"]                         # the new and the previous secret
        store.contacts.add("Carol", hashlib.sha256(b"c").digest(), None)
        assert kinds() == ["id", "pair", "pair"]                   # added by ID: the ID slot again
        found.own_candidates = lambda: [online.dr.Candidate(online.dr.CandidateKind.HOST, ("127.0.0.1", 4000))]
        assert found._wanted_publication() == ((), ())             # nothing usable: nothing published
        store.close()
