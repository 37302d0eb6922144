#!/usr/bin/env python3
"""Messaging latency, throughput and handshake CPU of two real daemons on loopback.

Run by hand: `/tmp/venv/bin/python bench/bench_messaging.py [--quick]` (about a minute).
It starts two `chatp2pd` (tests/daemon.py: temporary data dirs, free loopback ports), makes
them contacts of each other, `p2p connect` + `contacts negotiate_keys`, subscribes to both
event sockets (ZeroMQ SUB on the ipc:// endpoint of `status.events.endpoints`) and measures:

1. Round trip, one message at a time: `p2p send_message` on A (one API connection,
   request-response) -> `p2p_message_received` on B's event socket, and -> `message_delivered`
   on A's event socket. p50/p95/p99 over --samples messages (after a warm-up).
2. Sustained rate: A sends --messages messages as fast as the API allows, pipelined with `id`s
   on --connections API connections (--window requests in flight on each, below the server's
   256-per-connection limit so it never stops reading). Clocked from the first request to the
   moment B has published every `p2p_message_received` and A every `message_delivered`. On a
   slow machine submitting stops after --budget seconds and the run covers what was sent.
   Reports msgs/s, the API's acceptance rate, CPU seconds of each daemon and of this client
   (who is the bottleneck), and checks that nothing was lost, duplicated or reordered
   (B's delivery order against A's sequence numbers from `p2p history`).
3. Handshake CPU per side: --handshakes rounds of `p2p stop` + `p2p start` on A (A closes its
   session and forgets it) + `contacts negotiate_keys` on A (a new full handshake, A initiator,
   B responder), daemon CPU (`Daemon.cpu_seconds()`, /proc, 10 ms ticks) before/after, minus
   an idle baseline for the same wall time, per round. A control run (restart + a cheap
   request, no handshake) shows what the restart and the API add. The protocol alone, in
   process and without I/O: bench/bench_handshake.py.

Targets (issue): p50 round trip < 2 ms, >= 5,000 msgs/s, handshake < 10 ms CPU per side.
The machine matters: both daemons and this client share the CPUs (see the header line).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Callable

import zmq

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import Daemon, ok  # noqa: E402  (tests/daemon.py: real daemon subprocess, API replies)

TARGET_RT_P50_MS = 2.0
TARGET_RATE = 5000.0
TARGET_HANDSHAKE_MS = 10.0

RECEIVED = b"p2p_message_received"
DELIVERED = b"message_delivered"
CONNECTED = b"peer_connected"


# -- small helpers ---------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def body_of(tag: str, size: int) -> str:
    return (tag + " " + "x" * size)[:max(size, len(tag))]


def send_request(peer: str, body: str, message_id: str, request_id: Any = None) -> bytes:
    request: dict[str, Any] = {"command": "p2p", "action": "send_message",
                               "data": {"peer": peer, "message": body, "message_id": message_id}}
    if request_id is not None:
        request["id"] = request_id
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


class RawApi:
    """An API connection driven by hand (pipelining, polling): raw lines out, JSON lines in."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock = socket.create_connection((daemon.host, daemon.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_replies(self) -> list[dict]:
        """Whatever complete replies one recv() brings (call when the socket is readable)."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("the daemon closed the API connection")
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        self.sock.close()


class Events:
    """A SUB socket on one daemon's event endpoint; each message -> (arrival time, name, data)."""

    def __init__(self, context: zmq.Context, endpoint: str, topics: list[bytes]) -> None:
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)      # never drop: 20k+ events arrive in bursts
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)

    def drain(self) -> list[tuple[float, bytes, dict]]:
        out = []
        while True:
            try:
                name, payload = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out.append((time.perf_counter(), name, json.loads(payload)["data"]))

    def close(self) -> None:
        self.sock.close(0)


