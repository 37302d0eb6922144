#!/usr/bin/env python3
"""File transfer throughput, CPU, memory and chat latency of two real daemons on loopback.

Run by hand: `/tmp/venv/bin/python bench/bench_transfer.py [--size-mib 256] [--runs 3]`.
Two `chatp2pd` (tests/daemon.py: temporary dirs, free loopback ports) become contacts and
connect; then, for each run, A sends a --size-mib file that B accepts. Reported per run and
as the median:

1. MiB/s from `p2p accept_file` to B's `file_received` (SHA-256 checked against the source),
   CPU seconds of each daemon over the transfer (/proc), and the peak RSS (VmHWM) of both.
2. Chat during a transfer: while one more file flows, A sends a chat message every 50 ms;
   the time from `p2p send_message` to B's `p2p_message_received` event, p50/p95.

Targets (issue 5): >= 150 MiB/s on loopback, peak RSS < 100 MB, chat p95 < 50 ms.
Not measured here yet: the same at 1 % loss in a network-namespace pair, and
magic-wormhole on the same file (see the report in the commit that added this file).
The machine matters: both daemons and this client share its CPUs (see the header line).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_transfer import make_file, ok, sha256_of, start_pair  # noqa: E402

MIB = 1 << 20
TARGET_MIBS = 150.0
TARGET_RSS_MB = 100.0
TARGET_CHAT_P95_MS = 50.0


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def one_transfer(a, b, ev_a, ev_b, source: str, digest: str, size: int) -> dict:
    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    ev_b.wait("file_offer", 10, transfer_id=tid)
    cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
    started = time.monotonic()
    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
    received = ev_b.wait("file_received", 600, transfer_id=tid)[0]
    elapsed = time.monotonic() - started
    done = ev_a.wait("file_transfer_completed", 30, transfer_id=tid)[0]
    assert received["sha256"] == digest, "SHA-256 mismatch"
    os.unlink(received["path"])
    return {"mibs": size / MIB / elapsed, "seconds": elapsed, "cpu_a": a.cpu_seconds() - cpu_a,
            "cpu_b": b.cpu_seconds() - cpu_b, "resent": done["wire_bytes"] / size - 1}


def chat_during_transfer(a, b, ev_b, source: str, size: int) -> list[float]:
    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    ev_b.wait("file_offer", 10, transfer_id=tid)
    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
    latencies = []
    n = 0
    with a.client() as client:
        while not ev_b.all("file_received", transfer_id=tid):
            n += 1
            message_id = f"bench-chat-{time.time_ns()}-{n}"
            sent = time.monotonic()
            ok(client.request("p2p", "send_message", {"peer": "Bob", "message": "ping", "message_id": message_id}))
            if ev_b.wait("p2p_message_received", 10, raise_=False, message_id=message_id):
                latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
    received = ev_b.wait("file_received", 600, transfer_id=tid)[0]
    os.unlink(received["path"])
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    print(f"# {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.size_mib} MiB file, {args.runs} runs")
    work = tempfile.mkdtemp(prefix="chatp2p-bench-transfer-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(work, "bench")
        source = os.path.join(work, "source.bin")
        digest = make_file(source, size, seed=42)
        assert sha256_of(source) == digest
        results = []
        for run in range(args.runs):
            result = one_transfer(a, b, ev_a, ev_b, source, digest, size)
            results.append(result)
            print(f"run {run + 1}: {result['mibs']:.1f} MiB/s ({result['seconds']:.2f} s), CPU A {result['cpu_a']:.2f} s"
                  f" B {result['cpu_b']:.2f} s, resent {result['resent']:.1%}")
        latencies = chat_during_transfer(a, b, ev_b, source, size)
        rss = max(peak_rss_mb(a.proc.pid), peak_rss_mb(b.proc.pid))
        median = statistics.median(r["mibs"] for r in results)
        p50, p95 = percentile(latencies, 50) * 1e3, percentile(latencies, 95) * 1e3
        print(f"loopback: median {median:.1f} MiB/s (target >= {TARGET_MIBS:.0f})")
        print(f"peak RSS: A {peak_rss_mb(a.proc.pid):.1f} MB, B {peak_rss_mb(b.proc.pid):.1f} MB "
              f"(target < {TARGET_RSS_MB:.0f})")
        print(f"chat during a transfer: {len(latencies)} messages, p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(target < {TARGET_CHAT_P95_MS:.0f})")
        met = median >= TARGET_MIBS and rss < TARGET_RSS_MB and p95 < TARGET_CHAT_P95_MS
        print("targets met" if met else "targets NOT met")
        return 0
    finally:
        for events in (ev_a, ev_b):
            if events is not None:
                events.close()
        for daemon in (a, b):
            if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
