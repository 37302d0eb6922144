"""Test helper: a private Mainline DHT swarm of libtorrent sessions (never the public DHT).

    python dht_swarm.py HOST:PORT [HOST:PORT ...]

runs one session per address, with the product's own session settings (chatp2p_core.net.dht,
private-swarm mode: no bootstrap routers, no LSD/UPnP/NAT-PMP, address rules relaxed), adds
every swarm node to every session while a routing table is small (every 0.5 s until
`ready`, then every 2 s), prints `ready` as soon as each table holds 8 other nodes (or after
10 s), then `nodes N ...` lines, and runs until its stdin closes. Tests start it in the
namespace that plays the internet.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings

import libtorrent as lt

from chatp2p_core.net.dht import DhtSettings, session_settings

REFILL = 2.0
# Until ready, the tables are looked at every READY_POLL s and refilled every REFILL_UNTIL_READY s:
# libtorrent blocks an address that sends it more than 5 packets a second (dht_block_ratelimit).
READY_POLL = 0.1
REFILL_UNTIL_READY = 0.5
READY_WITHIN = 10.0


def main(addresses: list[str]) -> int:
    warnings.simplefilter("ignore", DeprecationWarning)   # session.status(): the one cheap node count
    sessions = []
    for address in addresses:
        settings = session_settings(DhtSettings(listen=(address,), bootstrap=tuple(addresses), private_swarm=True))
        settings["alert_mask"] = 0   # nobody reads the alerts: do not queue them
        sessions.append(lt.session(settings))
    nodes = [(a.rpartition(":")[0].strip("[]"), int(a.rpartition(":")[2])) for a in addresses]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    started, ready, refilled = time.monotonic(), False, -REFILL
    wanted = min(8, len(addresses) - 1)
    while not stop.is_set():
        counts = [s.status().dht_nodes for s in sessions]
        now = time.monotonic()
        if now - refilled >= (REFILL if ready else REFILL_UNTIL_READY):
            refilled = now
            for session, count in zip(sessions, counts):
                if count < wanted:
                    for node in nodes:
                        session.add_dht_node(node)
            print("nodes", *counts, flush=True)
        if not ready and (min(counts) >= wanted or now - started > READY_WITHIN):
            ready = True
            print("ready", flush=True)
        stop.wait(REFILL if ready else READY_POLL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
