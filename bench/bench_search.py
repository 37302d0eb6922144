#!/usr/bin/env python3
"""What full-text search costs: the message store's write rate without and with the FTS5
index (its triggers run inside every messaging-pass transaction), and search latency.

Run by hand (not a test): ``python bench/bench_search.py [--messages 100000] [--batch 64]``.
The store is a temporary SQLite file in WAL mode, as a node's; messages are stored in batches
as the messaging pass stores them (`add_outgoing_many`, one transaction each).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import statistics
import tempfile
import time

from chatp2p_core.store import Store

WORDS = ("bonjour café demain réunion fichier photo voyage train gare midi soir rendez-vous merci "
         "hello meeting tomorrow lunch coffee station ticket picture document budget weekend").split()


def without_search(store: Store) -> Store:
    """Today's schema without the triggers that keep messages_fts up to date: the baseline."""
    for trigger in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
        store._conn.execute(f"DROP TRIGGER {trigger}")
    return store


def body(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))


def fill(store: Store, count: int, batch: int) -> float:
    """Messages stored per second."""
    rng = random.Random(1)
    contact = store.contacts.add("Bob", os.urandom(32), None)
    started = time.perf_counter()
    for first in range(0, count, batch):
        items = [(contact.id, f"m{n}", body(rng), float(n), "delivered") for n in range(first, min(count, first + batch))]
        store.messages.add_outgoing_many(items)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64, help="messages per transaction (a messaging pass)")
    parser.add_argument("--smoke", action="store_true", help="2,000 messages: does the bench still run?")
    args = parser.parse_args()
    if args.smoke:
        args.messages = 2000
    with tempfile.TemporaryDirectory(prefix="chatp2p-bench-search-") as tmp:
        plain = without_search(Store(pathlib.Path(tmp, "plain.db")))
        rate_plain = fill(plain, args.messages, args.batch)
        plain._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        plain.close()
        indexed = Store(pathlib.Path(tmp, "indexed.db"))
        rate_indexed = fill(indexed, args.messages, args.batch)
        size_plain = os.path.getsize(pathlib.Path(tmp, "plain.db"))
        indexed._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_indexed = os.path.getsize(pathlib.Path(tmp, "indexed.db"))
        latencies: dict[str, list[float]] = {}
        for query in ("cafe", "reunion demain", "tick", "budget weekend photo", "zzz-nothing"):
            times = []
            for _ in range(30):
                started = time.perf_counter()
                found = indexed.messages.search(query, limit=50)
                times.append(time.perf_counter() - started)
            latencies[f"{query!r} ({len(found)} shown)"] = times
        indexed.close()
    print(f"{args.messages} messages, {args.batch} per transaction")
    print(f"store without FTS5 : {rate_plain:10.0f} messages/s")
    print(f"store with FTS5    : {rate_indexed:10.0f} messages/s  ({rate_indexed / rate_plain:.0%} of it)")
    print(f"database size      : {size_plain / 2**20:.1f} MiB -> {size_indexed / 2**20:.1f} MiB with the index")
    for label, times in latencies.items():
        print(f"search {label:40s} median {statistics.median(times) * 1000:7.2f} ms, "
              f"max {max(times) * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
