#!/usr/bin/env python3
"""File transfer throughput, CPU, memory and chat latency of two real daemons; 1 % loss in a
network-namespace pair; magic-wormhole on the same file.

Run by hand (as root for the namespace and magic-wormhole parts):
`/tmp/venv/bin/python bench/bench_transfer.py [--size-mib 256] [--runs 3]`.

1. Loopback. Two `chatp2pd` (tests/daemon.py: temporary dirs, free loopback ports) become
   contacts and connect; for each run A sends a --size-mib file that B accepts: MiB/s from
   `p2p accept_file` to B's `file_received` (SHA-256 checked against the source), CPU seconds
   of each daemon over the transfer (/proc), peak RSS (VmHWM) of both.
2. Chat during a transfer: while one more file flows, A sends a chat message every 50 ms; the
   time from `p2p send_message` to B's `p2p_message_received` event, p50/p95.
3. 1 % loss (root, iproute2, iptables): the same daemons' code in two network namespaces joined
   by one veth pair (MTU --veth-mtu, 65535 by default so datagrams are as large as on
   loopback: like for like), first clean, then with `iptables -m statistic --mode random
   --probability 0.01 -j DROP` on INPUT in both namespaces (1 % of the datagrams each way, no
   proxy process eating CPU). The time is B's own (accept to verified file: the `seconds` of
   its file_transfer_completed), since the API inside a namespace is reached through
   chatp2pctl run there. Target: >= 60 % of the loopback rate.
4. magic-wormhole (when `wormhole` and its mailbox server and transit relay are installed in
   this Python's environment: `pip install magic-wormhole magic-wormhole-mailbox-server
   magic-wormhole-transit-relay`; never the public mailbox): mailbox server, transit relay,
   sender and receiver all inside a namespace that has only `lo`, so the direct connection
   is over loopback like the daemons' (outside one, wormhole would offer the host's other
   addresses). Timed from the receiver's start to its exit, and from its first byte on disk to
   its exit (without the setup: key exchange, connection); the latter is compared.

Targets (issue 5): >= 150 MiB/s on loopback and faster than magic-wormhole, peak RSS < 100 MB,
chat p95 < 50 ms, 1 % loss >= 60 % of the loopback rate. The machine matters: both daemons and
this client share its CPUs (see the load printed before and after).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import ok  # noqa: E402
from events import Events  # noqa: E402
from test_transfer import close_pair, make_file, sha256_of, start_pair  # noqa: E402

MIB = 1 << 20
TARGET_MIBS = 150.0
TARGET_RSS_MB = 100.0
TARGET_CHAT_P95_MS = 50.0
TARGET_LOSS_RATIO = 0.60
VETH_A, VETH_B = "192.0.2.201", "192.0.2.202"  # inside the bench's own namespaces only


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


def load() -> str:
    """Load average, and how much of the last 10 s runnable tasks waited for a CPU (PSI)."""
    with open("/proc/loadavg") as handle:
        text = " ".join(handle.read().split()[:3])
    try:
        with open("/proc/pressure/cpu") as handle:
            some = handle.readline().split()[1].split("=")[1]
        text += f", CPU pressure {some} %"
    except (OSError, IndexError):
        pass
    return text


# -- 1, 2: loopback -----------------------------------------------------------------------------
def one_transfer(a, b, ev_a, ev_b, source: str, digest: str, size: int) -> dict:
    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    ev_b.wait_data("file_offer", 10, transfer_id=tid)
    cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
    started = time.monotonic()
    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
    received = ev_b.wait_data("file_received", 600, transfer_id=tid)[0]
    elapsed = time.monotonic() - started
    done = ev_a.wait_data("file_transfer_completed", 30, transfer_id=tid)[0]
    assert received["sha256"] == digest, "SHA-256 mismatch"
    os.unlink(received["path"])
    return {"mibs": size / MIB / elapsed, "seconds": elapsed, "cpu_a": a.cpu_seconds() - cpu_a,
            "cpu_b": b.cpu_seconds() - cpu_b, "resent": done["wire_bytes"] / size - 1}


def chat_during_transfer(a, b, ev_b, source: str, size: int) -> list[float]:
    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
    ev_b.wait_data("file_offer", 10, transfer_id=tid)
    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
    latencies = []
    n = 0
    with a.client() as client:
        while not ev_b.all("file_received", transfer_id=tid):
            n += 1
            message_id = f"bench-chat-{time.time_ns()}-{n}"
            sent = time.monotonic()
            ok(client.request("p2p", "send_message", {"peer": "Bob", "message": "ping", "message_id": message_id}))
            if ev_b.wait_data("p2p_message_received", 10, raise_=False, message_id=message_id):
                latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
    received = ev_b.wait_data("file_received", 600, transfer_id=tid)[0]
    os.unlink(received["path"])
    return latencies


def loopback(work: str, source: str, digest: str, size: int, runs: int) -> dict:
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(work, "bench")
        results = []
        for run in range(runs):
            result = one_transfer(a, b, ev_a, ev_b, source, digest, size)
            results.append(result)
            print(f"loopback run {run + 1}: {result['mibs']:.1f} MiB/s ({result['seconds']:.2f} s), "
                  f"CPU A {result['cpu_a']:.2f} s B {result['cpu_b']:.2f} s (a core each would allow "
                  f"{size / MIB / max(result['cpu_a'], result['cpu_b']):.0f} MiB/s), resent {result['resent']:.1%}; "
                  f"load {load()}", flush=True)
        latencies = chat_during_transfer(a, b, ev_b, source, size)
        return {"median": statistics.median(r["mibs"] for r in results), "latencies": latencies,
                "cpu_bound": statistics.median(size / MIB / max(r["cpu_a"], r["cpu_b"]) for r in results),
                "rss_a": peak_rss_mb(a.proc.pid), "rss_b": peak_rss_mb(b.proc.pid)}
    finally:
        close_pair((ev_a, ev_b), (a, b))


# -- 3: a namespace pair, clean and at 1 % loss -------------------------------------------------
def namespaces_reason() -> str | None:
    from netns import netns_available

    usable, why = netns_available(iptables=True)
    return None if usable else why


def netns_runs(work: str, source: str, digest: str, size: int, runs: int, mtu: int) -> dict:
    from netns import Namespace, NsDaemon, _building, _wire

    results: dict[str, list[dict]] = {"clean": [], "1% loss": []}
    with _building() as built:
        ns_a, ns_b = Namespace("bencha"), Namespace("benchb")
        built += [ns_a, ns_b]
        _wire(ns_a, "eth0", ns_b, "eth0")
        for ns, address in ((ns_a, VETH_A), (ns_b, VETH_B)):
            ns.ip("link", "set", "eth0", "mtu", str(mtu))
            ns.add_address("eth0", f"{address}/24")
        args = ("--keepalive-interval", "1", "--p2p-host", "0.0.0.0")
        a = NsDaemon(ns_a, os.path.join(work, "ns-a"), *args, "--downloads-dir", os.path.join(work, "ns-a", "dl"))
        b = NsDaemon(ns_b, os.path.join(work, "ns-b"), *args, "--downloads-dir", os.path.join(work, "ns-b", "dl"))
        ev_a = ev_b = None
        try:
            a.start()
            b.start()
            sa, sb = a.request("status")["data"], b.request("status")["data"]
            ok(a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]}))
            ok(b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}))
            ev_a, ev_b = Events(a), Events(b)
            ok(a.request("p2p", "connect", {"peer": "Bob", "address": f"{VETH_B}:{sb['p2p']['port']}"}))
            ok(a.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 30}))
            for label in ("clean", "1% loss"):
                for ns in (ns_a, ns_b):
                    ns.iptables("-F", "INPUT")
                    if label != "clean":
                        ns.iptables("-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "random",
                                    "--probability", "0.01", "-j", "DROP")
                for run in range(runs):
                    tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
                    ev_b.wait_data("file_offer", 30, transfer_id=tid)
                    cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
                    ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
                    received = ev_b.wait_data("file_received", 600, transfer_id=tid)[0]
                    seconds = ev_b.wait_data("file_transfer_completed", 30, transfer_id=tid)[0]["seconds"]
                    sent = ev_a.wait_data("file_transfer_completed", 30, transfer_id=tid)[0]
                    assert received["sha256"] == digest, "SHA-256 mismatch"
                    os.unlink(received["path"])
                    result = {"mibs": size / MIB / seconds, "seconds": seconds, "cpu_a": a.cpu_seconds() - cpu_a,
                              "cpu_b": b.cpu_seconds() - cpu_b, "resent": sent["wire_bytes"] / size - 1}
                    results[label].append(result)
                    dropped = sum(_dropped(ns) for ns in (ns_a, ns_b))
                    print(f"netns {label} run {run + 1}: {result['mibs']:.1f} MiB/s ({seconds:.2f} s), "
                          f"CPU A {result['cpu_a']:.2f} s B {result['cpu_b']:.2f} s, resent {result['resent']:.1%}"
                          f"{f', {dropped} datagrams dropped so far' if label != 'clean' else ''}", flush=True)
        finally:
            close_pair((ev_a, ev_b), (a, b))
    return {label: statistics.median(r["mibs"] for r in rs) for label, rs in results.items() if rs}


def _dropped(ns) -> int:
    out = ns.iptables("-L", "INPUT", "-v", "-n", "-x")
    return sum(int(line.split()[0]) for line in out.splitlines() if "DROP" in line and line.split()[0].isdigit())


# -- 4: magic-wormhole --------------------------------------------------------------------------
def wormhole_reason() -> str | None:
    bindir = os.path.dirname(sys.executable)
    missing = [tool for tool in ("wormhole", "twist") if not os.path.exists(os.path.join(bindir, tool))]
    for module in ("wormhole_mailbox_server", "wormhole_transit_relay"):
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            missing.append(module)
    if missing:
        return (f"magic-wormhole is not installed in {sys.prefix} (missing {', '.join(missing)}; pip install "
                "magic-wormhole magic-wormhole-mailbox-server magic-wormhole-transit-relay)")
    return namespaces_reason()


def wormhole_runs(work: str, source: str, digest: str, size: int, runs: int) -> dict:
    from netns import Namespace, _building

    bindir = os.path.dirname(sys.executable)
    wormhole, twist = os.path.join(bindir, "wormhole"), os.path.join(bindir, "twist")
    client = [wormhole, "--relay-url", "ws://127.0.0.1:4000/v1", "--transit-helper", "tcp:127.0.0.1:4001"]
    out_dir = os.path.join(work, "wormhole-out")
    os.makedirs(out_dir, exist_ok=True)
    logs = open(os.path.join(work, "wormhole.log"), "ab")
    with _building() as built:
        ns = Namespace("wormhole")  # only lo: every address it offers is 127.0.0.1
        built.append(ns)
        ns.popen([twist, "wormhole-mailbox", "--port", "tcp:4000:interface=127.0.0.1",
                  "--channel-db", os.path.join(work, "mailbox.sqlite")], stdout=logs, stderr=logs, cwd=work)
        ns.popen([twist, "transitrelay", "--port", "tcp:4001:interface=127.0.0.1"], stdout=logs, stderr=logs, cwd=work)
        ns.run([sys.executable, "-c", "import socket, time\nfor port in (4000, 4001):\n"
                " for _ in range(200):\n  try: socket.create_connection(('127.0.0.1', port), 1).close(); break\n"
                "  except OSError: time.sleep(0.05)\n else: raise SystemExit(f'port {port} never opened')"],
               timeout=30)

        def transfer(code: str) -> tuple[float, float, float]:
            """(seconds from the receiver's start, seconds from its first byte on disk, CPU)."""
            for name in os.listdir(out_dir):
                os.unlink(os.path.join(out_dir, name))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            sender = ns.popen([*client, "send", "--hide-progress", "--code", code, source],
                              stdout=logs, stderr=logs, cwd=work)
            started = time.monotonic()
            receiver = ns.popen([*client, "receive", "--accept-file", "--hide-progress", "-o",
                                 os.path.join(out_dir, "received.bin"), code], stdout=logs, stderr=logs, cwd=out_dir)
            first_byte = None
            while receiver.poll() is None:  # when does data start landing (after the setup)?
                if first_byte is None and any(entry.stat().st_size for entry in os.scandir(out_dir)):
                    first_byte = time.monotonic()
                time.sleep(0.002)
            ended = time.monotonic()
            assert receiver.returncode == 0, f"wormhole receive failed: see {logs.name}"
            sender.wait(60)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            assert sha256_of(os.path.join(out_dir, "received.bin")) == digest, "magic-wormhole: SHA-256 mismatch"
            return ended - started, ended - (first_byte or started), cpu

        results = []
        for run in range(runs):
            elapsed, data_time, cpu = transfer(f"{run + 3}-bench-run")
            results.append({"raw": size / MIB / elapsed, "net": size / MIB / data_time, "setup": elapsed - data_time})
            print(f"magic-wormhole run {run + 1}: {size / MIB / elapsed:.1f} MiB/s ({elapsed:.2f} s), "
                  f"{size / MIB / data_time:.1f} MiB/s from its first byte on disk ({data_time:.2f} s), "
                  f"CPU of both clients {cpu:.2f} s", flush=True)
    logs.close()
    return {"raw": statistics.median(r["raw"] for r in results),
            "net": statistics.median(r["net"] for r in results),
            "setup": statistics.median(r["setup"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--veth-mtu", type=int, default=65535, help="MTU of the namespace pair's veth")
    parser.add_argument("--skip-netns", action="store_true", help="no namespace pair (clean / 1 %% loss) runs")
    parser.add_argument("--skip-wormhole", action="store_true", help="no magic-wormhole runs")
    parser.add_argument("--only-loopback", action="store_true", help="loopback and chat only")
    args = parser.parse_args()
    if args.only_loopback:
        args.skip_netns = args.skip_wormhole = True
    size = args.size_mib * MIB
    print(f"# {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.size_mib} MiB file, {args.runs} runs; load average {load()}", flush=True)
    work = tempfile.mkdtemp(prefix="chatp2p-bench-transfer-")
    try:
        source = os.path.join(work, "source.bin")
        digest = make_file(source, size, seed=42)
        assert sha256_of(source) == digest

        lo = loopback(work, source, digest, size, args.runs)
        loss = worm = None
        skipped = []
        if not args.skip_netns:
            why = namespaces_reason()
            if why:
                skipped.append(f"namespace pair skipped: {why}")
            else:
                loss = netns_runs(work, source, digest, size, args.runs, args.veth_mtu)
        if not args.skip_wormhole:
            why = wormhole_reason()
            if why:
                skipped.append(f"magic-wormhole skipped: {why}")
            else:
                worm = wormhole_runs(work, source, digest, size, args.runs)

        print(f"# load average after: {load()}")
        p50, p95 = percentile(lo["latencies"], 50) * 1e3, percentile(lo["latencies"], 95) * 1e3
        rss = max(lo["rss_a"], lo["rss_b"])
        print(f"loopback: median {lo['median']:.1f} MiB/s (target >= {TARGET_MIBS:.0f}); CPU per side would "
              f"allow {lo['cpu_bound']:.0f} MiB/s with a free core each")
        print(f"peak RSS: A {lo['rss_a']:.1f} MB, B {lo['rss_b']:.1f} MB (target < {TARGET_RSS_MB:.0f})")
        print(f"chat during a transfer: {len(lo['latencies'])} messages, p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(target < {TARGET_CHAT_P95_MS:.0f})")
        met = lo["median"] >= TARGET_MIBS and rss < TARGET_RSS_MB and p95 < TARGET_CHAT_P95_MS
        if loss is not None:
            clean, lossy = loss.get("clean", 0.0), loss.get("1% loss", 0.0)
            ratio = lossy / lo["median"]
            print(f"namespace pair (veth MTU {args.veth_mtu}): clean {clean:.1f} MiB/s, 1 % loss {lossy:.1f} MiB/s "
                  f"= {ratio:.0%} of loopback, {lossy / clean if clean else 0:.0%} of the clean pair "
                  f"(target >= {TARGET_LOSS_RATIO:.0%} of loopback)")
            met = met and ratio >= TARGET_LOSS_RATIO
        if worm is not None:
            print(f"magic-wormhole 0.24 on loopback: median {worm['raw']:.1f} MiB/s, {worm['net']:.1f} MiB/s from its first "
                  f"byte on disk (after {worm['setup']:.2f} s of setup); chatp2p is {lo['median'] / worm['net']:.2f}x that")
            met = met and lo["median"] > worm["net"]
        for line in skipped:
            print(line)
        print("targets met" if met and not skipped else
              "targets met (for the parts measured)" if met else "targets NOT met")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
