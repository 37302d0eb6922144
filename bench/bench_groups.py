#!/usr/bin/env python3
"""Group chats (PROTOCOL §13) with real daemons on loopback: fan-out, catch-up, bytes.

Run by hand: `.venv/bin/python bench/bench_groups.py [--members 16] [--catch-up 1000]`
(a few minutes; `--smoke`: 4 members, a few messages, for tests/test_benches.py). It starts
--members `chatp2pd` (tests/daemon.py), makes the first (A) a contact of every other, creates
a group of all of them and waits until every member has a session with every other (the
others are group peers, introduced by HINTs, §13.7). Then:

1. Fan-out: A sends --samples messages one at a time; for each, the time from the API call
   to the last member's `group_message_received`. p50/p95.
2. Rate: every member sends its share of --messages (at most 40 each: one author alone is held
   to 40 at once and 4 a second by the receivers' rate limit, PROTOCOL §13.9) as fast as its
   API connection allows, all at once; the time until every member has published everyone
   else's: messages/s for the group.
3. Bytes on the wire per message per member during 2: the group frame bytes every daemon sent
   (`group_frame_bytes_sent`: records, HAVEs, HINTs) over messages × (members - 1), and the
   same plus the framing of each frame (GROUP record header 15 + session DATA overhead 35 bytes,
   per frame: a lower bound, frames over one datagram pay it per fragment); IP/UDP headers
   (28 bytes per datagram) not included.
4. Catch-up: one member stops, A sends --catch-up messages, the member starts again and
   connects to A; the time from its start until it holds them all.

Numbers measured while other work runs on the machine are noisy: say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import Daemon, ok  # noqa: E402  (tests/daemon.py: real daemon subprocess)
from events import Events  # noqa: E402  (tests/events.py: every event of one daemon)
from poll import wait_for  # noqa: E402

FRAME_OVERHEAD = 15 + 35   # GROUP record header + session DATA overhead, per frame (one datagram)


class Member:
    def __init__(self, root: pathlib.Path, label: str) -> None:
        self.label = label
        self.daemon = Daemon(root / label, "--keepalive-interval", "2")
        self.events: Events | None = None

    def start(self) -> "Member":
        self.daemon.start()
        status = self.call("status")
        self.id = status["identity"]["fingerprint"]
        self.bundle = status["identity"]["public_key"]
        self.address = f"127.0.0.1:{status['p2p']['port']}"
        self.events = Events(self.daemon)
        return self

    def call(self, command: str, action: str | None = None, data: dict | None = None):
        return ok(self.daemon.request(command, action, data), f"{self.label} {command} {action}")["data"]

    def counter(self, name: str) -> int:
        return int(self.call("status")["p2p"]["counters"].get(name, 0))

    def wait_all(self, gid: str, prefix: str, count: int, timeout: float) -> None:
        """Until this member published `count` messages whose id starts with `prefix`."""
        assert self.events is not None
        got = self.events.wait_count("group_message_received", count, timeout, group=gid,
                                     key=lambda d: d["message_id"].startswith(prefix))
        if len({d["message_id"] for d in got}) < count:
            raise AssertionError(f"{self.label} has {len(got)} of {count} {prefix}* messages after {timeout} s")

    def stop(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()


def setup(root: pathlib.Path, count: int) -> tuple[list[Member], str]:
    members = [Member(root, f"m{i:02d}") for i in range(count)]
    threads = [threading.Thread(target=m.start) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a = members[0]
    for m in members[1:]:
        a.call("contacts", "add", {"peer": m.label, "public_key": m.bundle})
        m.call("contacts", "add", {"peer": a.label, "public_key": a.bundle})
        a.call("p2p", "connect", {"peer": m.label, "address": m.address})
    gid = a.call("group", "create", {"name": "bench", "members": [m.label for m in members[1:]]})["group"]
    for m in members[1:]:
        assert m.events is not None
        m.events.wait_data("group_joined", 60, group=gid)
    wait_for(lambda: all(m.call("group", "info", {"group": gid})["online"] == count - 1 for m in members),
             120, "every member connected to every other")
    return members, gid


def fan_out(members: list[Member], gid: str, samples: int) -> list[float]:
    a, others = members[0], members[1:]
    times = []
    for i in range(samples):
        mid = f"fan-{i}"
        started = time.perf_counter()
        a.call("group", "send_message", {"group": gid, "message": f"fan-out sample {i}", "message_id": mid})
        for m in others:
            assert m.events is not None
            m.events.wait_data("group_message_received", 60, group=gid, message_id=mid)
        times.append(time.perf_counter() - started)
    return times


def rate(members: list[Member], gid: str, count: int, tag: str) -> tuple[float, float, float]:
    """Every member sends its share at once (one API connection each): the group's throughput.
    One author alone is held to 40 records at once and 4 a second by the receivers' rate limit
    (PROTOCOL §13.9), so a share stays within 40."""
    share = max(1, min(40, count // len(members)))
    total = share * len(members)
    before = [(m.counter("group_frame_bytes_sent"), m.counter("group_frames_sent")) for m in members]

    def send(m: Member) -> None:
        with m.daemon.client() as client:
            for i in range(share):
                mid = f"rate-{tag}-{m.label}-{i:04d}"
                reply = client.request("group", "send_message", {"group": gid, "message": "x" * 100, "message_id": mid})
                assert reply["success"], reply

    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in members:
        m.wait_all(gid, f"rate-{tag}-", total - share, 600)   # everyone else's
    elapsed = time.perf_counter() - started
    time.sleep(1.0)   # the receipts of the last messages
    after = [(m.counter("group_frame_bytes_sent"), m.counter("group_frames_sent")) for m in members]
    frame_bytes = sum(x[0] - y[0] for x, y in zip(after, before))
    frames = sum(x[1] - y[1] for x, y in zip(after, before))
    per = total * (len(members) - 1)
    print(f"rate: {total} messages of 100 characters, {share} from each member at once")
    return total / elapsed, frame_bytes / per, (frame_bytes + frames * FRAME_OVERHEAD) / per


def catch_up(members: list[Member], gid: str, count: int) -> float:
    a, late = members[0], members[-1]
    late.stop()
    ids = [f"late-{i:05d}" for i in range(count)]
    with a.daemon.client() as client:
        for mid in ids:
            assert client.request("group", "send_message", {"group": gid, "message": "y" * 100, "message_id": mid})["success"]
    started = time.perf_counter()
    late.start()
    late.call("p2p", "connect", {"peer": a.label, "address": a.address})
    late.wait_all(gid, "late-", count, 900)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--catch-up", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="4 members, a few messages (tests/test_benches.py)")
    args = parser.parse_args()
    if args.smoke:
        args.members, args.samples, args.messages, args.catch_up = 4, 3, 20, 30
    print(f"bench_groups: {args.members} members, {os.cpu_count()} CPUs (daemons and this client share them)")
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        members: list[Member] = []
        try:
            started = time.perf_counter()
            members, gid = setup(pathlib.Path(tmp), args.members)
            print(f"setup: group of {args.members} with every session up in {time.perf_counter() - started:.1f} s")
            times = sorted(fan_out(members, gid, args.samples))
            print(f"fan-out to {args.members - 1} members: p50 {statistics.median(times) * 1000:.1f} ms, "
                  f"p95 {times[int(0.95 * (len(times) - 1))] * 1000:.1f} ms ({len(times)} samples)")
            time.sleep(0 if args.smoke else 11)   # the per-author rate limit refills (4 a second)
            for phase in ("first (each member's KEY included)", "second (keys known)"):
                per_s, frame_bytes, wire = rate(members, gid, args.messages, phase[:5])
                print(f"rate, {phase}: {per_s:.0f} messages/s for the group (every member has every message)")
                print(f"bytes per message per member, {phase}: {frame_bytes:.0f} in group frames, ~{wire:.0f} "
                      f"with GROUP and session framing (IP/UDP headers not counted)")
                time.sleep(0 if args.smoke else 11)   # the per-author rate limit refills (4 a second)
            seconds = catch_up(members, gid, args.catch_up)
            print(f"catch-up: a member back after {args.catch_up} messages holds them all {seconds:.1f} s "
                  f"after it starts")
        finally:
            for m in members:
                m.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
