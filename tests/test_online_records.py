"""Online mode's reader against hostile records, over a real DHT: a private swarm of 8
libtorrent sessions on loopback addresses, an attacker who has Righty's ID and writes Righty's
ID slot, and the `OnlineDiscovery` of a node that has Righty as a contact. Garbage, records for
another ID, expired and replayed records are ignored and counted (the other refusals, random
bytes and records from the future, have their unit tests in test_dht_record.py); a fresh
record is found and handed to punching. It all runs in a child process (as the daemons of other tests
do); the test reads its JSON report.
"""

import json
import os
import subprocess
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SCENARIO = r"""
import collections, hashlib, json, os, sys, tempfile, time, types, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import gevent
sys.path.insert(0, sys.argv[1])
from poll import wait_for
from chatp2p_core.crypto import dht_record as dr
from chatp2p_core.net.dht import Dht, DhtSettings
from chatp2p_core.services import online
from chatp2p_core.store import Store

SWARM = tuple(f"127.0.9.{20 + i}:6881" for i in range(8))
FAKE = [dr.Candidate(dr.CandidateKind.SRFLX, ("198.51.100.99", 4444))]

def dht(address, read_only):
    node = Dht(DhtSettings(listen=(address,), bootstrap=SWARM, private_swarm=True, read_only=read_only))
    node.start()
    return node

swarm = [dht(address, False) for address in SWARM]
wait_for(lambda: min(node.nodes for node in swarm) >= 4, 20, "the swarm", sleep=gevent.sleep)
attacker, reader = dht("127.0.9.40:6881", False), dht("127.0.9.41:6881", False)
wait_for(lambda: attacker.nodes >= 4 and reader.nodes >= 4, 20, "the clients", sleep=gevent.sleep)
righty = hashlib.sha256(b"righty").digest()
store = Store(os.path.join(tempfile.mkdtemp(), "db"))
contact = store.contacts.add("Righty", righty, None)
punched = []
network = types.SimpleNamespace(observers=[], links={}, counters=collections.Counter())
nat = types.SimpleNamespace(punch=lambda c, targets: punched.append([c.name, targets]))
me = types.SimpleNamespace(fingerprint=hashlib.sha256(b"lefty").digest())
found = online.OnlineDiscovery(me, store, network, nat, reader, publish=lambda *a: None)

def sealed(wall, fingerprint=righty):
    slot = dr.id_slot(fingerprint, dr.epoch_of(time.time()))
    return dr.seal(slot, dr.new_record(FAKE, wall, False), os.urandom(12))

steps = [
    ("garbage", os.urandom(40), "dht_record_malformed"),
    ("expired", sealed(time.time() - 3 * dr.RECORD_LIFETIME), "dht_record_expired"),
    ("another ID's record", sealed(time.time(), hashlib.sha256(b"x").digest()), "dht_record_undecryptable"),
    ("fresh", sealed(time.time()), "dht_found"),
    ("replayed older", sealed(time.time() - 600), "dht_record_replayed"),
]
report = []
for what, value, counter in steps:
    slot = dr.id_slot(righty, dr.epoch_of(time.time()))
    attacker.put(slot.public_key, slot.secret, slot.salt, value)
    # The value is readable before the put reports (that waits for its slowest node).
    wait_for(lambda: reader.get(slot.public_key, slot.salt).get(timeout=20) == value, 40,
             f"{what} readable", sleep=gevent.sleep)
    before = network.counters[counter]
    def counted():
        found._lookup(contact, online._Schedule(0.0))
        return network.counters[counter] > before
    wait_for(counted, 30, f"{what}: {counter}", sleep=gevent.sleep)
    report.append([what, counter, network.counters[counter] - before])
print(json.dumps({"steps": report, "punched": punched, "counters": dict(network.counters)}), flush=True)
for node in swarm + [attacker, reader]:
    node.stop()
"""


def test_garbage_other_id_expired_and_replayed_records_are_ignored_and_counted():
    done = subprocess.run([sys.executable, "-c", SCENARIO, TESTS_DIR], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [step[2] for step in report["steps"]] == [1] * 5, report
    # Only the fresh record was acted on: its one candidate, punched once.
    assert report["punched"] == [["Righty", [[["198.51.100.99", 4444], "direct"]]]], report
