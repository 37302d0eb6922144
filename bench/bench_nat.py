#!/usr/bin/env python3
"""NAT traversal: time from an introduction request to a session, direct and relayed (root).

Run by hand: `sudo /tmp/venv/bin/python bench/bench_nat.py [--runs 20] [--quick]` (about
three minutes at 20 runs). For each NAT combination (cone/cone, cone/random, random/random) it
builds the namespace topology of tests/test_nat_netns.py: coturn (STUN + TURN), a rendezvous
node and the two NATed nodes, contacts of each other by ID only. Each run:

1. both NATed nodes drop each other as contacts, `p2p stop` + `p2p start` (new sockets, new
   ports, so new NAT mappings and a fresh TURN allocation; no session left on either side), wait
   until both are registered with the rendezvous again and have their relay, and add each other
   again by ID (so their own reconnection passes do not connect them first); runs are spaced
   1.3 s apart: the rendezvous lets a requester hold 8 introduction slots, each for 10 s;
2. the left node `p2p connect {peer}` (no address: an introduction through the rendezvous),
   timed from just before the request to the daemon's `peer_connected` event (its timestamp,
   1 ms resolution; same clock: same machine), with the path it came up on.

Reports per combination how often the path was direct, relayed or failed (10 s), and p50/p95 of
the connection time; targets: direct (cone/cone) p50 < 300 ms, relayed (random/random) p50
< 2.5 s. Relay candidates join the punching only after 2 s without a direct answer (PROTOCOL
§9.3), so a relayed connection costs that delay plus a few round trips through coturn.

The DHT scenario (`--scenario dht`, online mode, PROTOCOL §12) uses the world of
tests/test_online.py instead, built afresh for each run: coturn and the private DHT swarm of
test_online.SWARM (48 libtorrent sessions) in the internet namespace, no rendezvous. Each run
starts two fresh nodes (new identities, empty data dirs) behind cone NATs, adds them to each
other by ID at once, and times from the first node's start to the later of the two
`peer_connected` events (no `p2p connect`: the DHT lookups do it). Target: p50 < 20 s, p95 <
60 s. Then it measures the DHT traffic of one node per hour: bytes in and out of its
libtorrent session over `--traffic-seconds`, once with its contact connected and once with the
contact offline (lookups backing off), scaled to an hour.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from netns import netns_available  # noqa: E402
from test_nat_netns import wait_registered, world  # noqa: E402  (the namespace world of the tests)
from test_online import SWARM, online_world  # noqa: E402

COMBINATIONS = (("cone", "cone"), ("cone", "random"), ("random", "random"))
TARGET_DIRECT_P50 = 0.300
TARGET_RELAYED_P50 = 2.5
TIMEOUT = 10.0
RUN_SPACING = 1.3     # a requester holds at most 8 introduction slots, each for 10 s (PROTOCOL §9.1)
RECONNECT_PASS = 0.6  # a node tries to reach its offline contacts 0.2 s after p2p start (then every 30 s)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a non-empty list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fresh_sessions(w) -> None:
    """New sockets, ports, NAT mappings and relays on both sides, and no session between them.
    The contacts are removed first and added again (by ID) last, so that neither node's own
    reconnection pass (at start, then every 30 s) reaches the other before the timed request."""
    w.left.call("contacts", "remove", {"peer": "Righty"})
    w.right.call("contacts", "remove", {"peer": "Lefty"})
    for node in (w.left, w.right):
        node.call("p2p", "stop")
    started = time.monotonic()
    for node in (w.left, w.right):
        node.call("p2p", "start")
    for node in (w.left, w.right):
        wait_registered(node, turn=True)
    time.sleep(max(0.0, started + RECONNECT_PASS - time.monotonic()))
    w.left.call("contacts", "add", {"peer": "Righty", "public_key": w.right.id})
    w.right.call("contacts", "add", {"peer": "Lefty", "public_key": w.left.id})


def one_run(w) -> tuple[str, float | None]:
    """(path or "failed", seconds) of one introduction request from left to right."""
    left = w.left
    if left.peer("Righty")["state"] == "connected":
        return "failed", None  # connected before the request: the run would measure nothing
    seen = len(left.events.items)
    started = time.time()
    left.call("p2p", "connect", {"peer": "Righty"})

    def connected(event):
        return event["event"] == "peer_connected" and event["data"]["peer"] == "Righty"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with left.events.cond:
            found = [e for e in left.events.items[seen:] if connected(e)]
            if not found:
                left.events.cond.wait(0.05)
        if found:
            event = found[0]
            return event["data"]["path"], max(0.0, _timestamp(event["timestamp"]) - started)
    return "failed", None


def bench(combination: tuple[str, str], runs: int) -> list[tuple[str, float | None]]:
    results = []
    with world(*combination) as w:
        # Only the two NATed nodes are measured: the public node leaves them alone.
        for node, name in ((w.left, "Pub"), (w.right, "Pub"), (w.public, "Lefty"), (w.public, "Righty")):
            node.call("contacts", "remove", {"peer": name})
        last = 0.0
        for i in range(runs):
            fresh_sessions(w)
            # The rendezvous gives a requester at most 8 pending introductions, and a request
            # keeps its slot 10 s whatever becomes of it (PROTOCOL §9.1): one run per 1.3 s.
            time.sleep(max(0.0, last + RUN_SPACING - time.monotonic()))
            last = time.monotonic()
            results.append(one_run(w))
            path, seconds = results[-1]
            shown = f"{seconds * 1000:.0f} ms" if seconds is not None else "-"
            print(f"  {'/'.join(combination):<14} run {i + 1:>2}: {path:<8} {shown}", file=sys.stderr)
    return results


DHT_TARGET_P50, DHT_TARGET_P95 = 20.0, 60.0
DHT_TIMEOUT = 120.0


def dht_run(w, index: int, keep: bool = False) -> float | None:
    """Seconds from the first node's start to both sides' peer_connected, None on timeout.
    `keep`: the two nodes stay up (the last run's pair is the one whose traffic is measured)."""
    net = w.net
    started = time.time()
    left = w.start_node(net.left_host, f"left{index}")
    right = w.start_node(net.right_host, f"right{index}")
    left.call("contacts", "add", {"peer": "Righty", "public_key": right.id})
    right.call("contacts", "add", {"peer": "Lefty", "public_key": left.id})
    try:
        stamps = []
        for node, name in ((left, "Righty"), (right, "Lefty")):
            event = node.events.wait(lambda e: e["event"] == "peer_connected" and e["data"]["peer"] == name,
                                     DHT_TIMEOUT - (time.time() - started), what=f"{node.label} connected")[0]
            stamps.append(_timestamp(event["timestamp"]))
        return max(stamps) - started
    except AssertionError:
        return None
    finally:
        if not keep:
            for node in (left, right):
                node.stop()
                w.nodes.remove(node)


def dht_traffic(w, seconds: float) -> tuple[dict, dict]:
    """A node's DHT bytes per hour (in, out): with its contact connected, then offline; the
    pair is the last run's, kept up (a new pair in the same world would first wait out the
    dead nodes of the old one in the swarm's tables)."""
    left, right = w.nodes[-2], w.nodes[-1]
    print(f"  measuring the traffic of the last run's pair, {seconds:.0f} s each")

    def rate(node) -> dict:
        before = node.call("status")["dht"]["traffic"]
        time.sleep(seconds)
        after = node.call("status")["dht"]["traffic"]
        return {k: (after[k] - before[k]) * 3600 / seconds for k in ("bytes_in", "bytes_out")}
    connected = rate(left)
    right.stop()
    offline = rate(left)
    return connected, offline


def bench_dht(runs: int, traffic_seconds: float) -> None:
    print(f"DHT, cone/cone, IDs only: {runs} runs, each in a fresh world (swarm, coturn, NATs)")
    times: list[float | None] = []
    traffic: tuple[dict, dict] | None = None  # measured on the last run's pair if it connected
    for index in range(runs):
        # A fresh swarm each run: the nodes of earlier runs, gone, would otherwise be a large
        # share of the small swarm's routing tables, far larger than the Mainline DHT's share
        # of dead nodes, and every lookup would wait out their timeouts.
        # The daemons' default lookup interval: the bench measures what users get.
        with online_world("cone", "cone", turn=False, nodes=False, lookup_interval=None) as w:
            elapsed = dht_run(w, index, keep=index == runs - 1)
            if index == runs - 1 and elapsed is not None:
                traffic = dht_traffic(w, traffic_seconds)
        times.append(elapsed)
        print(f"  run {index + 1}: {'failed' if elapsed is None else f'{elapsed:.1f} s'}")
    done = [t for t in times if t is not None]
    p50, p95, longest = percentile(done, 50), percentile(done, 95), max(done) if done else None
    print()
    print(f"DHT cone/cone: {len(done)}/{len(times)} connected; p50 {p50 and round(p50, 1)} s, "
          f"p95 {p95 and round(p95, 1)} s, max {longest and round(longest, 1)} s; "
          f"targets p50 < {DHT_TARGET_P50:.0f} s, p95 < {DHT_TARGET_P95:.0f} s: "
          f"{'PASS' if p50 is not None and p95 is not None and p50 < DHT_TARGET_P50 and p95 < DHT_TARGET_P95 else 'FAIL'}")
    if traffic is None:
        print("DHT traffic per node: not measured (the last run did not connect)")
        return
    for label, rates in zip(("contact connected", "contact offline"), traffic):
        print(f"DHT traffic per node, {label}: {rates['bytes_in'] / 1e6:.2f} MB/h in, "
              f"{rates['bytes_out'] / 1e6:.2f} MB/h out (measured over {traffic_seconds:.0f} s, private swarm of "
              f"{len(SWARM)})")


def _ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="introductions per NAT combination (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 runs per combination, for a smoke test")
    parser.add_argument("--only", choices=["/".join(c) for c in COMBINATIONS], action="append",
                        help="run only this combination (repeatable)")
    parser.add_argument("--scenario", choices=("rendezvous", "dht", "all"), default="all",
                        help="introductions through a rendezvous, online mode through a DHT, or both")
    parser.add_argument("--traffic-seconds", type=float, default=300.0,
                        help="how long the DHT traffic of an idle node is measured, each way (default 300)")
    parser.add_argument("--smoke", action="store_true",
                        help="one DHT run and one cone/cone introduction: does the bench still run?")
    args = parser.parse_args()
    ok, reason = netns_available(iptables=True)
    if not ok:
        print(f"bench_nat: {reason}", file=sys.stderr)
        return 2
    runs = 1 if args.smoke else 3 if args.quick else args.runs
    if args.scenario in ("dht", "all"):
        bench_dht(runs, 1.0 if args.smoke else 20.0 if args.quick else args.traffic_seconds)
        if args.scenario == "dht":
            return 0
    combinations = [c for c in COMBINATIONS if not args.only or "/".join(c) in args.only]
    if args.smoke:
        combinations = combinations[:1]
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{runs} runs per combination")
    table = {}
    started = time.monotonic()
    for combination in combinations:
        table[combination] = bench(combination, runs)
    print()
    print(f"{'NAT left/right':<16}{'runs':>5}{'direct':>8}{'relayed':>9}{'failed':>8}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for combination, results in table.items():
        times = [s for p, s in results if s is not None]
        count = {p: sum(1 for q, _ in results if q == p) for p in ("direct", "relayed", "failed")}
        print(f"{'/'.join(combination):<16}{len(results):>5}{count['direct']:>8}{count['relayed']:>9}"
              f"{count['failed']:>8}{_ms(percentile(times, 50)):>9}{_ms(percentile(times, 95)):>9}"
              f"{_ms(max(times) if times else None):>9}")
    print()
    verdicts = []
    for combination, path, target in ((("cone", "cone"), "direct", TARGET_DIRECT_P50),
                                      (("random", "random"), "relayed", TARGET_RELAYED_P50)):
        if combination not in table:
            continue
        times = [s for p, s in table[combination] if p == path]
        p50, p95 = percentile(times, 50), percentile(times, 95)
        passed = p50 is not None and p50 < target
        verdicts.append(passed)
        print(f"{path:<8} ({'/'.join(combination)}): p50 {_ms(p50)} ms, p95 {_ms(p95)} ms over {len(times)} runs; "
              f"target p50 < {target * 1000:.0f} ms: {'PASS' if passed else 'FAIL'}")
    print(f"(whole bench: {time.monotonic() - started:.0f} s)")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