class Pair:
    """Two connected daemons, A and B, with event subscriptions on both."""

    def __init__(self, workdir: pathlib.Path, extra: list[str]) -> None:
        self.a = Daemon(workdir / "a", *extra)
        self.b = Daemon(workdir / "b", *extra)
        self.context = zmq.Context()
        self.ev_a: Events | None = None
        self.ev_b: Events | None = None
        self.info: dict = {}

    def start(self) -> None:
        self.a.start()
        self.b.start()
        sa = ok(self.a.request("status"), "status A")["data"]
        sb = ok(self.b.request("status"), "status B")["data"]
        self.info.update(backend=sa["crypto"]["backend"], a_pid=self.a.proc.pid, b_pid=self.b.proc.pid)
        ok(self.a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["fingerprint"]}), "add Bob")
        ok(self.b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}),
           "add Alice")
        ipc = [e for e in sa["events"]["endpoints"] if e.startswith("ipc://")][0]
        self.ev_a = Events(self.context, ipc, [DELIVERED, CONNECTED])
        ipc = [e for e in sb["events"]["endpoints"] if e.startswith("ipc://")][0]
        self.ev_b = Events(self.context, ipc, [RECEIVED, CONNECTED])
        ok(self.a.request("p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{sb['p2p']['port']}"}),
           "p2p connect")
        self.connect()
        self.sync()

    def connect(self) -> dict:
        data = ok(self.a.request("contacts", "negotiate_keys", {"peer": "Bob"}), "negotiate_keys")["data"]
        self.info["suite"] = data.get("suite")
        return data

    def sync(self) -> None:
        """Send probes until both SUB sockets see events (ZeroMQ's slow joiner)."""
        assert self.ev_a and self.ev_b
        for attempt in range(50):
            mid = f"sync-{time.time_ns()}-{attempt}"
            ok(self.a.request("p2p", "send_message", {"peer": "Bob", "message": "sync", "message_id": mid}), "sync")
            deadline = time.monotonic() + 0.2
            seen_a = seen_b = False
            while time.monotonic() < deadline and not (seen_a and seen_b):
                seen_b |= any(d.get("message_id") == mid for _, n, d in self.ev_b.drain() if n == RECEIVED)
                seen_a |= any(d.get("message_id") == mid for _, n, d in self.ev_a.drain() if n == DELIVERED)
                time.sleep(0.005)
            if seen_a and seen_b:
                time.sleep(0.05)
                self.ev_a.drain()
                self.ev_b.drain()
                return
        raise RuntimeError("the event sockets never delivered the probe messages")

    def stop(self) -> None:
        for events in (self.ev_a, self.ev_b):
            if events is not None:
                events.close()
        self.context.term()
        for daemon in (self.a, self.b):
            if daemon.proc is not None and daemon.proc.poll() is None:
                try:
                    daemon.stop()
                except AssertionError as exc:
                    print(f"warning: {exc}", file=sys.stderr)


# -- 1. round trip ------------------------------------------------------------------------------------
def bench_round_trip(pair: Pair, samples: int, warmup: int, size: int) -> dict:
    assert pair.ev_a and pair.ev_b
    api = RawApi(pair.a)
    poller = zmq.Poller()
    poller.register(api.fileno(), zmq.POLLIN)   # plain sockets: Poller reports their fd
    poller.register(pair.ev_b.sock, zmq.POLLIN)
    poller.register(pair.ev_a.sock, zmq.POLLIN)
    to_b: list[float] = []
    to_delivered: list[float] = []
    to_reply: list[float] = []
    cpu_a0, cpu_b0, t_start = pair.a.cpu_seconds(), pair.b.cpu_seconds(), time.perf_counter()
    counters0 = p2p_counters(pair.a), p2p_counters(pair.b)
    try:
        for index in range(warmup + samples):
            if index == warmup:
                counters0 = p2p_counters(pair.a), p2p_counters(pair.b)
                cpu_a0, cpu_b0, t_start = pair.a.cpu_seconds(), pair.b.cpu_seconds(), time.perf_counter()
            mid = f"rt-{index:05d}"
            request = send_request("Bob", body_of(mid, size), mid)
            t_reply = t_recv = t_deliv = None
            t0 = time.perf_counter()
            api.sock.sendall(request)
            while t_reply is None or t_recv is None or t_deliv is None:
                ready = dict(poller.poll(5000))
                if not ready:
                    raise RuntimeError(f"round trip {index}: nothing for 5 s (reply={t_reply} b={t_recv} "
                                       f"delivered={t_deliv})")
                now = time.perf_counter()
                if api.fileno() in ready:
                    for reply in api.read_replies():
                        ok(reply, "send_message")
                        t_reply = now
                if pair.ev_b.sock in ready:
                    for at, name, data in pair.ev_b.drain():
                        if name == RECEIVED and data.get("message_id") == mid:
                            t_recv = at
                if pair.ev_a.sock in ready:
                    for at, name, data in pair.ev_a.drain():
                        if name == DELIVERED and data.get("message_id") == mid:
                            t_deliv = at
            if index >= warmup:
                to_b.append((t_recv - t0) * 1000)
                to_delivered.append((t_deliv - t0) * 1000)
                to_reply.append((t_reply - t0) * 1000)
    finally:
        api.close()
    wall = time.perf_counter() - t_start
    cpu_a, cpu_b = pair.a.cpu_seconds() - cpu_a0, pair.b.cpu_seconds() - cpu_b0
    counters_a, counters_b = p2p_counters(pair.a) - counters0[0], p2p_counters(pair.b) - counters0[1]
    return {"to_b": sorted(to_b), "to_delivered": sorted(to_delivered), "to_reply": sorted(to_reply),
            "wall": wall, "cpu_a": cpu_a, "cpu_b": cpu_b, "counters_a": counters_a, "counters_b": counters_b}


# -- 2. sustained rate ---------------------------------------------------------------------------------
def bench_throughput(pair: Pair, count: int, connections: int, window: int, size: int,
                     budget: float, timeout: float) -> dict:
    """Pipeline up to `count` sends; stop submitting after `budget` s (slow machine), then drain."""
    assert pair.ev_a and pair.ev_b
    ids = [f"tp-{i:06d}" for i in range(count)]
    apis = [RawApi(pair.a) for _ in range(connections)]
    queues = [[send_request("Bob", body_of(ids[i], size), ids[i], request_id=i)
               for i in range(c, count, connections)] for c in range(connections)]
    next_index = [0] * connections
    in_flight = [0] * connections
    poller = zmq.Poller()
    for api in apis:
        poller.register(api.fileno(), zmq.POLLIN)   # plain sockets: Poller reports their fd
    poller.register(pair.ev_b.sock, zmq.POLLIN)
    poller.register(pair.ev_a.sock, zmq.POLLIN)
    by_fd = {api.fileno(): c for c, api in enumerate(apis)}
    submitting = True

    def refill(c: int) -> None:
        n = min(window - in_flight[c], len(queues[c]) - next_index[c]) if submitting else 0
        if n > 0:
            apis[c].sock.sendall(b"".join(queues[c][next_index[c]:next_index[c] + n]))
            next_index[c] += n
            in_flight[c] += n

    answered = failed = 0
    first_error = None
    order_b: list[str] = []
    delivered: list[str] = []
    t_api = t_b = t_a = None
    counters0 = p2p_counters(pair.a), p2p_counters(pair.b)
    cpu_a0, cpu_b0, cpu_me0 = pair.a.cpu_seconds(), pair.b.cpu_seconds(), time.process_time()
    t0 = time.perf_counter()
    for c in range(connections):
        refill(c)
    target = count                         # becomes the number submitted if the budget runs out
    timed_out = False
    marks = [(0, t0, cpu_a0, cpu_b0)]      # (answered, time, cpu A, cpu B) at every tenth
    step = max(1, count // 10)
    next_mark = step
    polls = queued = 0
    try:
        while t_api is None or t_b is None or t_a is None:
            ready = dict(poller.poll(200))
            now = time.perf_counter()
            polls += 1
            queued += sum(in_flight)
            if submitting and now - t0 > budget:
                submitting = False
                target = sum(next_index)
            if now - t0 > timeout:
                timed_out = True
                break
            for sock in ready:
                if sock in by_fd:
                    c = by_fd[sock]
                    replies = apis[c].read_replies()
                    for reply in replies:
                        answered += 1
                        if not reply.get("success"):
                            failed += 1
                            first_error = first_error or reply
                    in_flight[c] -= len(replies)
                    refill(c)
                    if answered >= next_mark:
                        marks.append((answered, now, pair.a.cpu_seconds(), pair.b.cpu_seconds()))
                        next_mark += step
            if pair.ev_b.sock in ready:
                for at, name, data in pair.ev_b.drain():
                    if name == RECEIVED and str(data.get("message_id", "")).startswith("tp-"):
                        order_b.append(data["message_id"])
            if pair.ev_a.sock in ready:
                for at, name, data in pair.ev_a.drain():
                    if name == DELIVERED and str(data.get("message_id", "")).startswith("tp-"):
                        delivered.append(data["message_id"])
            if t_api is None and answered >= target:
                t_api = now
            if t_b is None and len(order_b) >= target:
                t_b = now
            if t_a is None and len(delivered) >= target:
                t_a = now
    finally:
        for api in apis:
            api.close()
    t_end = time.perf_counter()
    counters1 = p2p_counters(pair.a), p2p_counters(pair.b)
    sent_ids = [ids[i] for c in range(connections) for i in range(c, count, connections)[:next_index[c]]]
    result = {
        "count": count, "sent": len(sent_ids), "budget_hit": not submitting, "timed_out": timed_out,
        "connections": connections, "window": window,
        "answered": answered, "failed": failed, "first_error": first_error,
        "api_s": (t_api or t_end) - t0, "b_s": (t_b or t_end) - t0, "a_s": (t_a or t_end) - t0,
        "wall": max(t_b or t_end, t_a or t_end) - t0,
        "cpu_a": pair.a.cpu_seconds() - cpu_a0, "cpu_b": pair.b.cpu_seconds() - cpu_b0,
        "cpu_me": time.process_time() - cpu_me0,
        "received": len(order_b), "delivered": len(delivered),
        "marks": marks, "avg_in_flight": queued / max(polls, 1),
        "counters_a": counters1[0] - counters0[0], "counters_b": counters1[1] - counters0[1],
    }
    # Lost / duplicated: compare with what was sent (not meaningful after a hard time-out).
    sent = set(sent_ids)
    result["b_missing"] = len(sent - set(order_b))
    result["b_dups"] = len(order_b) - len(set(order_b))
    result["a_missing"] = len(sent - set(delivered))
    result["a_dups"] = len(delivered) - len(set(delivered))
    result["unexpected"] = len((set(order_b) | set(delivered)) - sent)
    # Reordered: B must deliver in A's sequence order (the protocol's promise).
    a_order = outgoing_seq_order(pair.a, "tp-")
    result["a_stored"] = len(a_order)
    compared = a_order[:len(order_b)] if timed_out else a_order
    result["in_seq_order"] = order_b == compared
    result["seq_mismatches"] = (sum(1 for x, y in zip(order_b, compared) if x != y)
                                + abs(len(order_b) - len(compared)))
    # Informational: did each API connection's messages keep their submission order?
    position = {mid: i for i, mid in enumerate(order_b)}
    inversions = 0
    for c in range(connections):
        seen = [position[ids[i]] for i in range(c, count, connections)[:next_index[c]] if ids[i] in position]
        inversions += sum(1 for x, y in zip(seen, seen[1:]) if y < x)
    result["per_connection_inversions"] = inversions
    return result


def p2p_counters(daemon: Daemon) -> collections.Counter:
    return collections.Counter(ok(daemon.request("status"), "status")["data"]["p2p"]["counters"])


def outgoing_seq_order(daemon: Daemon, prefix: str) -> list[str]:
    """message_ids of A's outgoing messages starting with `prefix`, in sequence order."""
    rows: list[dict] = []
    with daemon.client(timeout=60) as client:
        before = None
        while True:
            data: dict[str, Any] = {"peer": "Bob", "limit": 1000}
            if before is not None:
                data["before"] = before
            page = ok(client.request("p2p", "history", data), "history")["data"]
            if not page:
                break
            rows += page
            before = min(m["id"] for m in page)
            if before <= 1:
                break
    mine = [m for m in rows if m["direction"] == "out" and m["message_id"].startswith(prefix)]
    mine.sort(key=lambda m: m["seq"])
    return [m["message_id"] for m in mine]


# -- 3. handshake CPU ---------------------------------------------------------------------------------
def bench_handshakes(pair: Pair, rounds: int, warmup: int) -> dict:
    assert pair.ev_b
    client = pair.a.client(timeout=60)

    def restart() -> None:
        # `p2p stop` + `p2p start`, not `p2p start` alone: restarting a running network rebinds
        # the same UDP port before gevent has really closed the old socket (EADDRINUSE, see
        # `restart_probe`). After a stop, start binds a new free port (the daemons run with
        # --p2p-port 0), which also matters for B: its listener keeps every responder, finished
        # or not, for handshake_timeout (30 s) and drops a 9th INIT from the same host:port in
        # that time (max_responders_per_known_host = 32 per host), and a 257th from anyone (max_responders).
        # A initiates, so B simply learns A's new address from the handshake.
        ok(client.request("p2p", "stop"), "p2p stop")
        ok(client.request("p2p", "start"), "p2p start")

    def handshake_round() -> None:
        restart()
        data = ok(client.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 10}),
                  "negotiate_keys")["data"]
        if data.get("role") != "initiator":
            raise RuntimeError(f"expected a new handshake with A as initiator, got {data}")

    def control_round() -> None:
        restart()
        ok(client.request("p2p", "peers"), "p2p peers")

    def measured(step: Callable[[], None], n: int) -> tuple[float, float, float]:
        cpu_a0, cpu_b0, t0 = pair.a.cpu_seconds(), pair.b.cpu_seconds(), time.perf_counter()
        for _ in range(n):
            step()
        return pair.a.cpu_seconds() - cpu_a0, pair.b.cpu_seconds() - cpu_b0, time.perf_counter() - t0

    try:
        probe = client.request("p2p", "start")   # a restart of the running network, as documented
        restart_probe = "ok" if probe.get("success") else f"failed: {probe.get('error')}"
        for _ in range(warmup):
            handshake_round()
        time.sleep(0.3)
        pair.ev_b.drain()
        hs_a, hs_b, hs_wall = measured(handshake_round, rounds)
        time.sleep(0.3)
        connected_b = sum(1 for _, name, _ in pair.ev_b.drain() if name == CONNECTED)
        idle_a, idle_b, idle_wall = measured(lambda: time.sleep(hs_wall), 1)
        ctl_a, ctl_b, ctl_wall = measured(control_round, rounds)
    finally:
        client.close()
    pair.connect()   # leave A and B connected for what follows
    rate_a, rate_b = idle_a / idle_wall, idle_b / idle_wall
    return {
        "rounds": rounds, "connected_b": connected_b, "restart_probe": restart_probe,
        "wall": hs_wall, "ctl_wall": ctl_wall,
        "raw_a": hs_a / rounds, "raw_b": hs_b / rounds,
        "idle_a": rate_a * hs_wall / rounds, "idle_b": rate_b * hs_wall / rounds,
        "ctl_a": (ctl_a - rate_a * ctl_wall) / rounds, "ctl_b": (ctl_b - rate_b * ctl_wall) / rounds,
        "idle_pct_a": 100 * rate_a, "idle_pct_b": 100 * rate_b,
    }


# -- report ------------------------------------------------------------------------------------------------
WIDTH = 98


def verdict(good: bool) -> str:
    return "ok" if good else "MISSED"


def row(label: str, result: str, target: str = "", mark: str = "") -> None:
    print(f"   {label:<56}{result:>22}  {target:>8}  {mark:<6}".rstrip())


def report(args: argparse.Namespace, pair: Pair, rt: dict | None, tp: dict | None, hs: dict | None) -> None:
    line = "-" * WIDTH
    print()
    print(f"ChatP2P messaging benchmark: {os.cpu_count()} CPUs ({platform.machine()}), Python "
          f"{platform.python_version()}, crypto backend {pair.info.get('backend')}, suite {pair.info.get('suite')}")
    print(f"A = sender / handshake initiator, B = receiver / responder, messages of {args.size} B. Both daemons and")
    print(f"this client share the CPUs; 1-min load average {pair.info.get('load_start', 0):.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs\n(when other processes compete, "
          f"trust CPU ms per message more than wall times and rates)")
    print(line)
    print(f"   {'measurement':<56}{'result':>22}  {'target':>8}")
    print(line)
    if rt:
        n = len(rt["to_b"])
        print(f"1. Round trip: {n} messages one at a time, 1 API connection (request-response)")
        for key, label in (("to_b", "send -> p2p_message_received on B"),
                           ("to_delivered", "send -> message_delivered on A"),
                           ("to_reply", "send -> API reply on A (info)")):
            v = rt[key]
            text = f"{percentile(v, 50):.2f} / {percentile(v, 95):.2f} / {percentile(v, 99):.2f}"
            target = mark = ""
            if key != "to_reply":
                target = f"p50 < {TARGET_RT_P50_MS:g}"
                mark = verdict(round(percentile(v, 50), 2) < TARGET_RT_P50_MS)
            row(label + ", p50 / p95 / p99 ms", text, target, mark)
        row("max ms, send -> delivered", f"{rt['to_delivered'][-1]:.2f}")
        row("daemon CPU ms per message, A | B", f"{1000 * rt['cpu_a'] / n:.2f} | {1000 * rt['cpu_b'] / n:.2f}")
        row("A retransmissions | B duplicates dropped",
            f"{rt['counters_a']['messages_retransmitted']} | {rt['counters_b']['messages_duplicate']}")
        print(line)
    if tp:
        n = tp["sent"]
        how = f"{n} messages"
        if tp["budget_hit"]:
            how = f"{n} of {tp['count']} messages (submission budget {args.budget:g} s)"
        conns = f"{tp['connections']} API connection" + ("s" if tp["connections"] > 1 else "")
        print(f"2. Sustained: {how}, pipelined with ids on {conns}, {tp['window']} in flight each")
        complete = not tp["timed_out"]
        rate = (n if complete else tp["received"]) / tp["wall"]
        row("msgs/s end to end (all received on B, all delivered on A)", f"{rate:,.0f}",
            f">= {TARGET_RATE:,.0f}", verdict(rate >= TARGET_RATE and complete))
        row("msgs/s accepted by the API (all replies)", f"{tp['answered'] / tp['api_s']:,.0f}")
        row("s until API replied all | B got all | A got all delivered",
            f"{tp['api_s']:.2f} | {tp['b_s']:.2f} | {tp['a_s']:.2f}")
        for who, key in (("daemon A", "cpu_a"), ("daemon B", "cpu_b"), ("this client", "cpu_me")):
            cpu = tp[key]
            row(f"CPU {who}: s (% of one core) ms per message",
                f"{cpu:.2f} ({100 * cpu / tp['wall']:.0f}%) {1000 * cpu / n:.3f}")
        marks = tp["marks"]
        first, last = marks[:2], marks[-2:]
        spans_measured = len(marks) >= 3 and all(b[0] > a[0] and b[1] > a[1] for a, b in (first, last))
        if spans_measured:  # a smoke run can be over before two spans with time between them
            (n0, t0, a0, b0), (n1, t1, a1, b1) = first
            (m0, u0, c0, d0), (m1, u1, c1, d1) = last
            row(f"CPU ms/message first -> last {n1 - n0} sent, A | B",
                f"{1000 * (a1 - a0) / (n1 - n0):.2f}->{1000 * (c1 - c0) / (m1 - m0):.2f} | "
                f"{1000 * (b1 - b0) / (n1 - n0):.2f}->{1000 * (d1 - d0) / (m1 - m0):.2f}")
            if t1 > t0 and u1 > u0:  # marks taken in one poll pass share its clock reading
                row(f"msgs/s accepted, first -> last {n1 - n0} sent",
                    f"{(n1 - n0) / (t1 - t0):,.0f} -> {(m1 - m0) / (u1 - u0):,.0f}")
        busiest = max(("A", tp["cpu_a"]), ("B", tp["cpu_b"]), key=lambda x: x[1])
        ceiling = n / busiest[1] if busiest[1] else float("inf")
        row(f"ceiling if daemon {busiest[0]} had a core to itself, msgs/s", f"{ceiling:,.0f}")
        share = 100 * busiest[1] / tp["wall"]
        print(f"   bottleneck: daemon {busiest[0]}. The client kept {tp['avg_in_flight']:.0f} requests queued in A "
              f"on average (window {tp['connections']} x {tp['window']})\n   and used "
              f"{100 * tp['cpu_me'] / tp['wall']:.0f}% of a core, so A never waited for work"
              + (f"; {busiest[0]} got only {share:.0f}% of a core: CPU contention." if share < 90 else "."))
        if complete:
            row("lost: B missing | A not delivered", f"{tp['b_missing']} | {tp['a_missing']}", "0",
                verdict(tp["b_missing"] == 0 and tp["a_missing"] == 0))
        else:
            row("lost: (hard time-out: received | delivered so far)", f"{tp['received']} | {tp['delivered']}",
                "", "INCOMPLETE")
        row("duplicated: B events | A events", f"{tp['b_dups']} | {tp['a_dups']}", "0",
            verdict(tp["b_dups"] == 0 and tp["a_dups"] == 0 and tp["unexpected"] == 0))
        row("reordered: B delivery order vs A seq, positions differing", f"{tp['seq_mismatches']}", "0",
            verdict(tp["in_seq_order"]))
        row("(info) per-connection submission order inversions", f"{tp['per_connection_inversions']}")
        ca, cb = tp["counters_a"], tp["counters_b"]
        row("datagrams per message: A sent | B sent", f"{ca['sent'] / n:.2f} | {cb['sent'] / n:.2f}")
        row("A retransmissions | B duplicates dropped",
            f"{ca['messages_retransmitted']} | {cb['messages_duplicate']}")
        other = {k: v for c in (ca, cb) for k, v in c.items() if k.startswith("dropped") or k.endswith("errors")}
        if other:
            print(f"   drops/errors: {dict(other)}")
        if tp["timed_out"]:
            print(f"   !! hard time-out after {args.timeout:g} s: counts above are partial")
        if tp["failed"]:
            print(f"   !! {tp['failed']} API errors, first: {tp['first_error']}")
        print(line)
    if hs:
        print(f"3. Handshake CPU: {hs['rounds']} x (p2p stop + p2p start on A, contacts negotiate_keys on A); "
              f"B saw {hs['connected_b']} peer_connected")
        print(f"   (`p2p start` alone on the running network: {hs['restart_probe']})")
        row("ms CPU per handshake", "A initiator | B resp.")
        net_a, net_b = hs["raw_a"] - hs["idle_a"], hs["raw_b"] - hs["idle_b"]
        row("raw: daemon CPU delta / rounds", f"{1000 * hs['raw_a']:.2f} | {1000 * hs['raw_b']:.2f}")
        row("idle baseline, same wall time", f"{1000 * hs['idle_a']:.2f} | {1000 * hs['idle_b']:.2f}")
        row("handshake = raw - idle", f"{1000 * net_a:.2f} | {1000 * net_b:.2f}", f"< {TARGET_HANDSHAKE_MS:g}",
            verdict(round(max(net_a, net_b) * 1000, 2) < TARGET_HANDSHAKE_MS))
        row("  of which p2p stop+start and API requests (control run)",
            f"{1000 * hs['ctl_a']:.2f} | {1000 * hs['ctl_b']:.2f}")
        row("  handshake alone (minus control)", f"{1000 * (net_a - hs['ctl_a']):.2f} | {1000 * (net_b - hs['ctl_b']):.2f}")
        print(f"   wall {1000 * hs['wall'] / hs['rounds']:.1f} ms per round; idle CPU {hs['idle_pct_a']:.1f}% | "
              f"{hs['idle_pct_b']:.1f}% of a core; /proc ticks are 10 ms (+-{10 / hs['rounds']:.2f} ms per round)")
        print("   protocol alone, in process, no I/O: /tmp/venv/bin/python bench/bench_handshake.py")
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="round trips measured (default 1000)")
    parser.add_argument("--messages", type=int, default=20000, help="messages of the sustained run (default 20000)")
    parser.add_argument("--connections", type=int, default=2, help="API connections of the sustained run (1-4)")
    parser.add_argument("--window", type=int, default=128, help="requests in flight per connection (<= 256)")
    parser.add_argument("--handshakes", type=int, default=30,
                        help="measured handshakes (default 30; at most 200: B's listener holds 256 per 30 s)")
    parser.add_argument("--size", type=int, default=100, help="message body bytes (default 100)")
    parser.add_argument("--budget", type=float, default=45.0,
                        help="stop submitting after this many seconds (then drain and verify what was sent)")
    parser.add_argument("--timeout", type=float, default=90.0, help="hard limit of the sustained run")
    parser.add_argument("--only", choices=("rt", "tp", "hs"), action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a quick look")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does the bench still run?")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon logs)")
    parser.add_argument("--pause", action="store_true",
                        help="print the daemons' pids and wait for Enter before each part (to attach py-spy)")
    parser.add_argument("daemon_args", nargs="*", help="extra chatp2pd flags for both daemons (after --)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.messages, args.handshakes = 100, 2000, 5
    if args.smoke:
        args.samples, args.messages, args.handshakes = 20, 200, 2
    if not 1 <= args.handshakes <= 200:
        parser.error("--handshakes must be 1..200 (B's listener accepts 256 handshakes per 30 s)")
    if not 1 <= args.window <= 256:
        parser.error("--window must be 1..256 (the server stops reading beyond 256 per connection)")
    parts = set(args.only or ("rt", "tp", "hs"))

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench_messaging_"))
    pair = Pair(workdir, list(args.daemon_args))
    rt = tp = hs = None

    def pause(what: str) -> None:
        if args.pause:
            input(f"[{what}] A pid {pair.a.proc.pid}, B pid {pair.b.proc.pid}: press Enter ")

    try:
        t0 = time.perf_counter()
        pair.info["load_start"] = os.getloadavg()[0]
        pair.start()
        print(f"daemons up and connected in {time.perf_counter() - t0:.1f} s ({workdir})", flush=True)
        if "hs" in parts:  # first, on an empty database
            pause("handshakes")
            hs = bench_handshakes(pair, args.handshakes, warmup=2)
            print(f"handshakes done ({time.perf_counter() - t0:.1f} s)", flush=True)
            pair.sync()
        if "rt" in parts:
            pause("round trip")
            rt = bench_round_trip(pair, args.samples, warmup=max(20, args.samples // 20), size=args.size)
            print(f"round trips done ({time.perf_counter() - t0:.1f} s)", flush=True)
        if "tp" in parts:
            pause("sustained")
            tp = bench_throughput(pair, args.messages, args.connections, args.window, args.size,
                                  args.budget, args.timeout)
            print(f"sustained run done ({time.perf_counter() - t0:.1f} s)", flush=True)
    except BaseException:
        for name, daemon in (("A", pair.a), ("B", pair.b)):
            print(f"--- daemon {name} log (tail) ---\n{daemon.stderr_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        pair.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, pair, rt, tp, hs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
